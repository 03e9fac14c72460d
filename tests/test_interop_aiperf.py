"""AIPerf's per-request export read into records.

Two files: ``tests/data/aiperf_profile_export.jsonl`` is written by hand in the format AIPerf documents,
with round numbers so every expectation is computed by hand (a warm-up, a cancellation, a chunk of two
tokens); ``tests/data/aiperf_fake_server/`` is AIPerf 0.13.0's own output against our fake server
(tests/data/README.md), held to the aggregates AIPerf computed from it. ``tests/test_real_aiperf.py``
runs AIPerf for real."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import DATA
from interop_checks import beside_our_run, matches_aiperfs_own_figures
from synthetic_runs import SyntheticTopology, write_synthetic_run

from harness.analysis import metrics as m
from harness.cli import main
from harness.interop import read_foreign

AIPERF = DATA / "aiperf_profile_export.jsonl"
AIPERF_REAL = DATA / "aiperf_fake_server" / "profile_export.jsonl"


def test_milliseconds_become_seconds_counted_from_each_requests_release():
    meta, df = read_foreign(AIPERF)
    assert meta["source"] == "aiperf" and len(df) == 4
    ok = df["status"] == "ok"
    assert ok.tolist() == [True, True, True, False]
    # sends at 0/100/200/300 ms after the first, each 1/3/0/0.5 ms after its credit was issued (its
    # release); TTFT 50/60/55 ms and latency 120/135/90 ms from the send
    np.testing.assert_allclose(df["scheduled_s"], [0.0, 0.098, 0.201, 0.3005], atol=1e-9)
    np.testing.assert_allclose(m.send_lag(df), [0.001, 0.003, 0.0, 0.0005], atol=1e-9)
    np.testing.assert_allclose(m.ttft(df)[:3], [0.051, 0.063, 0.055], atol=1e-9)
    np.testing.assert_allclose(m.e2e(df)[:3], [0.121, 0.138, 0.090], atol=1e-9)
    np.testing.assert_allclose(m.tpot(df)[:3], [0.070 / 7, 0.075 / 7, 0.035 / 7], atol=1e-12)
    # Request 2's 8 tokens came in two chunks: its one chunk gap is not a token gap, so ITL leaves it out.
    assert df["itl_unresolved"].tolist()[:3] == [False, False, True]
    np.testing.assert_allclose(m.itl(df[ok]), [0.010] * 7 + [0.010, 0.015] + [0.010] * 5, atol=1e-12)
    assert df["prompt_tokens_trace"].tolist() == [550, 420, 600, 550]


def test_a_failure_keeps_its_class_and_message_and_has_no_ttft():
    _, df = read_foreign(AIPERF)
    failed = df[df["status"] != "ok"].iloc[0]
    assert failed["error_class"] == "RequestCancellationError" and "cancelled" in failed["error_message"]
    assert np.isnan(m.ttft(df)[3])
    assert m.duration(df) == pytest.approx(0.303, abs=1e-9)  # the failure ended 2 ms after its send at 301 ms


def test_without_credit_times_the_send_is_the_release_and_the_send_lag_is_missing(tmp_path):
    rows = [json.loads(line) for line in AIPERF.read_text().splitlines()]
    for row in rows:
        del row["metadata"]["credit_issued_ns"]
    path = tmp_path / "profile_export.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, df = read_foreign(path)
    np.testing.assert_allclose(m.ttft(df)[:3], [0.050, 0.060, 0.055], atol=1e-9)
    assert np.isnan(m.send_lag(df)).all()  # unknown, not 0


def test_analyze_shows_what_the_file_lacks_as_missing_and_compare_takes_it(tmp_path):
    res = CliRunner().invoke(main, ["analyze", str(AIPERF), "--json"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.output)["topologies"].values()
    assert row["requests"] == 4 and row["failed"] == 1 and row["ttft_p50_s"] == pytest.approx(0.055)
    assert row["cache_hit_rate"] is None and row["ttft_queue_p50_s"] is None and row["offload_share"] is None
    run = write_synthetic_run(tmp_path / "run", {"default": SyntheticTopology()}, n=20, source="replay")
    res = CliRunner().invoke(main, ["compare", str(run), str(AIPERF), "--json", "--allow-invalid"])
    check = json.loads(res.output)
    assert res.exit_code in (0, 1) and any(c["metric"] == "ttft_p90_s" for c in check["checks"])
    out = tmp_path / "r.html"
    assert CliRunner().invoke(main, ["report", str(run), str(AIPERF), "-o", str(out)]).exit_code == 0


def test_aiperfs_own_export_gives_the_aggregates_aiperf_computed_from_it():
    matches_aiperfs_own_figures(AIPERF_REAL)


def test_aiperfs_own_export_keeps_the_servers_counts_and_its_failures():
    # 12 requests of 8 tokens at 20 req/s against fake-server --fault http_500 --fault-every 4: 9 served.
    _, df = read_foreign(AIPERF_REAL)
    ok = df["status"] == "ok"
    assert ok.sum() == 9 and set(df.loc[~ok, "error_class"]) == {"Internal Server Error"}
    assert (df.loc[ok, "output_tokens_received"] == 8).all()
    # --use-server-token-count: AIPerf's input length is the server's usage count
    assert (df.loc[ok, "prompt_tokens_trace"] == df.loc[ok, "prompt_tokens_server"]).all()
    # its lines are in completion order; ours start at the first release
    assert df["scheduled_s"].min() == 0.0 and not df["scheduled_s"].is_monotonic_increasing


def test_analyze_report_and_compare_take_aiperfs_own_export_beside_our_run(tmp_path):
    side, check = beside_our_run(tmp_path, AIPERF_REAL, "aiperf")
    assert side["aiperf"]["offload_share"] is None and side["aiperf"]["egress_gbps"] is None
    # 9 of 12 served: throughput counts those over the span from the first release to the last end
    _, df = read_foreign(AIPERF_REAL)
    assert side["aiperf"]["throughput_rps"] == pytest.approx(9 / m.duration(df), rel=1e-9)
    ttft = next(c for c in check["checks"] if c["metric"] == "ttft_p90_s")
    assert ttft["current"] < 0.5 < ttft["baseline"] and not ttft["regressed"]
