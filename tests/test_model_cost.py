"""Cost model calibration against the PrfaaS paper (Tables 3, 5, 6) and its physical properties."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.model import InstanceCost, load_hardware, load_model
from harness.model.calibration import calibration_frame

MIB = 1024**2


@pytest.fixture(scope="module")
def hybrid_h200() -> InstanceCost:
    return InstanceCost(load_model("kimi-1t-hybrid"), load_hardware("H200"))


@pytest.fixture(scope="module")
def hybrid_h20() -> InstanceCost:
    return InstanceCost(load_model("kimi-1t-hybrid"), load_hardware("H20"))


# Table 5: input tokens, T_prefill on 8xH200 (s), S_kv (MiB)
TABLE5 = [(1024, 0.44, 190.8), (8192, 0.72, 308.9), (32768, 1.84, 701.3), (131072, 7.40, 2316.3)]


@pytest.mark.parametrize(("tokens", "t_prefill", "s_kv_mib"), TABLE5)
def test_table5_prefill_time_and_kv_size(hybrid_h200, tokens, t_prefill, s_kv_mib):
    assert hybrid_h200.prefill_time_s(tokens) == pytest.approx(t_prefill, rel=0.05)
    assert hybrid_h200.kv_bytes(tokens) / MIB == pytest.approx(s_kv_mib, rel=0.05)


@pytest.mark.parametrize(("tokens", "t_prefill", "s_kv_mib"), TABLE5)
def test_table5_phi_kv(hybrid_h200, tokens, t_prefill, s_kv_mib):
    # Table 5's Φ_kv column is S_kv / T_prefill (MiB -> Gbit); both within 5% gives Φ within ~10%.
    assert hybrid_h200.phi_kv_gbps(tokens) == pytest.approx(s_kv_mib * MIB * 8 / t_prefill / 1e9, rel=0.10)


@pytest.mark.parametrize(("tokens", "seconds"), [(10_224, 3 / 1.64), (27_486, 9 / 2.11)])
def test_h20_points_implied_by_table6(hybrid_h20, tokens, seconds):
    """Θ_pd-p = 3 / T(l_short = 10.2K) = 1.64 and Θ_homog = 9 / T(E[L] = 27.5K) = 2.11 req/s."""
    assert hybrid_h20.prefill_time_s(tokens) == pytest.approx(seconds, rel=0.05)


@pytest.mark.parametrize(("tokens", "gbps"), [(8192, 32.87), (32768, 59.93)])
def test_minimax_phi_kv_table3(tokens, gbps):
    cost = InstanceCost(load_model("minimax-m2.5"), load_hardware("H200"))
    assert cost.phi_kv_gbps(tokens) == pytest.approx(gbps, rel=0.15)


def test_phi_kv_is_kv_bytes_over_prefill_time(hybrid_h200):
    n = 20_000
    assert hybrid_h200.phi_kv_gbps(n) == pytest.approx(
        hybrid_h200.kv_bytes(n) * 8e-9 / hybrid_h200.prefill_time_s(n)
    )


def test_dense_gqa_generates_far_more_kv_than_hybrid(hybrid_h200):
    minimax = InstanceCost(load_model("minimax-m2.5"), load_hardware("H200"))
    assert minimax.phi_kv_gbps(32768) > 10 * hybrid_h200.phi_kv_gbps(32768)


def test_case_study_decode_batch_is_20_on_h20(hybrid_h20):
    """BS_max = 20 gives Θ_pd-d = 20 / (0.025 s * 1024) = 0.78125 req/s per instance (Table 6)."""
    context = 27_486 + 1024 // 2  # mean input plus half the output, the average decode context
    assert hybrid_h20.max_decode_batch(0.025, context) == 20
    assert hybrid_h20.decode_step_s(20, 20 * context) <= 0.025 < hybrid_h20.decode_step_s(21, 21 * context)


def test_cached_prefix_is_cheaper_than_recomputing(hybrid_h200):
    full = hybrid_h200.prefill_time_s(40_000)
    with_cache = hybrid_h200.prefill_time_s(20_000, cached_tokens=20_000)
    fresh_half = hybrid_h200.prefill_time_s(20_000)
    assert fresh_half < with_cache < full
    assert hybrid_h200.prefill_time_s(0, cached_tokens=1000) == 0.0


def test_more_gpus_prefill_faster_and_hold_more_kv():
    m, hw = load_model("kimi-1t-hybrid"), load_hardware("H200")
    four, eight = InstanceCost(m, hw, gpus=4), InstanceCost(m, hw, gpus=8)
    overhead = hw.calibration.prefill_overhead_s
    # Compute time (beyond the fixed overhead) halves exactly when the GPU count doubles.
    assert four.prefill_time_s(32768) - overhead == pytest.approx(
        2 * (eight.prefill_time_s(32768) - overhead)
    )
    assert eight.kv_capacity_bytes() > four.kv_capacity_bytes()


def test_decode_step_grows_with_batch_and_context(hybrid_h20):
    assert hybrid_h20.decode_step_s(10, 100_000) < hybrid_h20.decode_step_s(11, 100_000)
    assert hybrid_h20.decode_step_s(10, 100_000) < hybrid_h20.decode_step_s(10, 200_000)


def test_a_carried_decode_step_is_the_step_less_its_overhead_and_weight_reads(hybrid_h20):
    """Chunked prefill carries the running sequences' decode in its own step: what that adds is the
    whole decode step less the step's fixed overhead and one read of the weights (the prefill's GEMMs
    pay both), and nothing when no sequence runs."""
    c = hybrid_h20
    cal = c.hardware.calibration
    weights = c.model.weight_bytes_read(20) / (c.gpus * c.hardware.hbm_tbps * 1e12) / cal.hbm_efficiency
    full = c.decode_step_s(20, 20 * 40_000)
    assert c.carried_decode_s(20, 20 * 40_000) == pytest.approx(
        full - cal.decode_overhead_s - weights, rel=1e-12
    )
    assert 0 < c.carried_decode_s(20, 20 * 40_000) < full
    assert c.carried_decode_s(0, 0) == 0.0
    assert c.carried_decode_s(20, 20 * 80_000) > c.carried_decode_s(20, 20 * 40_000)


def test_decode_batch_limited_by_hbm_when_weights_crowd_it():
    """DeepSeek-V3 in FP8 (671 GB) leaves ~20 GB on 8xH20: the KV budget, not time, caps the batch."""
    cost = InstanceCost(load_model("deepseek-v3"), load_hardware("H20"))
    per_seq = cost.kv_bytes(100_000)
    batch = cost.max_decode_batch(10.0, 100_000)  # a TPOT so loose only memory binds
    assert batch == cost.kv_capacity_bytes() // per_seq
    assert batch * per_seq <= cost.kv_capacity_bytes() < (batch + 1) * per_seq


def test_model_too_big_for_instance_has_no_kv_room():
    cost = InstanceCost(load_model("kimi-1t-hybrid"), load_hardware("H100"), gpus=4)  # 520 GB > 288 GB usable
    assert cost.kv_capacity_bytes() == 0
    assert cost.max_decode_batch(1.0, 1000) == 0


def test_calibration_table_meets_the_issue_tolerances():
    """The table ``plan --calibration`` prints: Tables 5/6 within 5%, Table 3 MiniMax 8K/32K within 15%."""
    frame = calibration_frame()
    table56 = frame[frame["quantity"].str.contains("Table 5|Table 6")]
    assert len(table56) == 4 * 2 + 4 + 1
    assert (table56["error"].abs() <= 0.05).all()
    minimax = frame[(frame["model"] == "minimax-m2.5") & frame["tokens"].isin([8192, 32768])]
    assert len(minimax) == 2 and (minimax["error"].abs() <= 0.15).all()
    assert np.allclose(frame["ours"], frame["paper"] * (1 + frame["error"]))


def test_calibration_command_prints_the_table():
    result = CliRunner().invoke(main, ["plan", "--calibration", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    assert {r["model"] for r in rows} >= {"kimi-1t-hybrid", "minimax-m2.5"}
