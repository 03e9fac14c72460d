"""AIPerf 0.13.0, run for real against our fake server: its per-request export read by our reader and
held to the aggregates AIPerf computed from it, the same requests replayed by our client, and both runs
side by side in ``compare`` and ``report``.

Needs ``make aiperf-venv`` (AIPerf layered on the vLLM venv; ``make real-engines`` and CI install it);
20 requests, about a minute, mostly AIPerf's start-up of its services."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import need
from interop_checks import assert_same_magnitude, matches_aiperfs_own_figures, replay_same_requests

from harness.analysis import metrics as m
from harness.analysis.runs import load_bundle
from harness.cli import main
from harness.interop import read_foreign
from harness.loadgen.fakeserver import fake_server_process

pytestmark = [pytest.mark.aiperf, pytest.mark.slow]
VENV = Path.home() / ".cache" / "prfaas-bench" / "aiperf-0.13.0"
TTFT_MS, ITL_MS, PROMPTS, OUT = 50, 10, 20, 8


@pytest.fixture(scope="module")
def aiperf_run(tmp_path_factory):
    """(AIPerf's profile_export.jsonl, our run directory of the same requests)."""
    from realengine.vllm import build_tiny_model, vllm_python

    need((VENV / ".complete").is_file(), f"no AIPerf venv at {VENV} (make aiperf-venv installs it)")
    work = tmp_path_factory.mktemp("aiperf")
    model = build_tiny_model(work / "model", vllm_python())  # synthetic prompts need a tokenizer
    artifacts = work / "aiperf"
    with fake_server_process("--ttft-ms", str(TTFT_MS), "--itl-ms", str(ITL_MS)) as url:
        # --use-server-token-count: the fake server's "tok" is not one token of the tiny tokenizer, so
        # AIPerf's own count of the text would not be the tokens sent. ignore_eos: all OUT tokens.
        done = subprocess.run(
            [str(VENV / "bin" / "aiperf"), "profile", "--model", "tiny-llama", "--url", url,
             "--endpoint-type", "completions", "--streaming", "--tokenizer", str(model),
             "--request-rate", "20", "--request-count", str(PROMPTS), "--random-seed", "1",
             "--synthetic-input-tokens-mean", "16", "--output-tokens-mean", str(OUT),
             "--use-server-token-count", "--extra-inputs", "ignore_eos:true",
             "--artifact-dir", str(artifacts), "--ui-type", "none"],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        export = artifacts / "profile_export.jsonl"
        assert done.returncode == 0 and export.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
        # The same requests by our client, at AIPerf's release times as our reader reads them.
        _, theirs = read_foreign(export)
        ok = theirs[theirs["status"] == "ok"]
        replay_same_requests(
            url, ok["scheduled_s"], ok["prompt_tokens_trace"], ok["output_tokens_received"], work / "ours"
        )
    return export, work / "ours"


def test_our_reading_gives_aiperfs_own_aggregates(aiperf_run):
    export, _ = aiperf_run
    matches_aiperfs_own_figures(export)


def test_our_client_on_the_same_requests_sees_the_same_server(aiperf_run):
    export, ours_dir = aiperf_run
    _, theirs = read_foreign(export)
    assert (theirs["status"] == "ok").all() and theirs["output_tokens_received"].tolist() == [OUT] * PROMPTS
    ours = load_bundle([ours_dir]).runs[0].records
    assert len(ours) == PROMPTS and (ours["status"] == "ok").all()
    assert_same_magnitude(ours, theirs, [(m.ttft, TTFT_MS / 1e3), (m.tpot, 0.9 * ITL_MS / 1e3), (m.itl, 0.0)])


def test_compare_and_report_put_aiperfs_run_beside_ours(aiperf_run, tmp_path):
    export, ours_dir = aiperf_run
    res = CliRunner().invoke(main, ["compare", str(ours_dir), str(export), "--json", "--allow-invalid"])
    assert res.exit_code in (0, 1), res.output  # 1: a difference beyond a bound, still a comparison
    checks = json.loads(res.stdout)["checks"]
    assert any(c["metric"] == "ttft_p90_s" for c in checks)
    page = tmp_path / "side-by-side.html"
    res = CliRunner().invoke(main, ["report", str(ours_dir), str(export), "-o", str(page)])
    assert res.exit_code == 0, res.output
    assert "aiperf" in page.read_text()
