"""A PD pair whose prefill server has no KV connector (no kv_transfer_params back) is not a disaggregated
run: the verdict is invalid with that reason, analyze says so in a note, and the TTFT breakdown does not
claim a KV transfer of 0 s. Against fake servers on 127.0.0.1 (tests/test_real_vllm_chunks.py does the
same against a real vLLM used as both prefill and decode server)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from threaded_server import ServerThread

from harness.analysis.summary import Slo, summarize
from harness.cli import main
from harness.loadgen.fakeserver import FakeServer
from harness.records import read_meta, read_records

NO_KV_REASON = "returned no kv_transfer_params (no KV connector)"


def pd_run(prefill_url: str, decode_url: str, model: str, tmp_path: Path, n: int = 6) -> Path:
    """``replay --prefill-url --decode-url`` of ``n`` small rows; the run directory."""
    trace = tmp_path / "t.jsonl"
    rows = [{"timestamp": i * 100, "input_length": 64, "output_length": 4, "hash_ids": [i]} for i in range(n)]
    trace.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    res = CliRunner().invoke(
        main,
        ["replay", "--prefill-url", prefill_url, "--decode-url", decode_url, "--model", model,
         "--trace", str(trace), "--out", str(out), "--max-send-lag-ms", "1000", "--quiet"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return out


def check_flagged(out: Path, n: int) -> str:
    """The run is invalid for the missing KV transfer and analyze says why; returns analyze's text."""
    df = read_records(out)
    assert df["warning"].str.contains("pd_no_kv_transfer_params").sum() == n
    validity = read_meta(out)["validity"]
    assert validity["verdict"].startswith("invalid") and NO_KV_REASON in validity["verdict"]
    res = CliRunner().invoke(main, ["analyze", str(out)], terminal_width=250)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # rich wraps long notes
    assert f"{n} of {n} PD requests got no kv_transfer_params" in text
    assert "not measured" in text  # the breakdown's KV-transfer cell
    assert "0.000s / 0.000s" not in text  # no KV transfer claimed as 0 s
    summary = summarize(read_records(out), Slo())
    assert summary["ttft_transfer_mean_s"] is None and summary["pd_no_kv_transfer"] == n
    return text


def test_a_connectorless_pd_pair_is_invalid_and_says_why(tmp_path):
    with (
        ServerThread(FakeServer(kv_connector=False)) as p,
        ServerThread(FakeServer(kv_connector=False)) as d,
    ):
        out = pd_run(p.url, d.url, "m", tmp_path)
    check_flagged(out, 6)
    assert (read_records(out)["status"] == "ok").all()  # the requests themselves worked


def test_a_pd_pair_with_a_connector_is_not_flagged(tmp_path):
    with ServerThread(FakeServer()) as p, ServerThread(FakeServer()) as d:
        out = pd_run(p.url, d.url, "m", tmp_path)
    assert NO_KV_REASON not in read_meta(out)["validity"]["verdict"]
    summary = summarize(read_records(out), Slo())
    assert summary["pd_no_kv_transfer"] == 0 and summary["ttft_transfer_mean_s"] is not None
    res = CliRunner().invoke(main, ["analyze", str(out)], terminal_width=250)
    assert res.exit_code == 0 and "kv_transfer_params" not in res.output and "not measured" not in res.output
