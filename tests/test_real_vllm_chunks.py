"""A real vLLM (CPU build, tiny random-weight Llama): the first generated token sets TTFT even when its
text is empty, every token the server generated is timed and counted, and a prefill/decode "pair"
without a KV connector (the same server as both) is flagged invalid with a note.

The fixture (``real_vllm`` in conftest) needs ``make vllm-venv``; without it these tests skip on a
laptop and fail under CI=true.
"""

from __future__ import annotations

import json
import urllib.request

import pytest
from click.testing import CliRunner
from realengine.results import counter
from test_pd_connectorless import check_flagged, pd_run

from harness.cli import main
from harness.records import read_meta, read_records

pytestmark = pytest.mark.vllm


def _empty_text_chunks(url: str, n_out: int) -> tuple[int, int]:
    """One raw streamed chat completion: (chunks whose running count went up while their text is
    empty, the running completion_tokens at the end), read straight off the wire, not by the harness."""
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "one two three four"}],
            "max_tokens": n_out, "min_tokens": n_out, "ignore_eos": True, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}  # fmt: skip
    req = urllib.request.Request(
        url + "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    empty = last = 0
    with urllib.request.urlopen(req, timeout=120) as resp:
        for raw in resp:
            line = raw.strip()
            if not line.startswith(b"data: {"):
                continue
            obj = json.loads(line[6:])
            count = obj["usage"]["completion_tokens"]
            if obj["choices"] and obj["choices"][0]["delta"].get("content") == "" and count > last:
                empty += 1
            last = count
    return empty, last


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_every_generated_token_is_timed_and_sets_ttft(real_vllm, tmp_path, api):
    # The random weights emit partial UTF-8 byte tokens: chunks with "text": "" (checked on the wire).
    empty, last = _empty_text_chunks(real_vllm.url, 48)
    assert last == 48 and empty > 0, "the tiny model sent no empty-text token chunk: nothing to test"
    trace = tmp_path / "t.jsonl"
    rows = [
        {"timestamp": i * 40, "input_length": 60 + 13 * i, "output_length": 16 + 4 * i, "hash_ids": [i]}
        for i in range(12)
    ]
    trace.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    before = counter(real_vllm.metrics_text(), "vllm:generation_tokens")
    res = CliRunner().invoke(
        main,
        ["replay", "--endpoint", real_vllm.url, "--model", "tiny-llama", "--api", api, "--trace", str(trace),
         "--out", str(out), "--max-send-lag-ms", "1000", "--quiet"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    generated = counter(real_vllm.metrics_text(), "vllm:generation_tokens") - before
    df = read_records(out)
    assert len(df) == len(rows) and (df["status"] == "ok").all(), df["error_message"].tolist()
    assert df["first_token_s"].notna().all()  # no ok record without a first token
    # Every token the server generated was timed: one gap per token after the first, and the count
    # agrees with the server's own usage and with its generation-token counter.
    assert sorted(df["output_tokens_received"]) == sorted(r["output_length"] for r in rows)
    assert all(len(itl) == n - 1 for itl, n in zip(df["itl_s"], df["output_tokens_received"], strict=True))
    assert df["output_tokens_received"].sum() == generated
    assert (df["tokens_per_chunk_max"] >= 1).all() and df["tokens_per_chunk"].notna().all()
    assert read_meta(out)["stream_options"]["continuous_usage_stats"] is True


def test_the_same_vllm_as_prefill_and_decode_is_a_pd_pair_without_kv_transfer(real_vllm, tmp_path):
    # Without a KV connector vLLM answers the prefill leg without kv_transfer_params, and the decode
    # server computes the whole prompt again: the run must not pass for a disaggregated one.
    n = 6
    out = pd_run(real_vllm.url, real_vllm.url, "tiny-llama", tmp_path, n=n)
    assert (read_records(out)["status"] == "ok").all()
    check_flagged(out, n)


def test_no_kv_transfer_params_on_the_wire(real_vllm):
    """The premise of the test above, read off the wire: a prefill leg asking for a remote decode gets
    no kv_transfer_params back from a vLLM without a connector."""
    body = {"model": "tiny-llama", "prompt": "one two three", "max_tokens": 1, "stream": False,
            "kv_transfer_params": {"do_remote_decode": True, "do_remote_prefill": False}}  # fmt: skip
    req = urllib.request.Request(
        real_vllm.url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        answer = json.loads(resp.read())
    assert not answer.get("kv_transfer_params")
