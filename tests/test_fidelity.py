"""The fidelity matrix in CI (docs/fidelity.md): simulate and replay agree on three workloads.

`benchmarks/fidelity.py` on the slices in tests/data, small: one bench per workload (the paper's
log-normal, the Mooncake conversation slice, the Azure code slice), 40 paired requests per topology,
replayed over HTTP against the emulated clusters on a shaped link (root). The bounds, and why each is
what this run can resolve:

* throughput within 5%: both engines get the same arrivals, so throughput differs only by when the
  last request ends, a few wall milliseconds × s against a run of tens of model seconds;
* TTFT p50 and p90 within 10% + s × (10 ms + the client's send-lag p99): the emulator pays fixed
  wall-clock costs per request (HTTP, JSON, hashing the prompt in each process it crosses; ~10 ms on
  two shared cores, docs/serve.md) that a speed-up of s turns into s times as many model seconds, and a
  late send counts in TTFT (latency is measured from the scheduled time); the 10% covers queues that
  carry one request's delay into the next ones' waits;
* TPOT within 2%, request by request (the median of each request's replay/simulate ratio): decode
  steps are the cost model's in both, scheduled from planned step ends. Not the p50 of the two
  samples, which moves when requests swap ranks: on the homogeneous Mooncake slice it read +1.1% to
  +5.0% over four runs on 2026-12-03 (two failed its old 5% bound) while the paired ratio stayed within
  0.2% (docs/fidelity.md);
* cached share within 5 points (issue 11's bound, in prompt tokens) and offloaded share within 5 points
  (2 of 40 requests): both move only where a shared prefix's prefill ends within the emulator's timing
  error of a later arrival.

Not asserted here: plan against simulate's Λ_max. The slices hold 300 requests, which arrive within
~100 s at the trace's rate, too few for a Λ_max search to reach steady state; docs/fidelity.md gives the
whole-trace figures. A replay the harness's own verdict calls invalid (a machine too busy to run it:
send lag, event-loop lag, CPU taken by others) must give its reasons instead of agreeing; a valid or
unmeasured one must agree, and a send-lag p99 above 250 ms still fails saying so.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import net_prefix as P

REPO = Path(__file__).resolve().parent.parent
REQUESTS = 40
MAX_SEND_LAG_S = 0.25
FIXED_WALL_S = 0.010


def _fidelity_module():
    spec = importlib.util.spec_from_file_location("fidelity", REPO / "benchmarks" / "fidelity.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fidelity = _fidelity_module()


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """workload -> (rows, speed-up), one bench per workload, run on first use."""
    tmp = tmp_path_factory.mktemp("fidelity")
    runs: dict[str, tuple[list[dict], float]] = {}

    def get(name: str) -> tuple[list[dict], float]:
        if name not in runs:
            run_dir = fidelity.run_workload(
                name, tmp, prefix=P("fdt"), use_slice=True, replay_requests=REQUESTS, capacity_requests=300
            )
            meta = json.loads((run_dir / "replay" / "meta.json").read_text())
            assert meta["complete"] and meta["shaping_backend"] != "loopback"
            runs[name] = fidelity.rows(name, run_dir), float(meta["time_scale"])
        return runs[name]

    return get


@pytest.mark.root
@pytest.mark.parametrize("workload", list(fidelity.WORKLOADS))
def test_simulate_and_replay_agree(root, matrix, workload):
    rows, s = matrix(workload)
    assert {r["topology"] for r in rows} == {"prfaas", "homogeneous", "naive"}
    for r in rows:
        where = f"{workload} / {r['topology']}"
        assert r["requests"] == REQUESTS
        verdict = r["validity"]
        if verdict is not None and verdict.startswith("invalid"):
            # The harness says this replay cannot be trusted (a machine too busy for it): issue 12's
            # contract is that it says so with its reasons, not that it agrees.
            assert verdict.startswith("invalid: ") and len(verdict) > len("invalid: "), where
            continue
        lag = r["send_lag_p99_s"]
        assert lag <= MAX_SEND_LAG_S, (
            f"{where}: send lag p99 {lag * 1e3:.0f} ms, the client missed its schedule"
        )
        resolution = s * (FIXED_WALL_S + lag)
        sim, rep = r["throughput_rps"]
        assert rep == pytest.approx(sim, rel=0.05), f"{where}: throughput"
        for key in ("ttft_p50_s", "ttft_p90_s"):
            sim, rep = r[key]
            assert abs(rep - sim) <= 0.10 * sim + resolution, f"{where}: {key} {sim:.3f} → {rep:.3f}"
        ratio = r["tpot_paired_ratio_p50"]
        assert ratio == pytest.approx(1.0, abs=0.02), (
            f"{where}: TPOT, request by request: median ratio {ratio:.3f}"
        )
        for key in ("cache_hit_rate", "offload_share"):
            sim, rep = r[key]
            assert abs(rep - sim) <= 0.05, f"{where}: {key} {sim:.3f} → {rep:.3f}"


@pytest.mark.root
def test_the_trace_workloads_are_replayed_with_their_prefix_reuse(root, matrix):
    # The Mooncake slice shares its first block among nearly all rows; Azure's trace has no block ids.
    # Both engines must see that (a synthetic stand-in would show no reuse in either).
    mooncake, _ = matrix("Mooncake conversation")
    azure, _ = matrix("Azure code")
    for r in mooncake:
        assert min(r["cache_hit_rate"]) > 0.02, r["topology"]
    for r in azure:
        assert max(r["cache_hit_rate"]) == 0, r["topology"]


def test_the_slice_scenarios_are_the_workloads_own_on_the_slices(tmp_path):
    # Runs anywhere: what the matrix benches is each workload's scenario, only its trace and sizes changed.
    from harness.scenario import load_scenario

    for name, (src, slice_path) in fidelity.WORKLOADS.items():
        path = fidelity.scenario_for(name, tmp_path, use_slice=True, replay_requests=7, capacity_requests=9)
        copy, original = load_scenario(path).config, load_scenario(src).config
        assert (copy.bench.replay_requests, copy.bench.capacity_requests, copy.bench.quick) == (7, 9, None)
        assert copy.bench.speedup == original.bench.speedup
        if slice_path is None:
            assert copy.workload == original.workload, name
        else:
            assert Path(copy.workload.trace) == slice_path, name
        for table in ("model", "hardware", "slo", "link", "topologies", "emulation", "simulate", "network"):
            assert getattr(copy, table) == getattr(original, table), (name, table)
