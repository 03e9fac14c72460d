"""vLLM bench serve result files: read into records, written from records, and read back.

``tests/data/vllm_bench_serve_fake_server.json`` was written by vLLM 0.32.0's own ``bench serve``
(``--save-result --save-detailed``, 20 random prompts at 20 req/s against ``prfaas-bench fake-server
--ttft-ms 50 --itl-ms 10``), so the reader is held to vLLM's real file, not to our idea of it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import DATA
from interop_checks import beside_our_run, tpot_as_others_define
from synthetic_runs import SyntheticTopology, write_synthetic_run

from harness.analysis import metrics as m
from harness.analysis.runs import load_bundle
from harness.cli import main
from harness.interop import read_foreign

VLLM_FILE = DATA / "vllm_bench_serve_fake_server.json"


@pytest.fixture(scope="module")
def vllm_file() -> dict:
    return json.loads(VLLM_FILE.read_text())


def test_each_request_keeps_vllms_timings_in_seconds_counted_from_its_release(vllm_file):
    meta, df = read_foreign(VLLM_FILE)
    v = vllm_file
    assert meta["source"] == "vllm-bench" and meta["model"] == "tiny-llama" and len(df) == v["num_prompts"]
    queue = np.array(v["queue_times"])
    # Our TTFT and E2E count from the schedule's release: vLLM's (from the send) plus its queue time.
    np.testing.assert_allclose(m.ttft(df), np.array(v["ttfts"]) + queue, atol=1e-9)
    np.testing.assert_allclose(m.e2e(df), np.array(v["latencies"]) + queue, atol=1e-9)
    np.testing.assert_allclose(m.send_lag(df), queue, atol=1e-9)
    for ours, theirs in zip(df["itl_s"], v["itls"], strict=True):
        np.testing.assert_allclose(ours, theirs)
    assert df["output_tokens_received"].tolist() == v["output_lens"]
    assert df["prompt_tokens_trace"].tolist() == v["input_lens"]
    assert (df["status"] == "ok").sum() == v["completed"] and not df["itl_unresolved"].any()


def test_its_summary_figures_in_ms_are_what_the_records_give_in_seconds(vllm_file):
    _, df = read_foreign(VLLM_FILE)
    v = vllm_file
    from_send = (df["first_token_s"] - df["sent_s"]).to_numpy()
    assert np.median(from_send) * 1e3 == pytest.approx(v["median_ttft_ms"], rel=1e-9)
    assert np.percentile(from_send, 99) * 1e3 == pytest.approx(v["p99_ttft_ms"], rel=1e-9)
    # vLLM's TPOT is (latency − TTFT)/(n − 1): ours, (last − first)/(n − 1), but 0 for a one-read answer.
    assert np.mean(tpot_as_others_define(df)) * 1e3 == pytest.approx(v["mean_tpot_ms"], rel=1e-9)
    assert np.mean(m.itl(df)) * 1e3 == pytest.approx(v["mean_itl_ms"], rel=1e-9)
    assert int(df["output_tokens_received"].sum()) == v["total_output_tokens"]


def test_a_run_exported_as_vllm_has_every_key_of_vllms_file_with_its_type(tmp_path, vllm_file):
    load = {"config": {"load": {"arrival": "poisson", "rate_rps": 2.0, "concurrency": 8}}}
    run = write_synthetic_run(
        tmp_path / "run", {"homogeneous": SyntheticTopology(fail_share=0.1)}, n=40, meta=load
    )
    res = CliRunner().invoke(
        main, ["analyze", str(run), "--export", "vllm", "--export-dir", str(tmp_path / "x")]
    )
    assert res.exit_code == 0, res.output
    (path,) = (tmp_path / "x").glob("*.vllm.json")
    ours = json.loads(path.read_text())
    assert set(vllm_file) <= set(ours), set(vllm_file) - set(ours)
    for key, theirs in vllm_file.items():
        if theirs is None or ours[key] is None:  # vLLM's own None-able keys (label, goodput, concurrency)
            continue
        assert type(ours[key]) is type(theirs), key
        if isinstance(theirs, list) and theirs:
            assert type(ours[key][0]) is type(theirs[0]), key
    assert (ours["request_rate"], ours["burstiness"], ours["max_concurrency"]) == (2.0, 1.0, 8)
    assert ours["num_prompts"] == 40 and ours["completed"] + ours["failed"] == 40
    assert ours["completed"] == sum(1 for e in ours["errors"] if not e) and ours["failed"] > 0


def test_export_read_back_gives_the_same_requests(tmp_path):
    topo = SyntheticTopology(fail_share=0.1, output_tokens=12)
    run = write_synthetic_run(tmp_path / "run", {"prfaas": topo}, n=60, source="replay")
    assert (
        CliRunner()
        .invoke(main, ["analyze", str(run), "--export", "vllm", "--export-dir", str(tmp_path)])
        .exit_code
        == 0
    )
    (path,) = tmp_path.glob("*.vllm.json")
    original = load_bundle([run]).runs[0].records
    _, back = read_foreign(path)
    assert (back["status"] == original["status"]).all()
    for fn in (m.ttft, m.e2e, m.tpot, m.send_lag):
        np.testing.assert_allclose(fn(back), fn(original), atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(m.itl(back), m.itl(original), atol=1e-12)
    assert back["output_tokens_received"].tolist() == original["output_tokens_received"].tolist()
    # A failure has no TTFT: missing (NaN), not the 0.0 vLLM writes for it.
    assert np.isnan(m.ttft(back)[back["status"] != "ok"]).all()


def test_analyze_report_and_compare_take_vllms_file_beside_our_run(tmp_path):
    side, check = beside_our_run(tmp_path, VLLM_FILE, "vllm-bench")
    # A figure the file lacks is missing, not zero: vLLM saves no route, KV bytes or cached tokens.
    assert side["vllm-bench"]["offload_share"] is None and side["vllm-bench"]["egress_gbps"] is None
    # Our run as the baseline, vLLM's as the current: vLLM's 50 ms TTFT at 18 req/s beats the
    # synthetic run's seconds at 2 req/s, so nothing regressed; the checks name both sides' figures.
    assert check["passed"] and not check["missing_topologies"]
    ttft = next(c for c in check["checks"] if c["metric"] == "ttft_p90_s")
    assert ttft["current"] < 0.1 < ttft["baseline"]


@pytest.mark.parametrize(
    ("content", "message"),
    [('{"hello": 1}', "not a result file of vLLM bench serve"),
     ("a,b\n1,2\n", "neither JSON nor JSON Lines"),
     ('{"backend": "openai", "model_id": "m", "completed": 1, "request_throughput": 1, "duration": 1, '
      '"mean_ttft_ms": 3}', "without per-request data"),
     ('{"backend": "openai", "model_id": "m", "completed": 1, "request_throughput": 1, "duration": 1, '
      '"ttfts": [0.1], "input_lens": [1], "output_lens": [1], "itls": [[]], "latencies": [0.1, 0.2], '
      '"start_times": [0], "errors": [""]}', "'latencies' must be a list of 1, got 2")],
)  # fmt: skip
def test_a_file_we_cannot_read_is_one_line_naming_it_and_exit_2(tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    for cmd in (["analyze", str(bad)], ["report", str(bad), "-o", str(tmp_path / "r.html")]):
        res = CliRunner().invoke(main, cmd)
        assert res.exit_code == 2 and message in res.output and str(bad) in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output


def test_an_export_dir_that_cannot_be_made_is_one_line_and_exit_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = CliRunner().invoke(
        main, ["analyze", str(VLLM_FILE), "--export", "vllm", "--export-dir", str(blocker)]
    )
    assert res.exit_code == 2 and str(blocker) in res.output and "--export-dir" in res.output
    assert len(res.output.strip().splitlines()) == 1
