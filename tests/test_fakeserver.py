"""``prfaas-bench fake-server`` as users run it: its own process on a loopback port, real HTTP, vLLM's
chunk fields, the configured timings and lengths, faults, and one-line errors for bad flags."""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp
import numpy as np
import pytest
from click.testing import CliRunner
from threaded_server import ServerThread

from harness.cli import main
from harness.loadgen import Endpoint, LoadSpec, ReplayConfig, replay
from harness.loadgen.fakeserver import WRITES, FakeServer, fake_server_process
from harness.records import read_records
from harness.traces.frame import Trace


def _post(url: str, path: str, body: dict) -> tuple[int, bytes]:
    async def go() -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as s, s.post(url + path, json=body) as resp:
            return resp.status, await resp.read()

    return asyncio.run(go())


def _chunks(raw: bytes) -> list:
    lines = [ln[6:] for ln in raw.decode().split("\n\n") if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]


@pytest.fixture(scope="module")
def server():
    with fake_server_process("--model", "m", "--output-tokens", "5") as url:
        yield url


def test_completion_chunks_carry_vllms_fields_and_stop_like_an_eos(server):
    body = {"model": "m", "prompt": "one two three", "max_tokens": 9, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    status, raw = _post(server, "/v1/completions", body)
    chunks = _chunks(raw)
    tokens, usage = chunks[:-1], chunks[-1]
    assert status == 200 and len(tokens) == 5  # --output-tokens 5 < max_tokens: an EOS after 5
    for c in tokens:
        assert {"id", "object", "created", "model", "choices"} <= set(c)
        assert (c["object"], c["model"], c["id"]) == ("text_completion", "m", tokens[0]["id"])
        assert set(c["choices"][0]) == {"index", "text", "logprobs", "finish_reason", "stop_reason"}
    assert [c["choices"][0]["finish_reason"] for c in tokens] == [None] * 4 + ["stop"]
    assert usage["choices"] == [] and usage["usage"]["prompt_tokens"] == 3
    assert usage["usage"]["completion_tokens"] == 5 and usage["usage"]["total_tokens"] == 8


@pytest.mark.parametrize(
    ("extra", "n", "finish"),
    [({"max_tokens": 3}, 3, "length"), ({"max_tokens": 10, "min_tokens": 8}, 8, "stop"),
     ({"max_tokens": 7, "ignore_eos": True}, 7, "length")],
)  # fmt: skip
def test_chat_lengths_follow_max_min_tokens_and_ignore_eos(server, extra, n, finish):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True, **extra}
    status, raw = _post(server, "/v1/chat/completions", body)
    chunks = _chunks(raw)  # no include_usage: no usage chunk, as vLLM
    assert status == 200 and chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = chunks[1:]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert [c["choices"][0]["delta"]["content"] for c in content] == [" tok"] * n
    assert content[-1]["choices"][0]["finish_reason"] == finish


def test_a_whole_chat_answer_and_an_unreadable_body(server):
    body = {"model": "m", "messages": [{"role": "user", "content": "a b"}], "max_tokens": 4}
    status, raw = _post(server, "/v1/chat/completions", body)
    answer = json.loads(raw)
    assert status == 200 and answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": " tok" * 4}
    assert answer["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    for bad in ({"model": "m"}, {"model": "m", "prompt": "x", "max_tokens": "many"}, {"prompt": 3}):
        status, raw = _post(server, "/v1/completions", bad)
        assert status == 400 and json.loads(raw)["error"]["type"] == "BadRequestError"


def test_a_conversation_counts_every_message_as_the_prompt():
    # A session's later turn sends the history: the model reads every message, not only the last.
    # Without a tokenizer a token is a word: 3 + 2 + 4 words.
    turns = [{"role": "user", "content": "a b c"}, {"role": "assistant", "content": "d e"},
             {"role": "user", "content": "f g h i"}]  # fmt: skip
    with ServerThread(FakeServer(model="m")) as srv:
        status, raw = _post(
            srv.url, "/v1/chat/completions", {"model": "m", "messages": turns, "max_tokens": 2}
        )
        _, counted = _post(srv.url, "/tokenize", {"model": "m", "messages": turns})
    assert status == 200 and json.loads(raw)["usage"]["prompt_tokens"] == 9
    assert json.loads(counted)["count"] == 9


def test_unknown_model_is_vllms_404_and_models_lists_the_served_one(server):
    status, raw = _post(server, "/v1/completions", {"model": "other", "prompt": "x", "stream": True})
    assert status == 404 and json.loads(raw)["error"]["message"] == "The model `other` does not exist."

    async def models() -> dict:
        async with aiohttp.ClientSession() as s, s.get(server + "/v1/models") as resp:
            return await resp.json()

    assert [m["id"] for m in asyncio.run(models())["data"]] == ["m"]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_every_way_of_writing_sends_the_same_stream(path):
    # 3,000 tokens of ~200 bytes: a burst takes several 64 KiB writes, the others one write per chunk.
    body = {"model": "m", "prompt": "a b c", "messages": [{"role": "user", "content": "a b c"}],
            "max_tokens": 3000, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}  # fmt: skip
    streams = {}
    for writes in WRITES:
        with ServerThread(FakeServer(writes=writes, chunk_tokens=(1, 2))) as srv:
            status, raw = _post(srv.url, path, body)
        assert status == 200
        streams[writes] = [{k: v for k, v in c.items() if k != "created"} for c in _chunks(raw)]
    assert streams["token"] == streams["burst"] == streams["token-dumps"]
    chunks = streams["burst"]
    counts = [c["usage"]["completion_tokens"] for c in chunks if c["choices"]]
    assert counts[-1] == 3000 and chunks[-1]["usage"]["completion_tokens"] == 3000
    assert all(b - a in (0, 1, 2) for a, b in zip(counts, counts[1:], strict=False))  # noqa: RUF007


def test_replay_against_it_measures_the_configured_ttft_and_tpot(tmp_path):
    n = 6
    trace = Trace(
        arrival_s=np.arange(n) * 0.05, input_tokens=np.full(n, 20), output_tokens=np.full(n, 6),
        hash_values=np.zeros(0, dtype=np.int64), hash_offsets=np.zeros(n + 1, dtype=np.int64),
    )  # fmt: skip
    with fake_server_process("--ttft-ms", "150", "--itl-ms", "30", "--output-tokens", "2") as url:
        config = ReplayConfig(
            endpoints=(Endpoint(name="f", url=url, model="m"),), load=LoadSpec(), progress=False
        )
        replay(trace, config, tmp_path, quiet=True)
    df = read_records(tmp_path)
    assert (df.status == "ok").all() and len(df) == n
    # replay sends ignore_eos, so every request gets its 6 tokens despite --output-tokens 2
    assert (df.output_tokens_received == 6).all() and (df.prompt_tokens_server == 20).all()
    # The server's sleeps are lower bounds on what the client sees (a late read can shorten one gap
    # but not the sum); the median gap says the ITL was not stretched either.
    assert (df.first_token_s - df.scheduled_s).min() >= 0.150
    assert (df.last_token_s - df.scheduled_s).min() >= 0.150 + 5 * 0.030
    assert 0.030 * 0.9 <= np.median(np.concatenate(df.itl_s.to_list())) < 2 * 0.030


def test_every_nth_request_fails_as_asked():
    with fake_server_process("--fault", "http_500", "--fault-every", "2") as url:
        statuses = [
            _post(url, "/v1/completions", {"model": "x", "prompt": "a", "stream": True})[0] for _ in range(4)
        ]
    assert statuses == [200, 500, 200, 500]


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--bogus"], "No such option '--bogus'"), (["--ttft-ms", "-1"], "--ttft-ms"),
     (["--fault", "nope"], "--fault"), (["--port", "70000"], "--port"),
     (["--output-tokens", "0"], "--output-tokens")],
)  # fmt: skip
def test_bad_flags_are_one_line_and_exit_2(args, message):
    res = CliRunner().invoke(main, ["fake-server", *args])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output
    assert res.output.startswith("error: ") and " fake-server: " in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_a_port_in_use_is_one_line_and_exit_2():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = CliRunner().invoke(main, ["fake-server", "--port", str(port)])
    assert res.exit_code == 2 and f"127.0.0.1:{port}: cannot listen" in res.output
    assert len(res.output.strip().splitlines()) == 1
