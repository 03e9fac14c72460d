"""Bootstrap intervals, ratios vs the baseline, and cost normalisation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from synthetic_runs import SyntheticTopology, synthetic_records

from harness.analysis.baseline import compare_to_baseline
from harness.analysis.capacity import measured_lambda_max, offered_rate, split_label
from harness.analysis.cost import Fleet, cost_per_hour, gpu_price
from harness.analysis.stats import bootstrap, bootstrap_ratio, mean_stat, quantile_stat, rate_windows
from harness.analysis.summary import Slo


def _frame(name: str, topo: SyntheticTopology, n: int = 100, seed: int = 0) -> pd.DataFrame:
    return pd.DataFrame([r.to_dict() for r in synthetic_records("r", name, topo, n, seed=seed)])


def test_rate_windows_mean_is_overall_rate():
    t = np.random.default_rng(1).uniform(0, 50, 400)
    r = rate_windows(t, 0.0, 50.0, 20)
    assert r.mean() == pytest.approx(400 / 50)
    assert r.sum() * 2.5 == 400  # every event lands in one 2.5 s window


def test_bootstrap_is_seeded_and_covers_the_mean():
    x = np.random.default_rng(7).normal(10.0, 2.0, 2000)
    a = bootstrap(x, mean_stat, seed=3)
    assert a == bootstrap(x, mean_stat, seed=3)
    assert a.low < 10.0 < a.high
    # Standard error 2/sqrt(2000) = 0.045: a 95% interval is about ±0.088 wide.
    assert a.high - a.low == pytest.approx(2 * 1.96 * 2 / np.sqrt(2000), rel=0.2)


def test_ratio_of_quantiles():
    rng = np.random.default_rng(0)
    a, b = rng.exponential(2.0, 3000), rng.exponential(1.0, 3000)
    est = bootstrap_ratio(a, b, quantile_stat(0.9), seed=1)
    assert est.value == pytest.approx(np.quantile(a, 0.9) / np.quantile(b, 0.9))
    assert est.low < 2.0 < est.high  # both are exponential: p90 scales with the mean


def test_throughput_ratio_against_hand_computed_durations():
    # No jitter: duration = (n − 1)/rate + queue + prefill + transfer + tpot + (k − 1)·tpot.
    base, fast = SyntheticTopology(rate_rps=2.0, jitter=0), SyntheticTopology(rate_rps=3.0, jitter=0)
    tail = 0.5 + 1.5 + 0.2 + 0.025 + 63 * 0.025
    expected = (100 / (99 / 3.0 + tail)) / (100 / (99 / 2.0 + tail))
    rows = compare_to_baseline(
        {"homogeneous": _frame("homogeneous", base), "prfaas": _frame("prfaas", fast)},
        "homogeneous", Slo(), {"homogeneous": 100.0, "prfaas": 150.0}, n_boot=300,
    )  # fmt: skip
    thr = rows["prfaas"]["throughput_rps"]
    assert thr["value"] == pytest.approx(expected)
    assert thr["low"] <= thr["value"] <= thr["high"]
    assert rows["homogeneous"]["throughput_rps"]["value"] == pytest.approx(1.0)
    # 1.5× the price: per dollar the gain shrinks by 1/1.5.
    assert rows["prfaas"]["throughput_per_cost"]["value"] == pytest.approx(expected / 1.5)
    assert rows["prfaas"]["ttft_p50_s"]["value"] == pytest.approx(1.0)  # same per-request timings


def test_fleet_cost_by_hand():
    f = Fleet(local_instances=8, remote_instances=4, local_gpu="H20", remote_gpu="H200")
    assert f.cost_per_hour({"H20": 1.8, "H200": 3.5}) == pytest.approx(8 * 8 * 1.8 + 4 * 8 * 3.5)
    assert f.cost_per_hour({"H20": 1.8}) is None  # unknown price: no number rather than a wrong one


def test_cost_from_meta_and_plan():
    h20 = gpu_price("H20")
    assert h20 is not None and h20 > 0
    meta = {"hardware": {"local": "H20", "remote": "H200", "gpus_per_instance": 8},
            "topologies": {"homogeneous": {"kind": "homogeneous", "local_instances": 12}}}  # fmt: skip
    assert cost_per_hour("homogeneous", meta) == pytest.approx(12 * 8 * h20)
    plan = {"topologies": {"prfaas": {"n_prfaas": 4, "n_p": 3, "n_d": 5}}}
    h200 = gpu_price("H200")
    assert cost_per_hour("prfaas", meta, plan) == pytest.approx(8 * 8 * h20 + 4 * 8 * h200)
    assert cost_per_hour("prfaas", {}, plan) is None  # no hardware named: unknown
    assert gpu_price("A100") is None  # no preset: no price rather than an error


def test_cost_falls_back_to_the_planners_price():
    plan = {"topologies": {"prfaas": {"cost_per_hour": 230.4}}}
    assert cost_per_hour("prfaas", {}, plan) == 230.4


def test_rank_bootstrap_of_a_quantile_matches_redrawing(monkeypatch):
    # Large samples take the rank shortcut; its interval must match the plain bootstrap's.
    import harness.analysis.stats as stats

    x = np.random.default_rng(5).lognormal(0.0, 1.0, 6000)
    fast = bootstrap(x, quantile_stat(0.9), n_boot=2000, seed=1)
    monkeypatch.setattr(stats, "RANK_BOOTSTRAP_MIN", 10**9)
    slow = bootstrap(x, quantile_stat(0.9), n_boot=2000, seed=1)
    assert fast.value == slow.value
    width = slow.high - slow.low
    assert fast.low == pytest.approx(slow.low, abs=0.1 * width)
    assert fast.high == pytest.approx(slow.high, abs=0.1 * width)


def test_rate_labels_and_offered_rate():
    assert split_label("prfaas@2.5rps") == ("prfaas", 2.5)
    assert split_label("a@b@1e+01rps") == ("a@b", 10.0)
    assert split_label("prfaas") == ("prfaas", None)
    assert offered_rate({"config": {"load": {"rate_rps": 4.0}}}, "prfaas") == 4.0  # replay's meta
    assert offered_rate({"rates_rps": [2.0]}, "prfaas") == 2.0  # simulate at one rate
    assert offered_rate({"rates_rps": [1.0, 2.0]}, "prfaas@2rps") == 2.0
    assert offered_rate({"config": {"load": {"rate_rps": None}}}, "x") is None  # trace timestamps


def test_measured_lambda_max_per_source_and_topology():
    points = [("simulate", "p", r, a) for r, a in ((1.0, 1.0), (2.0, 0.995), (3.0, 0.9))]
    points += [("replay", "p", 1.0, 0.5), ("replay", "p", 2.0, 0.4), ("replay", "h", 1.0, 1.0)]
    out = measured_lambda_max(points, 0.99)
    assert out["simulate"]["p"]["lambda_max_rps"] == 2.0
    assert out["replay"]["p"]["lambda_max_rps"] is None  # misses even at the lowest rate
    assert "h" not in out["replay"]  # one rate is not a sweep
