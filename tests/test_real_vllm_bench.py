"""vLLM's real ``bench serve`` against our fake server: its result file read by our reader, the same
requests replayed by our own client, and our export checked by vLLM's own ``calculate_metrics``.

No vLLM server: only the venv's client (``make vllm-venv``), ~20 requests, about 10 s of CPU."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import need
from interop_checks import assert_same_magnitude, replay_same_requests, tpot_as_others_define

from harness.analysis import metrics as m
from harness.analysis.runs import load_bundle
from harness.cli import main
from harness.interop import read_foreign
from harness.loadgen.fakeserver import fake_server_process

pytestmark = pytest.mark.vllm
HERE = Path(__file__).parent / "realengine"
TTFT_MS, ITL_MS, PROMPTS, OUT = 50, 10, 20, 8


def _vllm(python: Path, script: str, *args: str) -> str:
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu"}
    # -P: the script's directory holds realengine/vllm.py, which must not shadow the vllm package.
    done = subprocess.run(
        [str(python), "-P", str(HERE / script), *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """(vLLM's result file, our replay of the same requests, the vLLM venv's python)."""
    from realengine.vllm import VENV, build_tiny_model, vllm_python

    python = vllm_python()
    need(python is not None, f"no vLLM venv at {VENV} (make vllm-venv installs it)")
    work = tmp_path_factory.mktemp("vllm-bench")
    model = build_tiny_model(work / "model", python)  # bench serve needs a tokenizer; nothing downloaded
    with fake_server_process("--ttft-ms", str(TTFT_MS), "--itl-ms", str(ITL_MS)) as url:
        _vllm(
            python, "vllm_bench_serve.py", "--backend", "openai", "--base-url", url, "--model", "tiny-llama",
            "--tokenizer", str(model), "--dataset-name", "random", "--random-input-len", "16",
            "--random-output-len", str(OUT), "--num-prompts", str(PROMPTS), "--request-rate", "20",
            "--seed", "1", "--ignore-eos", "--temperature", "0", "--disable-tqdm", "--save-result",
            "--save-detailed", "--result-dir", str(work), "--result-filename", "vllm.json",
        )  # fmt: skip
        v = json.loads((work / "vllm.json").read_text())
        # The same requests by our client: vLLM's lengths at vLLM's release times.
        release = np.array(v["start_times"]) - np.array(v["queue_times"])
        replay_same_requests(url, release, v["input_lens"], v["output_lens"], work / "ours")
    return work / "vllm.json", work / "ours", python


def test_our_reader_gives_vllms_own_per_request_figures_and_totals(bench):
    path, _, _ = bench
    v = json.loads(path.read_text())
    _, df = read_foreign(path)
    assert (
        len(df) == v["num_prompts"] == PROMPTS and (df["status"] == "ok").sum() == v["completed"] == PROMPTS
    )
    queue = np.array(v["queue_times"])
    np.testing.assert_allclose(m.ttft(df), np.array(v["ttfts"]) + queue, atol=1e-9)  # s, from release
    np.testing.assert_allclose(m.e2e(df), np.array(v["latencies"]) + queue, atol=1e-9)
    np.testing.assert_allclose(m.itl(df), np.concatenate(v["itls"]), atol=1e-12)
    assert int(df["output_tokens_received"].sum()) == v["total_output_tokens"] == PROMPTS * OUT
    assert int(df["prompt_tokens_trace"].sum()) == v["total_input_tokens"]
    from_send = (df["first_token_s"] - df["sent_s"]).to_numpy()
    assert np.mean(from_send) * 1e3 == pytest.approx(v["mean_ttft_ms"], rel=1e-9)  # ms in the summary
    assert np.mean(tpot_as_others_define(df)) * 1e3 == pytest.approx(v["mean_tpot_ms"], rel=1e-9)


def test_our_client_on_the_same_requests_sees_the_same_server(bench):
    path, ours_dir, _ = bench
    _, theirs = read_foreign(path)
    ours = load_bundle([ours_dir]).runs[0].records
    assert (ours["status"] == "ok").all() and ours["output_tokens_received"].tolist() == [OUT] * PROMPTS
    assert_same_magnitude(ours, theirs, [(m.ttft, TTFT_MS / 1e3), (m.itl, 0.9 * ITL_MS / 1e3)])


def test_our_export_is_what_vllms_own_calculate_metrics_makes_of_it(bench, tmp_path):
    _, ours_dir, python = bench
    res = CliRunner().invoke(
        main, ["analyze", str(ours_dir), "--export", "vllm", "--export-dir", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    (path,) = tmp_path.glob("*.vllm.json")
    ours = json.loads(path.read_text())
    theirs = json.loads(_vllm(python, "vllm_metrics.py", str(path)).strip().splitlines()[-1])
    assert (
        theirs["completed"] == ours["completed"] == PROMPTS
        and theirs["total_output"] == ours["total_output_tokens"]
    )
    for key in (
        "request_throughput",
        "output_throughput",
        "max_output_tokens_per_s",
        "max_concurrent_requests",
    ):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-9), key
    for name in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std", "p50", "p90", "p99"):
            key = f"{stat}_{name}_ms"
            assert ours[key] == pytest.approx(theirs[key], rel=1e-9, abs=1e-9), key
