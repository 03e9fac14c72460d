"""What analysis makes of a run's verdict and failures: duration over failures, the headline, the
dashboard banner, compare's refusal, and replay's exit code when every request failed."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner
from synthetic_runs import SyntheticTopology, write_synthetic_run
from threaded_server import ServerThread

from harness.analysis import analyze, load_bundle
from harness.analysis.dashboard import render_html
from harness.analysis.metrics import duration, failed_share, throughput_rps
from harness.analysis.tables import headline
from harness.cli import main
from harness.loadgen.fakeserver import FakeServer

INVALID = "invalid: client send-lag p99 160.0 ms > 10 ms (the client fell behind its schedule)"


def test_failures_count_in_the_duration_so_throughput_is_over_the_schedule_span():
    # 3 successes end at 1, 2 and 3 s; 5 requests scheduled at 4..8 s fail when recorded at 9..13 s
    # (the server was killed). Duration is 13 s, not the 3 s up to the last success.
    ok = [
        {"status": "ok", "scheduled_s": float(i), "last_token_s": i + 1.0, "end_s": i + 1.0} for i in range(3)
    ]
    bad = [
        {"status": "error", "error_class": "connect_error", "scheduled_s": 4.0 + i, "sent_s": 4.0 + i,
         "end_s": 9.0 + i}
        for i in range(5)
    ]  # fmt: skip
    df = pd.DataFrame(ok + bad)
    assert duration(df) == 13.0
    assert throughput_rps(df) == pytest.approx(3 / 13)
    assert failed_share(df) == pytest.approx(5 / 8)
    # Records written before end_s existed: a failure ends at the last time it shows (its send).
    old = df.drop(columns="end_s")
    assert duration(old) == 8.0


def _runs(tmp_path, verdict: str):
    topos = {"homogeneous": SyntheticTopology(), "prfaas": SyntheticTopology(prefill_s=0.7)}
    meta = {"validity": {"verdict": verdict, "by_topology": dict.fromkeys(topos, verdict)}}
    write_synthetic_run(tmp_path / "sim", topos, n=60)
    write_synthetic_run(tmp_path / "rep", topos, n=60, source="replay", meta=meta)
    bundle = load_bundle([tmp_path])
    return bundle, analyze(bundle, n_boot=50)


def test_an_invalid_replay_prints_its_reasons_instead_of_ratios(tmp_path):
    bundle, result = _runs(tmp_path, INVALID)
    assert result["validity"] == INVALID
    assert result["topologies"]["replay/prfaas"]["validity"] == INVALID
    lines = headline(result)
    replay_line = next(line for line in lines if line.startswith("replay"))
    reason = INVALID.removeprefix("invalid: ")
    assert replay_line == f"replay (vs homogeneous): invalid: homogeneous: {reason}; prfaas: {reason}"
    assert "×" not in replay_line
    sim_line = next(line for line in lines if line.startswith("simulate"))
    assert "throughput" in sim_line and "×" in sim_line  # virtual time has no conditions to break
    page = render_html(bundle, result)
    assert '<div class="validity invalid">' in page and "client send-lag p99 160.0 ms" in page


def test_an_invalid_comparison_table_says_so_in_its_title(tmp_path):
    """The terminal's ratio table of invalid runs is titled as not a finding; simulate's is not."""
    from rich.console import Console

    from harness.analysis.tables import print_tables

    _, result = _runs(tmp_path, INVALID)
    console = Console(width=200, record=True)
    print_tables(result, console)
    titles = [line for line in console.export_text().splitlines() if "(ratio [95% bootstrap CI])" in line]
    assert any(t.startswith("replay: vs homogeneous") and "INVALID RUNS, not a finding" in t for t in titles)
    assert any(t.startswith("simulate: vs homogeneous") and "INVALID" not in t for t in titles)


def test_a_valid_replay_keeps_its_ratios_and_a_green_banner(tmp_path):
    bundle, result = _runs(tmp_path, "valid")
    assert result["validity"] == "valid"
    assert any(line.startswith("replay (vs homogeneous): prfaas throughput") for line in headline(result))
    assert '<div class="validity valid">' in render_html(bundle, result)


def test_compare_refuses_an_invalid_run_unless_allowed(tmp_path):
    _, result = _runs(tmp_path / "a", INVALID)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(result, default=str))
    _, good = _runs(tmp_path / "b", "valid")
    fine = tmp_path / "good.json"
    fine.write_text(json.dumps(good, default=str))
    runner = CliRunner()
    refused = runner.invoke(main, ["compare", str(fine), str(bad)])
    assert refused.exit_code == 2
    assert "current run is invalid: client send-lag" in refused.output and "--allow-invalid" in refused.output
    assert "Traceback" not in refused.output
    allowed = runner.invoke(main, ["compare", str(fine), str(bad), "--allow-invalid"])
    assert allowed.exit_code == 0, allowed.output  # the same synthetic records: no regression
    assert "warning: " in allowed.output and "current run is invalid" in allowed.output


def test_replay_where_every_request_failed_exits_2_in_one_line(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(json.dumps({"timestamp": i * 10, "input_length": 8, "output_length": 2, "hash_ids": [i]}) + "\n"
                             for i in range(3)))  # fmt: skip
    with ServerThread(FakeServer(mode_for=lambda i: "http_500")) as srv:
        res = CliRunner().invoke(
            main, ["replay", "--endpoint", srv.url, "--model", "m", "--trace", str(trace), "--quiet",
                   "--out", str(tmp_path / "out")],
        )  # fmt: skip
    assert res.exit_code == 2
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: every request failed (http_500); records in {tmp_path / 'out'}"]
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    # Other reasons may come first on a busy machine (send lag, CPU taken by others): look for this one.
    assert meta["complete"] is True and meta["validity"]["verdict"].startswith("invalid: ")
    assert "100.0% of requests failed" in meta["validity"]["verdict"]
