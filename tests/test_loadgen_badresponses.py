"""Bad responses a server can give with a 200, recorded as what they are; and what a run of failures says.

A tiny aiohttp server on 127.0.0.1 (real sockets) answers every request one scripted way.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from aiohttp import web
from threaded_server import ServerThread

from harness.loadgen import Endpoint, ReplayConfig, Timeouts, replay
from harness.records import read_meta, read_records
from harness.traces.frame import Trace

HTML = "<!DOCTYPE html><html><body><h1>Welcome to nginx!</h1></body></html>\n"


def _chunk(text: str) -> str:
    return "data: " + json.dumps({"choices": [{"index": 0, "text": text}]}) + "\n\n"


def _usage(completion) -> str:
    # json.dumps writes NaN as the bare NaN literal, as a broken server would
    usage = {"prompt_tokens": 4, "completion_tokens": completion, "total_tokens": 4}
    return "data: " + json.dumps({"choices": [], "usage": usage}) + "\n\n"


class ScriptedServer:
    """Answers every completion with ``mode``: an HTML page, a JSON body, or a stream with bad usage."""

    def __init__(self, mode: str, completion=3) -> None:
        self.mode, self.completion = mode, completion

    async def completions(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        if self.mode == "html":
            return web.Response(text=HTML, content_type="text/html")
        if self.mode == "json":
            return web.json_response({"choices": [{"text": " tok tok tok"}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for _ in range(3):
            await resp.write(_chunk(" tok").encode())
        await resp.write(_usage(self.completion).encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([web.post("/v1/completions", self.completions)])
        return app


def _trace(n: int) -> Trace:
    return Trace(
        arrival_s=np.arange(n) * 0.01,
        input_tokens=np.full(n, 4),
        output_tokens=np.full(n, 3),
        hash_values=np.arange(n, dtype=np.int64),
        hash_offsets=np.arange(n + 1, dtype=np.int64),
    )


def _replay(url: str, out, n: int = 3):
    cfg = ReplayConfig(
        endpoints=(Endpoint(name="t", url=url, model="m"),),
        timeouts=Timeouts(connect_s=2, first_token_s=5, total_s=10),
        progress=False,
    )
    return replay(_trace(n), cfg, out, quiet=True), read_records(out)


@pytest.mark.parametrize(("mode", "ctype"), [("html", "text/html"), ("json", "application/json")])
def test_a_200_that_is_not_an_event_stream_is_not_sse_and_names_its_content_type(tmp_path, mode, ctype):
    with ServerThread(ScriptedServer(mode)) as srv:
        result, df = _replay(srv.url, tmp_path)
    assert set(df.status) == {"error"} and set(df.error_class) == {"not_sse"}
    assert all(ctype in m for m in df.error_message)
    assert result.all_failed


@pytest.mark.parametrize("completion", [-5, float("nan"), 2.5, "3", True])
def test_impossible_usage_is_bad_usage_not_ok(tmp_path, completion):
    with ServerThread(ScriptedServer("sse", completion)) as srv:
        _, df = _replay(srv.url, tmp_path)
    assert set(df.error_class) == {"bad_usage"}
    assert all("completion_tokens=" in m for m in df.error_message)


def test_a_sane_stream_from_the_same_server_is_ok(tmp_path):
    with ServerThread(ScriptedServer("sse", 3)) as srv:
        result, df = _replay(srv.url, tmp_path)
    assert set(df.status) == {"ok"} and (df.output_tokens_received == 3).all()
    assert not result.all_failed


def test_a_run_of_failures_is_complete_invalid_and_its_ends_are_recorded(tmp_path):
    # Every scheduled request ended (as an error): complete, but the verdict names the failed share.
    with ServerThread(ScriptedServer("html")) as srv:
        result, df = _replay(srv.url, tmp_path, n=4)
    meta = read_meta(tmp_path)
    assert meta["complete"] is True and result.complete
    # The failed share is one of the reasons (a busy machine may add a send-lag reason before it).
    assert meta["validity"]["verdict"].startswith("invalid: ")
    assert "100.0% of requests failed" in meta["validity"]["verdict"]
    assert meta["summaries"]["t"]["validity"]["checks"]["failed_share"]["value"] == 1.0
    assert (df.end_s >= df.sent_s).all()
