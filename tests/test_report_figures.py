"""Dashboard figures built from records when no time series exists, and the planner fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic_runs import SyntheticTopology, write_synthetic_bench, write_synthetic_run

from harness.analysis import analyze, load_bundle
from harness.analysis.figures import (
    all_figures,
    breakdown_bars,
    egress_from_records,
    queue_depths,
    sweep,
    throughput_bars,
)
from harness.records import RequestRecord, RunWriter, read_records

SCENARIO = Path(__file__).resolve().parent.parent / "workloads" / "paper-case-study.toml"


def _rec(i: int, **kw) -> RequestRecord:
    return RequestRecord(run_id="r", topology="t", request_id=str(i), trace_row=i, **kw)


def test_egress_rebuilt_from_transfers_by_hand():
    # 1 GB over [0, 2) s crosses sites: 4 Gbit/s in each 1 s window; 0.5 GB over [1, 1.5) s: +8 Gbit/s
    # spread over a whole 1 s window = +4 Gbit/s in [1, 2). An intra-site transfer does not count.
    df = pd.DataFrame([r.to_dict() for r in (
        _rec(0, scheduled_s=0.0, prefill_site="remote", decode_site="local", kv_bytes=10**9,
             kv_transfer_start_s=0.0, kv_transfer_end_s=2.0),
        _rec(1, scheduled_s=0.0, prefill_site="remote", decode_site="local", kv_bytes=5 * 10**8,
             kv_transfer_start_s=1.0, kv_transfer_end_s=1.5),
        _rec(2, scheduled_s=0.0, prefill_site="local", decode_site="local", kv_bytes=10**12,
             kv_transfer_start_s=0.0, kv_transfer_end_s=2.0),
    )])  # fmt: skip
    t, gbps = egress_from_records(df, step=1.0)
    assert list(t) == [0.0, 1.0]
    assert gbps == pytest.approx([4.0, 8.0])
    assert (gbps.sum() * 1.0) == pytest.approx((10**9 + 5 * 10**8) * 8 / 1e9)  # all bits accounted for


def test_queue_depth_from_records_by_hand(tmp_path):
    # Waiting = scheduled ≤ t < prefill start: [0, 3) one, [1, 2) two → steps 1, 2, 1, 0.
    with RunWriter(tmp_path / "r", {}) as w:
        w.write(_rec(0, scheduled_s=0.0, prefill_start_s=3.0, first_token_s=4.0, last_token_s=4.0))
        w.write(_rec(1, scheduled_s=1.0, prefill_start_s=2.0, first_token_s=3.0, last_token_s=3.0))
    fig = queue_depths(load_bundle([tmp_path / "r"]))
    (trace,) = fig.data
    assert list(trace.x) == [0.0, 1.0, 2.0, 3.0] and list(trace.y) == [1, 2, 1, 0]
    assert "from the records" in fig.layout.title.text


def test_planner_sweeps_when_no_csv(tmp_path):
    run = write_synthetic_run(
        tmp_path / "r", {"prfaas": SyntheticTopology()}, n=5, meta={"scenario": str(SCENARIO)}
    )
    bundle = load_bundle([run])
    bw = bundle.sweeps("bandwidth")
    assert bw is not None and {"bandwidth_gbps", "lambda_max", "topology"} <= set(bw.columns)
    for kind in ("threshold", "split", "bandwidth"):
        fig = sweep(bundle, kind)
        assert fig.data and all(np.isfinite(np.asarray(tr.y, dtype=float)).any() for tr in fig.data), kind
    # More link bandwidth never lowers PrfaaS's Λ_max in the planner (the figure's x is sorted).
    prfaas = bw[bw["topology"] == "prfaas"].sort_values("bandwidth_gbps")["lambda_max"].to_numpy()
    assert (np.diff(prfaas) >= -1e-9).all()


def test_every_panel_present_even_without_data(tmp_path):
    run = write_synthetic_run(tmp_path / "r", {"t": SyntheticTopology()}, n=5, timeseries=False)
    bundle = load_bundle([run])
    figs = all_figures(bundle, analyze(bundle, n_boot=100))
    assert len(figs) == 12 and len({a for a, _ in figs}) == 12  # unique anchors


BENCH_TOPOLOGIES = {
    "homogeneous": SyntheticTopology(rate_rps=2.0, prefill_s=4.0),
    "prfaas": SyntheticTopology(rate_rps=3.0, remote_share=0.5, fail_share=0.02),
    "naive": SyntheticTopology(rate_rps=2.4, remote_share=1.0),
}


@pytest.fixture
def bench_dir(tmp_path):
    return write_synthetic_bench(tmp_path / "bench", BENCH_TOPOLOGIES)


def test_each_bar_is_one_run_and_no_two_runs_share_a_label(bench_dir):
    # bench writes two simulate runs (the Λ_max search and the paired run): the old figures added them
    # in one bar ("simulate throughput" at 4.55 req/s) and called both lines "prfaas (simulate)".
    bundle = load_bundle([bench_dir])
    result = analyze(bundle, n_boot=50)
    by_stage = {t.name: t for t in throughput_bars(result, bundle).data if t.type == "bar"}
    assert list(by_stage) == ["plan Λ_max", "capacity search", "paired simulate", "replay"]
    for bar in by_stage.values():
        assert sorted(bar.x) == sorted(BENCH_TOPOLOGIES)  # one bar per topology: nothing stacks
    for stage, run_dir in (("capacity search", "capacity"), ("paired simulate", "sim"), ("replay", "rep")):
        records = read_records(bench_dir / run_dir)
        for name, y in zip(by_stage[stage].x, by_stage[stage].y, strict=True):
            mine = records[records["topology"] == name]
            ok = mine[mine["status"] == "ok"]
            span = (
                np.nanmax(np.r_[ok["last_token_s"], mine["end_s"].astype(float)]) - mine["scheduled_s"].min()
            )
            assert y == pytest.approx(len(ok) / span, rel=0.02), (stage, name)  # this run's, no other's
    for anchor, fig in all_figures(bundle, result):
        labels = [(t.legendgroup, t.name) for t in fig.data if t.showlegend is not False]
        assert len(labels) == len(set(labels)), (anchor, labels)


def test_breakdown_sums_to_the_ttft_it_names(bench_dir):
    # Some requests lack a prefill start (a server that reported no timings): the parts are averaged
    # over the requests with all four, and so is the TTFT the chart marks.
    rep = bench_dir / "rep"
    records = read_records(rep)
    records.loc[records.index % 3 == 0, "prefill_start_s"] = np.nan
    records.to_parquet(rep / "records.parquet")
    (rep / "records.jsonl").unlink()
    fig = breakdown_bars(load_bundle([bench_dir]))
    bars = [t for t in fig.data if t.type == "bar"]
    (marker,) = [t for t in fig.data if t.name == "mean TTFT"]
    rows = list(zip(*marker.y, strict=True))
    assert len(rows) == len(set(rows)) == 9  # 3 stages × 3 topologies, each once
    for i, (stage, name) in enumerate(rows):
        assert sum(b.x[i] for b in bars) == pytest.approx(marker.x[i], abs=1e-9), (stage, name)
    # The replay's TTFT by hand: first token − scheduled, over successful requests with a prefill start.
    i = rows.index(("replay", "prfaas"))
    mine = records[(records["topology"] == "prfaas") & (records["status"] == "ok")]
    mine = mine[np.isfinite(mine["prefill_start_s"].astype(float))]
    assert marker.x[i] == pytest.approx((mine["first_token_s"] - mine["scheduled_s"]).mean())


def test_headline_card_gives_three_lambda_max_and_the_gain(bench_dir):
    from harness.analysis.dashboard import headline_card, lambda_max_by_stage

    bundle = load_bundle([bench_dir])
    result = analyze(bundle, n_boot=50)
    lams = lambda_max_by_stage(result)
    # plan from plan.json, simulate from the search's meta; no ladder: replay's is unknown, shown as "–"
    assert lams["prfaas"]["plan"]["value"] == 3.24 and lams["homogeneous"]["plan"]["value"] == 2.11
    assert lams["prfaas"]["simulate"]["value"] == pytest.approx(3.0 * 1.3)
    assert all(v["replay"]["value"] is None for v in lams.values())
    card = headline_card(bundle, result)
    assert f"plan <strong>{3.24 / 2.11:.2f}×</strong>" in card and "replay –" in card
    assert "capacity search: virtual time" in card and "replay: real time over HTTP" in card

    # With the capacity ladder's result (bench's analysis.json key ``capacity_ladder``):
    result["capacity_ladder"] = {
        "validity": "valid",
        "lambda_max": {"prfaas": {"plan": 3.24, "simulate": 3.9, "replay_ladder": 3.0},
                       "homogeneous": {"plan": 2.11, "simulate": 2.6, "replay_ladder": 2.0}},
        "sources": {"replay": {"prfaas": {"low_rps": 2.8, "high_rps": 3.3},
                               "homogeneous": {"low_rps": 1.8, "high_rps": 2.2}}},
        "gain": {"prfaas_vs_homogeneous": {"replay_ladder": {"value": 1.5, "ci_low": 1.27, "ci_high": 1.83}}},
    }  # fmt: skip
    card = headline_card(bundle, result)
    assert "3.00 [2.80–3.30]" in card and "2.00 [1.80–2.20]" in card
    assert "replay <strong>1.50×</strong> [1.27–1.83] (95% CI)" in card
    assert f"simulate <strong>{3.9 / 2.6:.2f}×</strong>" in card and "capacity ladder: valid" in card
