"""The Λ_max search end to end on a deployment whose capacity is known by hand, and its record in the
results (``--json``, meta.json, probes.csv)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from harness.analysis.figures import attainment_vs_rate
from harness.analysis.runs import load_bundle
from harness.analysis.summary import Slo
from harness.cli import main
from harness.scenario import load_scenario
from harness.serving.config import prepare
from harness.serving.rate_search import find_max_rate
from harness.serving.run import SimulateRequest, simulate
from harness.serving.runner import run_topology
from harness.serving.stability import THROUGHPUT_TOL
from harness.serving.workload import PROBE_SPAN_TTFT_BOUNDS, build_workload, cycle_rows, exact_rate, retime
from harness.traces.frame import Trace, offsets_from_lists

# Two 8xH20 prefill instances, every prompt 8,000 tokens, two output tokens (decode is never the
# bottleneck): capacity is exactly 2 / T_prefill(8,000).
TINY = """
name = "tiny"
[model]
preset = "kimi-1t-hybrid"
[hardware]
local = "H20"
gpus_per_instance = 8
[workload]
kind = "fixed"
tokens = 8000
output_tokens = 2
[slo]
tpot_ms = 25
ttft_s = 30
attainment = 0.99
[link]
bandwidth_gbps = 100
[topologies.homogeneous]
kind = "homogeneous"
local_instances = 3
n_p = 2
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def setup(tiny):
    return prepare(load_scenario(tiny))


def test_lambda_max_is_below_capacity_and_does_not_depend_on_the_probe_size(setup, tmp_path):
    capacity = 2 / setup.deployment.local_cost.prefill_time_s(8000)
    found = {
        n: simulate(setup, SimulateRequest(find_max_rate=True, requests=n, out_dir=tmp_path))["topologies"][
            "homogeneous"
        ]
        for n in (200, 1600)
    }
    for entry in found.values():
        lam, at = entry["lambda_max"], entry["stability"]
        # Above capacity / (1 - tolerance) the completions cannot keep up; well below it the queue is short.
        assert 0.9 * capacity <= lam <= capacity / (1 - THROUGHPUT_TOL)
        assert at["passed"] and at["rate_rps"] == lam and at["achieved_rps"] >= 0.97 * at["offered_rps"]
        assert at["requests"] >= PROBE_SPAN_TTFT_BOUNDS * 30 * lam  # sized by time, not by --requests
    assert found[200]["lambda_max"] == pytest.approx(found[1600]["lambda_max"], rel=0.05)


def test_the_attainment_alone_overshoots_capacity_on_short_probes(setup):
    # What the steady-state test fixes: 200 requests end before a queue growing at 20% over capacity
    # breaches the 30 s bound, so an attainment-only verdict passes well above capacity.
    capacity = 2 / setup.deployment.local_cost.prefill_time_s(8000)
    topo, slo = setup.topologies["homogeneous"], Slo(ttft_s=30.0, tpot_s=0.025)

    def attainment(rate: float) -> float:
        trace = build_workload(setup, trace=None, rate=rate, seed=0, requests=200)[0]
        return run_topology(setup.stack, topo, trace, slo=slo).summary.slo_attainment

    old = find_max_rate(attainment, lambda _, a: a >= 0.99, start_rps=capacity)
    assert old.rate_rps > 1.1 * capacity


def test_cli_json_meta_and_probes_csv_carry_every_probe_and_its_verdict(tiny, setup, tmp_path):
    # 20 requests: once every one fit in the SLO arriving at once and the search doubled for ever; now
    # each probe is sized by time.
    res = CliRunner().invoke(
        main, ["simulate", str(tiny), "--find-max-rate", "--requests", "20", "--out", str(tmp_path), "--json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    entry = out["topologies"]["homogeneous"]
    probes = entry["probes"]
    capacity = 2 / setup.deployment.local_cost.prefill_time_s(8000)
    assert 0.9 * capacity <= entry["lambda_max"] <= capacity / (1 - THROUGHPUT_TOL)
    assert entry["probe_count"] == len(probes) >= 3
    assert {p["reason"] for p in probes if not p["passed"]} <= {"slo", "unstable"}
    assert all(p["reason"] is None for p in probes if p["passed"])
    failed = [p for p in probes if not p["passed"]]
    assert failed and all(p["detail"] for p in failed)
    # Λ_max is the highest passing probe, and every probe above it failed
    passing = [p["rate_rps"] for p in probes if p["passed"]]
    assert (
        entry["lambda_max"]
        == max(passing)
        < min(p["rate_rps"] for p in failed if p["rate_rps"] > max(passing))
    )
    assert entry["stability"] == next(
        p for p in probes if p["passed"] and p["rate_rps"] == entry["lambda_max"]
    )

    run_dir = Path(out["run_dir"])
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["summary"]["homogeneous"]["probes"] == json.loads(json.dumps(probes))
    assert meta["stability_rule"]["probe_span_s"] == PROBE_SPAN_TTFT_BOUNDS * 30
    table = pd.read_csv(run_dir / "probes.csv")
    assert table["rate_rps"].tolist() == pytest.approx([p["rate_rps"] for p in probes])
    assert table["passed"].tolist() == [p["passed"] for p in probes]
    assert set(table["topology"]) == {"homogeneous"}

    # The dashboard's figure plots them: attainment, and achieved/offered on the second axis, by rate.
    fig = attainment_vs_rate({}, load_bundle([run_dir]))
    by_rate = sorted(probes, key=lambda p: p["rate_rps"])
    att, ratio = fig.data
    assert list(att.x) == list(ratio.x) == [p["rate_rps"] for p in by_rate]
    assert list(att.y) == [p["attainment"] for p in by_rate]
    assert list(ratio.y) == pytest.approx([p["achieved_rps"] / p["offered_rps"] for p in by_rate])
    assert ratio.yaxis == "y2" and "Λ_max" in att.name


def test_a_short_trace_is_cycled_and_each_pass_shares_prefixes_only_within_itself():
    values, offsets = offsets_from_lists([[1, 2], [1, 2, 3], [7]])  # row 1 shares row 0's prefix
    trace = Trace(
        arrival_s=np.array([0.0, 1.0, 2.0]),
        input_tokens=np.array([1024, 1536, 512]),
        output_tokens=np.array([10, 20, 30]),
        hash_values=values,
        hash_offsets=offsets,
        block_tokens=512,
    )
    out = cycle_rows(trace, 7)
    assert out.input_tokens.tolist() == [1024, 1536, 512] * 2 + [1024]
    ids = [out.hash_ids(i).tolist() for i in range(7)]
    assert ids[:3] == [[1, 2], [1, 2, 3], [7]]
    assert ids[3][:2] == ids[4][:2] and len(ids[6]) == 2  # within a pass, as the trace shares
    passes = [{i for row in ids[a:b] for i in row} for a, b in ((0, 3), (3, 6), (6, 7))]
    assert not passes[0] & passes[1] and not passes[1] & passes[2]  # across passes, nothing

    timed = exact_rate(retime(out, 2.0, seed=0), 2.0)  # n - 1 gaps summing to (n - 1) / rate
    assert timed.arrival_s[-1] - timed.arrival_s[0] == pytest.approx(6 / 2.0)
    assert np.all(np.diff(timed.arrival_s) >= 0)
