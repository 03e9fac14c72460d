"""GuideLLM's benchmarks JSON read into records, held to the figures GuideLLM itself wrote per request.

``tests/data/guidellm_benchmarks_fake_server.json`` is GuideLLM 0.8.1's own output (8 requests at 20
req/s against ``prfaas-bench fake-server --ttft-ms 50 --itl-ms 10 --fault http_500 --fault-every 4``),
trimmed of its aggregate ``metrics`` and most of ``config`` (tests/data/README.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import DATA
from interop_checks import beside_our_run, matches_guidellms_own_figures

from harness.analysis import metrics as m
from harness.cli import main
from harness.interop import read_foreign

GUIDELLM = DATA / "guidellm_benchmarks_fake_server.json"


def test_each_request_matches_what_guidellm_wrote_for_it():
    matches_guidellms_own_figures(GUIDELLM)


def test_its_failures_keep_the_class_and_message_and_analyze_leaves_itl_missing():
    _, df = read_foreign(GUIDELLM)
    failed = df[df["status"] != "ok"]
    assert len(failed) == 2 and set(failed["error_class"]) == {"HTTPStatusError"}
    assert failed["error_message"].str.contains("500").all() and np.isnan(m.ttft(failed)).all()
    res = CliRunner().invoke(main, ["analyze", str(GUIDELLM), "--json"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.output)["topologies"].values()
    assert (
        row["failed"] == 2
        and row["itl_p50_s"] is None
        and row["tpot_p50_s"] == pytest.approx(0.0103, rel=0.5)
    )


def test_a_sweep_becomes_one_topology_per_rate(tmp_path):
    doc = json.loads(GUIDELLM.read_text())
    second = json.loads(json.dumps(doc["benchmarks"][0]))
    second["config"]["strategy"]["rate"] = 40.0
    doc["benchmarks"].append(second)
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(doc))
    _, df = read_foreign(path)
    assert sorted(df["topology"].unique()) == ["default@20rps", "default@40rps"]


def test_two_files_of_the_same_name_stay_two_runs(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "benchmarks.json").write_text(GUIDELLM.read_text())
    res = CliRunner().invoke(
        main,
        [
            "analyze",
            str(tmp_path / "a" / "benchmarks.json"),
            str(tmp_path / "b" / "benchmarks.json"),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert sorted(json.loads(res.output)["topologies"]) == [
        "guidellm:a/benchmarks/default",
        "guidellm:b/benchmarks/default",
    ]


def test_targets_on_another_clock_leave_the_send_as_the_release_and_say_so(tmp_path):
    # What GuideLLM 0.8.1 wrote in one of our runs: Poisson targets counted from its -1.0 placeholder.
    doc = json.loads(GUIDELLM.read_text())
    requests = doc["benchmarks"][0]["requests"]
    for k, r in enumerate(requests["successful"] + requests["errored"]):
        r["info"]["timings"]["targeted_start"] = -1.0 + 0.05 * k
    path = tmp_path / "benchmarks.json"
    path.write_text(json.dumps(doc))
    _, df = read_foreign(path)
    ok = df[df["status"] == "ok"]
    theirs = [r["time_to_first_token_ms"] for r in requests["successful"]]
    np.testing.assert_allclose(m.ttft(ok) * 1e3, theirs, rtol=1e-6)  # from the send, as GuideLLM's
    assert np.isnan(m.send_lag(df)).all()
    res = CliRunner().invoke(main, ["analyze", str(path), "--json"])
    assert res.exit_code == 0 and any(
        "targeted_start is not on the clock" in n for n in json.loads(res.output)["notes"]
    )


def test_analyze_report_and_compare_take_guidellms_file_beside_our_run(tmp_path):
    side, check = beside_our_run(tmp_path, GUIDELLM, "guidellm")
    # GuideLLM keeps no route or KV bytes: missing, not zero
    assert side["guidellm"]["offload_share"] is None and side["guidellm"]["egress_gbps"] is None
    # GuideLLM's ~50 ms TTFT against the synthetic run's seconds: better, so not a regression
    ttft = next(c for c in check["checks"] if c["metric"] == "ttft_p90_s")
    assert ttft["current"] < 0.2 < ttft["baseline"] and not ttft["regressed"]
