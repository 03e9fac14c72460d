"""An OpenAI-compatible streaming server with set timings, for checking a pipeline end to end
(``prfaas-bench fake-server``): no model, no GPU, and every number it serves is known in advance.

It answers ``/v1/completions`` and ``/v1/chat/completions`` as vLLM does: SSE chunks with vLLM's
fields (``id``, ``object``, ``created``, ``model``, ``choices[].text`` or ``delta``, ``logprobs``,
``finish_reason``, ``stop_reason``), one word (`` tok``) per token, the usage chunk when
``stream_options.include_usage`` asks for it, ``max_tokens``/``min_tokens``/``ignore_eos`` honoured.
The first token comes ``first_token_delay_s`` after the request, the others ``itl_s`` apart; usage
counts whitespace words as prompt tokens, of every message of a chat (with ``tokenizer`` set: its tokens,
special tokens included, chat prompts through ``chat_template``, as vLLM counts). Tokens per chunk (``chunk_tokens``, a cycle of
counts: a chunk of k tokens goes out k·``itl_s`` after the previous one, as a stream interval sends
them), the running ``usage`` on every chunk when ``stream_options.continuous_usage_stats`` asks (unless
``usage_deltas`` is off: a server that ignores the option), and empty-text tokens (``empty_text``: the
first n tokens decode to "", as partial UTF-8 bytes do) are set as vLLM shows them. How a stream
without delays goes out (``writes``, for measuring clients): ``burst``, 64 KiB writes (the server is
never the limit); ``token``, one write per chunk, encoded once per kind of chunk; ``token-dumps``, one
write per chunk, each encoded by ``json.dumps`` when written (a Python server's CPU cost per token). Also:
``/v1/models``, ``/health``, vLLM's ``POST /tokenize`` (a prompt or chat ``messages``; a wrong model
gets vLLM's 404 with its message; ``max_model_len`` as set), ``/metrics`` with vLLM's running/waiting
gauges, and vLLM's PD-proxy fields (a prefill leg with ``kv_transfer_params.do_remote_decode`` gets
``kv_transfer_params`` back, unless ``kv_connector`` is off). A body it cannot read gets
vLLM's 400.

Faults on demand (``mode``, or per request ``mode_for(n)``): ok, stall (no response), stall_body
(headers then silence), reset (abort before responding), disconnect (abort mid-stream), garbage (a
non-SSE line mid-stream), no_done (EOF without [DONE]), error_event, http_500, http_429, no_tokens (a
normal end, usage included, without one generated token).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from harness.emulation.prometheus import CONTENT_TYPE, MetricFamily, render
from harness.errors import InputError

FAULTS = (
    "stall", "stall_body", "reset", "disconnect", "garbage", "no_done", "error_event", "http_500", "http_429",
    "no_tokens",
)  # fmt: skip
MAX_MODEL_LEN = 1 << 20
WRITES = ("burst", "token", "token-dumps")
_BURST_BYTES = 1 << 16


@dataclass
class FakeServer:
    """Behaviour knobs; ``requests`` and ``bodies`` record what arrived (bodies, headers and the client's
    address only if ``keep_bodies``)."""

    mode: str = "ok"
    mode_for: Callable[[int], str] | None = None
    first_token_delay_s: float = 0.0
    itl_s: float = 0.0
    output_tokens: int | None = None  # stop (as at an EOS) after this many, unless ignore_eos
    model: str | None = None  # the only model served (others get vLLM's 404); None: any name
    prompt_token_offset: int = 0  # reported prompt tokens = words + offset (to provoke mismatches)
    completion_token_offset: int = 0
    cached_tokens: int | None = None
    prfaas: dict[str, Any] | None = None
    role_chunk_delay_s: float = 0.0  # chat: the role-only chunk goes out first, this long before content
    chunk_tokens: tuple[int, ...] = (1,)  # tokens per chunk, cycled; the last chunk holds what is left
    usage_deltas: bool = True  # honour stream_options.continuous_usage_stats (running usage per chunk)
    empty_text: int = 0  # the first n tokens have empty text (partial UTF-8 bytes)
    writes: str = "burst"  # without itl_s: 64 KiB writes, or one per chunk (WRITES; module docstring)
    kv_connector: bool = True  # False: a prefill leg gets no kv_transfer_params (vLLM without a connector)
    keep_bodies: bool = False
    # A tokenizers.Tokenizer: /tokenize and usage.prompt_tokens count with it (special tokens included,
    # chat prompts through ``chat_template``); None: a token is a whitespace word.
    tokenizer: Any = None
    chat_template: str = "<|user|>\n{}\n<|assistant|>\n"
    max_model_len: int = MAX_MODEL_LEN
    tokenize_calls: int = 0
    metrics: bool = True  # serve vLLM's /metrics (requests running = in flight here); False: 404
    requests: int = 0
    in_flight: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    peers: list[str | None] = field(default_factory=list)  # each kept body's client address

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self._handle)
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", _health)
        if self.metrics:
            app.router.add_get("/metrics", self._metrics)
        return app

    async def _metrics(self, request: web.Request) -> web.Response:
        """vLLM's request gauges: every request in flight here is running; none waits."""
        families = [
            MetricFamily("vllm:num_requests_running", "gauge", "Requests in flight").add(self.in_flight),
            MetricFamily("vllm:num_requests_waiting", "gauge", "Requests waiting").add(0),
        ]
        return web.Response(body=render(families).encode(), headers={"Content-Type": CONTENT_TYPE})

    async def _models(self, request: web.Request) -> web.Response:
        card = {"id": self.model or "fake", "object": "model", "created": 0, "owned_by": "prfaas-bench",
                "max_model_len": MAX_MODEL_LEN}  # fmt: skip
        return web.json_response({"object": "list", "data": [card]})

    async def _tokenize(self, request: web.Request) -> web.Response:
        """vLLM's ``POST /tokenize`` (a prompt, or chat ``messages``): count, max_model_len, token ids."""
        self.tokenize_calls += 1
        body = await request.json(loads=json.loads)
        model = body.get("model")
        if self.model is not None and model != self.model:
            error = {"message": f"The model `{model}` does not exist.", "type": "NotFoundError", "code": 404}
            return web.json_response({"error": error}, status=404)
        if "messages" in body:
            ids = self._ids(body["messages"], chat=True)
        else:
            ids = self._ids(body["prompt"], special=body.get("add_special_tokens", True))
        return web.json_response({"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids})

    def _ids(self, prompt: Any, *, chat: bool = False, special: bool = True) -> list[int]:
        """Token ids as a vLLM with this tokenizer counts them: a text, or (``chat``) every message of a
        conversation through the template, no special tokens. Without a tokenizer a token is a word."""
        if chat:  # earlier turns (a session's history) count as the model reads them, with their roles
            *earlier, last = prompt
            if self.tokenizer is None:
                prompt = " ".join(m["content"] for m in prompt)
            else:
                turns = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in earlier)
                return self.tokenizer.encode(
                    turns + self.chat_template.format(last["content"]), add_special_tokens=False
                ).ids
        if self.tokenizer is None:
            return list(range(len(prompt.split())))
        return self.tokenizer.encode(prompt, add_special_tokens=special).ids

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        try:
            return await self._respond(request)
        except ConnectionResetError:  # the client went away mid-stream (aiohttp's reset error subclasses it)
            return web.Response(status=499)
        finally:
            self.in_flight -= 1

    def _length(self, body: dict[str, Any]) -> tuple[int, str]:
        # Tokens to generate and the finish reason, as vLLM decides them for a model that emits EOS
        # after ``output_tokens``.
        limit = int(body.get("max_tokens") or 16)
        n = limit
        if self.output_tokens is not None and not body.get("ignore_eos"):
            n = min(limit, max(self.output_tokens, int(body.get("min_tokens") or 0)))
        return n, "length" if n >= limit else "stop"

    async def _respond(self, request: web.Request) -> web.StreamResponse:
        n = self.requests
        self.requests += 1
        chat = request.path.endswith("/chat/completions")
        try:
            body = await request.json(loads=json.loads)
            words = len(self._ids(body["messages"] if chat else body["prompt"], chat=chat))
            n_out, finish = self._length(body)
        except (ValueError, LookupError, TypeError, AttributeError):
            want = "messages[].content" if chat else "prompt"
            error = {"message": f"expected a JSON object with a text {want} and integer max_tokens/min_tokens",
                     "type": "BadRequestError", "code": 400}  # fmt: skip
            return web.json_response({"error": error}, status=400)
        if self.keep_bodies:
            self.bodies.append(body)
            self.headers.append({k.lower(): v for k, v in request.headers.items()})
            self.peers.append(request.remote)
        mode = self.mode_for(n) if self.mode_for else self.mode
        if mode == "stall":
            await asyncio.sleep(3600)
        if mode == "reset":
            request.transport.abort()  # RST before any response byte
            await asyncio.sleep(0.05)
            return web.Response()
        if mode.startswith("http_"):
            code = int(mode[5:])
            return web.json_response({"error": {"message": f"fake {code}", "code": code}}, status=code)
        model = body.get("model")
        if self.model is not None and model != self.model:
            error = {"message": f"The model `{model}` does not exist.", "type": "NotFoundError", "code": 404}
            return web.json_response({"error": error}, status=404)
        n_prompt = words + self.prompt_token_offset
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{n}", "created": int(time.time()), "model": model}
        usage: dict[str, Any] = {
            "prompt_tokens": n_prompt,
            "total_tokens": n_prompt + n_out,
            "completion_tokens": n_out + self.completion_token_offset,
        }
        if self.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        if not body.get("stream"):  # also vLLM's PD prefill leg (stream=False, max_tokens=1)
            return await self._whole(body, head, chat, n_out, finish, usage)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        if mode == "stall_body":
            await asyncio.sleep(3600)
        head["object"] = "chat.completion.chunk" if chat else "text_completion"
        options = body.get("stream_options") or {}
        running = self.usage_deltas and bool(
            options.get("include_usage") and options.get("continuous_usage_stats")
        )
        if chat:
            role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                    "finish_reason": None}  # fmt: skip
            zero = {"usage": {"prompt_tokens": n_prompt, "total_tokens": n_prompt, "completion_tokens": 0}}
            await resp.write(_event({**head, "choices": [role], **(zero if running else {})}))
            if self.role_chunk_delay_s:
                await asyncio.sleep(self.role_chunk_delay_s)
        if self.first_token_delay_s:
            await asyncio.sleep(self.first_token_delay_s)
        events = self._chunks(head, chat, 0 if mode == "no_tokens" else n_out, finish, n_prompt, running)
        if self.itl_s == 0 and mode == "ok" and self.writes == "burst":
            stream = b"".join(e for e, _ in events)  # "instantly": the fewest writes
            for at in range(0, len(stream), _BURST_BYTES):
                await resp.write(stream[at : at + _BURST_BYTES])
        else:
            for i, (event, k) in enumerate(events):
                if not isinstance(event, bytes):  # token-dumps: encoded as it goes out
                    event = _event(event)
                if i and self.itl_s:
                    await asyncio.sleep(self.itl_s * k)
                if i == len(events) // 2 and mode in ("disconnect", "garbage"):
                    if mode == "garbage":
                        await resp.write(b"this is not server-sent events\n\n")
                        await asyncio.sleep(0.05)
                    else:
                        await resp.write(event)
                        await asyncio.sleep(0.05)
                        request.transport.abort()
                        return resp
                await resp.write(event)
        if mode == "no_tokens":
            usage = {**usage, "completion_tokens": 0, "total_tokens": n_prompt}
        if mode == "error_event":
            await resp.write(_event({"error": {"message": "fake engine error", "code": 500}}))
        if (body.get("stream_options") or {}).get("include_usage"):
            final: dict[str, Any] = {**head, "choices": [], "usage": usage}
            if self.prfaas is not None:
                final["prfaas"] = self.prfaas
            await resp.write(_event(final))
        if mode != "no_done":
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    def _chunks(self, head, chat: bool, n_out: int, finish: str, n_prompt: int, running: bool):
        """The token chunks of one stream: ``(event, tokens in it)``; with ``running``, each carries
        the running usage as vLLM's continuous usage stats do. With ``writes="token-dumps"`` an event
        is the chunk's object, for ``_event`` to encode when it is written."""
        events: list[tuple[Any, int]] = []
        # Equal chunks encode once; a running count is filled into the encoded bytes (no dumps per token).
        same: dict[tuple[int, bool], bytes] = {}
        usage = {"prompt_tokens": n_prompt, "total_tokens": _TOTAL, "completion_tokens": _SENT}
        sent = 0
        while sent < n_out:
            k = min(self.chunk_tokens[len(events) % len(self.chunk_tokens)], n_out - sent)
            texts = max(0, sent + k - max(self.empty_text, sent))  # tokens of this chunk that decode
            sent += k
            if self.writes == "token-dumps":
                obj = {**head, "choices": [_choice(chat, " tok" * texts, finish if sent == n_out else None)]}
                if running:
                    obj["usage"] = {"prompt_tokens": n_prompt, "total_tokens": n_prompt + sent,
                                    "completion_tokens": sent}  # fmt: skip
                events.append((obj, k))
                continue
            key = (texts, sent == n_out)
            if key not in same:
                obj = {**head, "choices": [_choice(chat, " tok" * texts, finish if key[1] else None)]}
                same[key] = _event({**obj, "usage": usage} if running else obj)
            event = same[key]
            if running:
                event = event.replace(_TOTAL_B, b"%d" % (n_prompt + sent)).replace(_SENT_B, b"%d" % sent)
            events.append((event, k))
        return events

    async def _whole(self, body, head, chat: bool, n_out: int, finish: str, usage) -> web.Response:
        text = " tok" * n_out
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish}  # fmt: skip
        else:
            choice = _choice(False, text, finish)
        out: dict[str, Any] = {**head, "object": "chat.completion" if chat else "text_completion",
                               "choices": [choice], "usage": usage}  # fmt: skip
        kv_in = body.get("kv_transfer_params")
        if isinstance(kv_in, dict) and kv_in.get("do_remote_decode") and self.kv_connector:
            out["kv_transfer_params"] = {
                "do_remote_prefill": True, "do_remote_decode": False, "remote_engine_id": "fake-prefill",
                "remote_block_ids": [1, 2, 3], "remote_host": "127.0.0.1", "remote_port": 5600,
                "kv_bytes": 4096 * usage["prompt_tokens"],
            }  # fmt: skip
        await asyncio.sleep(self.first_token_delay_s + self.itl_s * max(n_out - 1, 0))
        return web.json_response(out)


def _choice(chat: bool, text: str, finish: str | None) -> dict[str, Any]:
    if chat:
        return {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": finish}
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


_TOTAL, _SENT = "\x00total", "\x00sent"  # placeholders of the running usage, as JSON encodes them
_TOTAL_B, _SENT_B = (json.dumps(x).encode() for x in (_TOTAL, _SENT))


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def serve_fake(server: FakeServer, host: str, port: int, *, on_ready: Callable[[str], None]) -> None:
    """Serve ``server`` on ``host:port`` until interrupted; ``on_ready(url)`` once it listens.

    A port that cannot be bound is an InputError naming it.
    """

    async def main() -> None:
        runner = web.AppRunner(server.app(), handle_signals=False, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            try:
                await site.start()
            except OSError as exc:
                raise InputError(f"cannot listen ({exc.strerror or exc})", where=f"{host}:{port}") from None
            bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            on_ready(f"http://{host}:{bound}")
            await asyncio.Event().wait()  # until cancelled (Ctrl-C)
        finally:
            await runner.cleanup()

    asyncio.run(main())


START_TIMEOUT_S = 120.0


@contextlib.contextmanager
def fake_server_process(*args: str) -> Iterator[str]:
    """``prfaas-bench fake-server ARGS`` on a free loopback port in its own process; yields its base URL.

    For benchmarks and pipeline tests: the server then shares neither the event loop nor the
    interpreter lock of the client it serves. The process is stopped on exit.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "harness", "fake-server", "--port", str(port), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # A fresh interpreter importing aiohttp, numpy and pandas takes ~1 s idle but far longer on a busy
    # machine; the wait ends as soon as the port answers or the process exits.
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"fake server exited with {proc.returncode}: {' '.join(cmd)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"fake server on port {port} did not start in {START_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # never leave a server behind
            proc.kill()
            proc.wait()
