"""A minimal OpenAI-compatible streaming server that can misbehave on demand (tests, benchmarks).

Not a model: it answers ``/v1/completions`` and ``/v1/chat/completions`` with ``max_tokens`` chunks of
one word each, usage (prompt tokens = words in the prompt) and optional ``prfaas`` breakdown, ``/tokenize``
as vLLM does (with ``FakeServer.tokenizer`` if set, else one token per word), and it
honours vLLM's PD-proxy fields (a prefill leg with ``kv_transfer_params.do_remote_decode`` gets
``kv_transfer_params`` back; a decode leg records what it received).

Modes (``FakeServer.mode``, or a per-request ``mode_for(n)``): ok, stall (no response), stall_body
(headers then silence), reset (abort before responding), disconnect (abort mid-stream), garbage
(a non-SSE line mid-stream), no_done (EOF without [DONE]), error_event, http_500, http_429.

Run standalone (for benchmarks): ``python -m harness.loadgen.fakeserver --port 8100``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class FakeServer:
    """Behaviour knobs; ``requests`` and ``bodies`` record what arrived (bodies only if ``keep_bodies``)."""

    mode: str = "ok"
    mode_for: Callable[[int], str] | None = None
    first_token_delay_s: float = 0.0
    itl_s: float = 0.0
    prompt_token_offset: int = 0  # reported prompt tokens = words + offset (to provoke mismatches)
    completion_token_offset: int = 0
    cached_tokens: int | None = None
    prfaas: dict[str, Any] | None = None
    role_chunk_delay_s: float = 0.0  # chat: the role-only chunk goes out first, this long before content
    keep_bodies: bool = False
    tokenizer: Any = None  # a tokenizers.Tokenizer for /tokenize; None: a token is a whitespace word
    tokenize_calls: int = 0
    requests: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self._handle)
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_get("/health", _health)
        return app

    async def _tokenize(self, request: web.Request) -> web.Response:
        """vLLM's ``POST /tokenize`` for a completion prompt: count, max_model_len, token ids."""
        self.tokenize_calls += 1
        body = await request.json(loads=json.loads)
        text = body["prompt"]
        if self.tokenizer is None:
            ids = list(range(len(text.split())))
        else:
            ids = self.tokenizer.encode(text, add_special_tokens=body.get("add_special_tokens", True)).ids
        return web.json_response({"count": len(ids), "max_model_len": 1 << 20, "tokens": ids})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._respond(request)
        except ConnectionResetError:  # the client went away mid-stream (aiohttp's reset error subclasses it)
            return web.Response(status=499)

    async def _respond(self, request: web.Request) -> web.StreamResponse:
        n = self.requests
        self.requests += 1
        body = await request.json(loads=json.loads)
        if self.keep_bodies:
            self.bodies.append(body)
            self.headers.append({k.lower(): v for k, v in request.headers.items()})
        mode = self.mode_for(n) if self.mode_for else self.mode
        chat = request.path.endswith("/chat/completions")
        if mode == "stall":
            await asyncio.sleep(3600)
        if mode == "reset":
            request.transport.abort()  # RST before any response byte
            await asyncio.sleep(0.05)
            return web.Response()
        if mode.startswith("http_"):
            code = int(mode[5:])
            return web.json_response({"error": {"message": f"fake {code}", "code": code}}, status=code)
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        n_prompt = len(prompt.split()) + self.prompt_token_offset
        n_out = int(body.get("max_tokens", 16))
        kv_in = body.get("kv_transfer_params")
        if not body.get("stream"):  # PD prefill leg (vLLM proxy sends stream=False, max_tokens=1)
            out: dict[str, Any] = {
                "id": f"cmpl-{n}",
                "choices": [{"index": 0, "text": " x", "finish_reason": "length"}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": 1, "total_tokens": n_prompt + 1},
            }
            if isinstance(kv_in, dict) and kv_in.get("do_remote_decode"):
                out["kv_transfer_params"] = {
                    "do_remote_prefill": True, "do_remote_decode": False, "remote_engine_id": "fake-prefill",
                    "remote_block_ids": [1, 2, 3], "remote_host": "127.0.0.1", "remote_port": 5600,
                    "kv_bytes": 4096 * n_prompt,
                }  # fmt: skip
            await asyncio.sleep(self.first_token_delay_s)
            return web.json_response(out)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        if mode == "stall_body":
            await asyncio.sleep(3600)
        if chat:
            await resp.write(
                _event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            )
            if self.role_chunk_delay_s:
                await asyncio.sleep(self.role_chunk_delay_s)
        if self.first_token_delay_s:
            await asyncio.sleep(self.first_token_delay_s)
        tok = _event({"choices": [{"index": 0, "delta": {"content": " tok"}}]} if chat else
                     {"choices": [{"index": 0, "text": " tok", "finish_reason": None}]})  # fmt: skip
        if self.itl_s == 0 and mode == "ok":
            await resp.write(tok * n_out)  # stream "instantly": one write
        else:
            for i in range(n_out):
                if i and self.itl_s:
                    await asyncio.sleep(self.itl_s)
                if i == n_out // 2 and mode in ("disconnect", "garbage"):
                    if mode == "garbage":
                        await resp.write(b"this is not server-sent events\n\n")
                        await asyncio.sleep(0.05)
                    else:
                        await resp.write(tok)
                        await asyncio.sleep(0.05)
                        request.transport.abort()
                        return resp
                await resp.write(tok)
        if mode == "error_event":
            await resp.write(_event({"error": {"message": "fake engine error", "code": 500}}))
        final: dict[str, Any] = {
            "choices": [],
            "usage": {
                "prompt_tokens": n_prompt,
                "completion_tokens": n_out + self.completion_token_offset,
                "total_tokens": n_prompt + n_out,
            },
        }
        if self.cached_tokens is not None:
            final["usage"]["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        if self.prfaas is not None:
            final["prfaas"] = self.prfaas
        await resp.write(_event(final))
        if mode != "no_done":
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class ServerThread:
    """Runs a ``FakeServer`` on 127.0.0.1 in a background thread; ``url`` once started. A context manager."""

    def __init__(self, server: FakeServer, port: int = 0) -> None:
        self.server, self.port = server, port
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._runner: web.AppRunner | None = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as exc:  # surfaced by __enter__
            self._error = exc
        self._ready.set()
        if self._error is None:
            self._loop.run_forever()
        if self._runner is not None:
            self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.server.app(), handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            self._thread.join(10)
            raise RuntimeError(f"fake server did not start: {self._error!r}") from self._error
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@contextlib.contextmanager
def fake_server_process(*args: str) -> Iterator[str]:
    """Run the fake server in its own process (``main``'s flags in ``args``); yields its base URL.

    Benchmarks use it so the server does not share the client's event loop or interpreter lock.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "harness.loadgen.fakeserver", "--port", str(port), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"fake server on port {port} did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # never leave a server behind
            proc.kill()
            proc.wait()


def main() -> None:
    """Serve until killed (benchmarks run this in a separate process)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8100)
    ap.add_argument("--first-token-delay", type=float, default=0.0)
    ap.add_argument("--tokenizer", default=None, help="tokenizer.json that /tokenize counts with")
    args = ap.parse_args()
    server = FakeServer(first_token_delay_s=args.first_token_delay)
    if args.tokenizer:
        from harness.traces.prompts import load_tokenizer

        server.tokenizer = load_tokenizer(args.tokenizer)

    async def report() -> None:
        last, t = 0, time.monotonic()
        while True:
            await asyncio.sleep(5)
            now = time.monotonic()
            print(f"fakeserver: {(server.requests - last) / (now - t):.0f} req/s", flush=True)
            last, t = server.requests, now

    async def on_start(app: web.Application) -> None:
        app["report"] = asyncio.create_task(report())

    app = server.app()
    app.on_startup.append(on_start)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
