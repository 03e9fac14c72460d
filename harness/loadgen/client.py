"""One request against one endpoint, streamed, timed and classified into a ``RequestRecord``.

Times are ``time.monotonic()`` minus the run's ``t0`` (one clock for every worker process). Errors never
escape: they become ``status="error"`` with an ``error_class`` (see ``ERROR_CLASSES``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from harness.errors import InputError
from harness.loadgen.chunks import chunk_timing, chunk_tokens
from harness.loadgen.config import Endpoint, Timeouts, redact_url
from harness.loadgen.errortext import scrub, server_message
from harness.loadgen.schedule import PHASES
from harness.loadgen.sse import (
    BAD,
    CONTENT,
    DONE,
    FULL,
    PRFAAS_KEY,
    chunk_text,
    classify,
    is_token,
    parse_chunk,
    prfaas_fields,
)
from harness.pdproxy import NO_KV_TRANSFER, prefill_leg_body
from harness.records import STATUS_ERROR, RequestRecord

ERROR_CLASSES = (
    "connect_error",  # refused, DNS: nothing listening
    "connect_timeout",
    "first_token_timeout",  # no generated token within Timeouts.first_token_s of the send
    "total_timeout",
    "http_<code>",  # e.g. http_500, http_429
    "connection_reset",  # the connection died before the response started
    "stream_disconnect",  # ... after it started (mid-stream), or EOF without [DONE]
    "malformed_sse",
    "stream_error",  # the server sent an error object inside the stream
    "not_sse",  # a 2xx answer that is not an event stream (an HTML page, say); the content type is named
    "bad_usage",  # usage counts that cannot be (negative, NaN, not integers)
    "no_tokens",  # the stream ended normally ([DONE]) without one generated token: no TTFT to measure
    "cancelled",  # the run was interrupted while this request was in flight
)


@dataclass(slots=True)
class Job:
    """One scheduled request: ``scheduled_s`` on the run clock; prompt already synthesised."""

    index: int
    row: int
    scheduled_s: float
    prompt: str
    input_tokens: int
    output_tokens: int
    phase: int
    data: bytes = b""  # the encoded request body (``Client.prepare``), built before the send time
    # Session mode: the conversation so far as alternating user/assistant texts (``prompt`` is the last
    # user text); ``answer`` receives the generated text, which the next turn's prompt carries.
    history: tuple[str, ...] = ()
    answer: str | None = None
    session: tuple[int | None, int | None, float | None] = (None, None, None)  # id, turn, predecessor end


# vLLM (and SGLang) then put the running completion_tokens on every chunk, so a chunk holding several
# tokens is counted exactly; a server that ignores the option sends none and each chunk counts as one.
STREAM_OPTIONS = {"include_usage": True, "continuous_usage_stats": True}


def stream_options(extra_body: dict[str, Any]) -> dict[str, Any]:
    """The ``stream_options`` requests carry: ours, unless ``--extra-body`` replaces them (for a server
    that refuses ``continuous_usage_stats``, say). Recorded in meta.json."""
    options = extra_body.get("stream_options", STREAM_OPTIONS)
    return dict(options) if isinstance(options, dict) else options


_MAX_LINE = 1 << 22  # an SSE line this long without a newline is not a token stream


class _Failure(Exception):
    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class


class Client:
    """Sends jobs to one endpoint. ``t0`` is the run's monotonic zero, ``wall_offset_s`` its epoch time."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        run_id: str,
        t0: float,
        wall_offset_s: float,
        timeouts: Timeouts,
        api_key: str | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        self.ep = endpoint
        self.run_id = run_id
        self.t0 = t0
        self.wall_offset_s = wall_offset_s
        self.timeouts = timeouts
        self.extra_body = dict(extra_body or {})
        self.headers = {"Content-Type": "application/json"}
        self._secrets = (api_key,) if api_key else ()
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        if endpoint.pd:
            self.url = (endpoint.decode_url or "") + endpoint.path
            self.prefill_url = (endpoint.prefill_url or "") + endpoint.path
        else:
            self.url = endpoint.url + endpoint.path

    def body(self, job: Job) -> dict[str, Any]:
        """The request body: streaming, usage included, output length forced to the trace's."""
        body: dict[str, Any] = {
            "model": self.ep.model,
            "max_tokens": job.output_tokens,
            "min_tokens": job.output_tokens,
            "ignore_eos": True,
            "temperature": 0.0,
            "stream": True,
            "stream_options": stream_options({}),
        }
        if self.ep.api == "chat":
            turns = (*job.history, job.prompt)
            body["messages"] = [
                {"role": "assistant" if k % 2 else "user", "content": text} for k, text in enumerate(turns)
            ]
        else:  # one text: the earlier turns and answers, then the new user text
            body["prompt"] = "".join(job.history) + job.prompt
        body.update(self.extra_body)
        return body

    def prepare(self, job: Job) -> Job:
        """Encode the body ahead of the send time, so serialisation is not send lag."""
        job.data = json.dumps(self.body(job), separators=(",", ":")).encode()
        return job

    async def execute(self, session: aiohttp.ClientSession, job: Job) -> RequestRecord:
        """Run one job to completion or failure; never raises (a cancelled job returns a "cancelled" record)."""
        rec = RequestRecord(
            run_id=self.run_id,
            topology=self.ep.name,
            request_id=f"{self.ep.name}-{job.index}",
            trace_row=job.row,
            scheduled_s=job.scheduled_s,
            prompt_tokens_trace=job.input_tokens,
            output_tokens_requested=job.output_tokens,
            source="replay",
            endpoint=self.ep.name,
            phase=PHASES[job.phase],
        )
        rec.session_id, rec.turn, rec.predecessor_end_s = job.session
        st = _Stream(text=[] if job.answer is not None else None)
        try:
            async with asyncio.timeout(None) as cm:
                st.cm = cm
                await self._run(session, job, rec, st)
        except _Failure as f:
            _fail(rec, f.error_class, str(f))
        except aiohttp.ConnectionTimeoutError as exc:
            _fail(rec, "connect_timeout", str(exc) or "connect timeout")
        except TimeoutError:
            if st.times:
                _fail(rec, "total_timeout", f"no end within {self.timeouts.total_s}s of send")
            else:
                _fail(rec, "first_token_timeout", f"no generated token within {self.timeouts.first_token_s}s")
        except aiohttp.ClientConnectorError as exc:
            _fail(rec, "connect_error", str(exc))
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, ConnectionError) as exc:
            cls = "stream_disconnect" if st.headers_s is not None else "connection_reset"
            _fail(rec, cls, f"{type(exc).__name__}: {exc}")
        except asyncio.CancelledError:
            # Leaf task: finish with a record instead of propagating, so an interrupted run keeps it.
            _fail(rec, "cancelled", "run interrupted")
        _finish(rec, st, self.t0)
        rec.end_s = time.monotonic() - self.t0
        if st.text is not None:
            job.answer = "".join(st.text)
        if rec.error_message:  # a server may echo the key or a URL's credentials back
            rec.error_message = scrub(rec.error_message, self._secrets)
        return rec

    async def _run(self, session: aiohttp.ClientSession, job: Job, rec: RequestRecord, st: _Stream) -> None:
        loop = asyncio.get_running_loop()
        t_o = self.timeouts
        headers = self.headers
        data = job.data or self.prepare(job).data
        mono, t0 = time.monotonic, self.t0
        rec.sent_s = mono() - t0
        now = loop.time()
        st.total_deadline = now + t_o.total_s
        st.cm.reschedule(now + min(t_o.first_token_s, t_o.total_s))
        if self.ep.pd:
            headers = {**headers, "X-Request-Id": rec.request_id}
            body = json.loads(data)
            body["kv_transfer_params"] = await self._prefill_leg(session, body, headers, rec)
            data = json.dumps(body, separators=(",", ":")).encode()
            rec.decode_start_s = mono() - t0
        async with session.post(self.url, data=data, headers=headers) as resp:
            st.headers_s = mono() - t0
            rec.first_byte_s = st.headers_s
            if resp.status >= 400:
                said = server_message(await resp.content.read(2048))
                raise _Failure(f"http_{resp.status}", said or resp.reason or "")
            ctype = resp.headers.get("Content-Type", "")
            if ctype and not ctype.lower().startswith("text/event-stream"):
                text = (await resp.content.read(120)).decode("utf-8", "replace")
                raise _Failure("not_sse", f"content type {ctype!r}, not text/event-stream: {text.strip()!r}")
            # Read whatever bytes arrived and split lines here: one await per network read, not per
            # line. Events that arrive in the same read share its timestamp (that is when they arrived).
            # The common chunks (one token, with or without a running count) are handled inline; the
            # rest by ``st.add``.
            content, times, text, tail = resp.content, st.times, st.text, b""
            while True:
                data = await content.readany()
                if not data:
                    raise _Failure("stream_disconnect", "stream ended without [DONE]")
                now = mono()
                lines = (tail + data if tail else data).split(b"\n")
                tail = lines.pop()
                for line in lines:
                    if len(line) < 2:  # blank separator ("" or "\r")
                        continue
                    kind, payload, completion = classify(line)
                    if text is not None and kind in (CONTENT, FULL):  # session mode keeps the answer
                        text.append(chunk_text(payload))
                    if kind == CONTENT:
                        if completion < 0 and st.counted < 0:
                            if not times:
                                st.cm.reschedule(st.total_deadline)
                            times.append(now)
                        elif completion == st.counted + 1 and completion > 0 and times:
                            # one more token by a running count (what ``st.add`` does, without the call)
                            st.counted, st.usage_line = completion, payload
                            times.append(now)
                        else:  # a running count, or a token in a stream that counted so far
                            st.add(now, completion, payload if completion >= 0 else None)
                    elif kind == FULL:
                        self._full(payload, rec, st, now)
                    elif kind == DONE:
                        return
                    elif kind == BAD:
                        raise _Failure("malformed_sse", line[:200].decode("utf-8", "replace"))
                if len(tail) > _MAX_LINE:
                    raise _Failure("malformed_sse", f"line longer than {_MAX_LINE} bytes")

    def _full(self, payload: bytes, rec: RequestRecord, st: _Stream, now: float) -> None:
        try:
            chunk = parse_chunk(payload)
        except ValueError:
            raise _Failure("malformed_sse", payload[:200].decode("utf-8", "replace")) from None
        if chunk.error:
            raise _Failure("stream_error", chunk.error)
        st.add(now, chunk.completion_tokens, None, chunk.has_token)
        if chunk.usage is not None:
            st.usage = chunk.usage
        if chunk.prfaas is not None:
            for k, v in prfaas_fields(chunk.prfaas, self.wall_offset_s).items():
                setattr(rec, k, v)
        if chunk.kv_transfer_params is not None and rec.prefill_instance is None:
            rec.prefill_instance = _engine(chunk.kv_transfer_params)

    async def _prefill_leg(
        self,
        session: aiohttp.ClientSession,
        body: dict[str, Any],
        headers: dict[str, str],
        rec: RequestRecord,
    ) -> dict[str, Any] | None:
        """vLLM PD proxy, leg 1: max_tokens=1, not streamed; returns the server's kv_transfer_params."""
        p = prefill_leg_body(body)
        rec.route = "pd"
        rec.prefill_instance = urlsplit(self.prefill_url).netloc
        rec.decode_instance = urlsplit(self.url).netloc
        rec.prefill_start_s = time.monotonic() - self.t0
        async with session.post(self.prefill_url, data=json.dumps(p).encode(), headers=headers) as resp:
            raw = await resp.read()
            rec.prefill_end_s = time.monotonic() - self.t0
            if resp.status >= 400:
                raise _Failure(f"http_{resp.status}", f"prefill leg: {server_message(raw) or resp.reason}")
        try:
            obj = json.loads(raw)
        except ValueError:
            raise _Failure("malformed_sse", "prefill leg: response is not JSON") from None
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if isinstance(usage, dict):
            rec.prompt_tokens_server = usage.get("prompt_tokens")
            rec.cached_tokens = _cached(usage)
        kv = obj.get("kv_transfer_params") if isinstance(obj, dict) else None
        if not isinstance(kv, dict):
            _warn(rec, NO_KV_TRANSFER)
            return None
        # Breakdown fields a prefill server puts beside vLLM's keys (the emulated endpoints do); they
        # replace the client's view of the leg. Fields of the decode stream's breakdown come later and win.
        for k, v in prfaas_fields(kv, self.wall_offset_s).items():
            setattr(rec, k, v)
        return kv


_ANSWER_S = 10.0  # an endpoint that accepts but sends no response headers by then does not answer


def check_endpoint(endpoint: Endpoint, *, api_key: str | None, timeouts: Timeouts) -> str | None:
    """Before a run: every server of ``endpoint`` answers HTTP (any status but 401/403) at its
    ``/v1/models``, with the headers requests will carry. Raises ``InputError`` in one line naming
    the URL without credentials otherwise; the key never appears in it.

    Returns the shaping backend the servers declare on their model cards (``prfaas-bench serve``'s
    sites do: netem, relay or loopback), or None where they declare none or disagree."""
    return check_endpoints((endpoint,), api_key=api_key, timeouts=timeouts)


def check_endpoints(endpoints: Iterable[Endpoint], *, api_key: str | None, timeouts: Timeouts) -> str | None:
    """``check_endpoint`` for every endpoint of a run: the backend all their servers declare, if one."""
    declared: set[str | None] = set()
    for endpoint in endpoints:
        urls = [endpoint.prefill_url or "", endpoint.decode_url or ""] if endpoint.pd else [endpoint.url]
        for url in urls:
            # The URL itself (scheme, host, port) was checked when the Endpoint was made, and URL
            # credentials beside an API key by ``runner.check_credentials``: call that first.
            problem, backend = asyncio.run(_answers(url + "/v1/models", api_key, timeouts.connect_s))
            if problem:
                raise InputError(f"endpoint {endpoint.name!r}: {redact_url(url)} {problem}")
            declared.add(backend)
    return declared.pop() if len(declared) == 1 else None


_CARDS_MAX = 1 << 20  # a model list longer than this (or of no stated length) is not read for a backend


async def _answers(url: str, api_key: str | None, connect_s: float) -> tuple[str | None, str | None]:
    """(None when ``url`` answers, else why not in words without the URL; the shaping backend its
    model card declares, if any)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_s, sock_read=_ANSWER_S)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, headers=headers, allow_redirects=False) as resp,
        ):
            status = resp.status
            small = status == 200 and resp.content_length is not None and resp.content_length <= _CARDS_MAX
            body = await resp.read() if small else b""
    except aiohttp.ClientConnectorError as exc:
        return f"does not answer: {exc.os_error.strerror or exc.os_error}", None
    except TimeoutError:
        return (
            f"does not answer (no connection within {connect_s:g} s, or no response within {_ANSWER_S:g} s)",
            None,
        )
    except (aiohttp.ClientError, OSError) as exc:  # str(exc) may hold the URL, credentials included
        return f"does not answer ({type(exc).__name__})", None
    if status in (401, 403):
        return f"rejects the credentials (HTTP {status})", None
    return None, _declared_backend(body)


def _declared_backend(body: bytes) -> str | None:
    """The ``shaping_backend`` in the ``prfaas`` object of the first model card in a /v1/models body."""
    try:
        cards = json.loads(body).get("data")
        backend = cards[0][PRFAAS_KEY]["shaping_backend"]
    except (ValueError, AttributeError, LookupError, TypeError):
        return None
    return backend if isinstance(backend, str) and backend else None


@dataclass(slots=True)
class _Stream:
    """One stream's state: a time per token-bearing chunk (the read it arrived in), and, sparse,
    ``(chunk index, tokens)`` for the chunks that held other than one token."""

    cm: Any = None
    total_deadline: float = 0.0
    headers_s: float | None = None
    times: list[float] = None  # type: ignore[assignment]
    multi: list[tuple[int, int]] = None  # type: ignore[assignment]
    counted: int = -1  # the server's running completion_tokens; -1: it sends none (one token per chunk)
    usage: dict[str, Any] | None = None
    usage_line: bytes | None = None  # the last chunk with choices and usage: its usage, if no later one
    text: list[str] | None = None  # the generated text, kept only when asked (session mode)

    def __post_init__(self) -> None:
        self.times = []
        self.multi = []

    def add(self, now: float, completion: int, payload: bytes | None, token: bool = True) -> None:
        """A chunk with choices arrived at ``now``: it holds the tokens its running count added since
        the last one when the stream counts from its start, else one if it holds a token (``token``,
        or what ``payload``'s text says)."""
        if completion >= 0 and payload is not None:
            self.usage_line = payload
        if completion >= 0 and (self.counted >= 0 or not self.times):
            k = completion - max(self.counted, 0)
            self.counted = max(completion, self.counted)
        else:  # no count, or one that appears mid-stream: a total, not a running count
            k = 1 if (token if payload is None else is_token(payload)) else 0
        if k <= 0:
            return
        if not self.times:
            self.cm.reschedule(self.total_deadline)
        if k != 1:
            self.multi.append((len(self.times), k))
        self.times.append(now)


def _cached(usage: dict[str, Any]) -> int | None:
    details = usage.get("prompt_tokens_details")
    value = details.get("cached_tokens") if isinstance(details, dict) else None
    return value if isinstance(value, int) else None


def _engine(kv: dict[str, Any]) -> str | None:
    host, port, engine = kv.get("remote_host"), kv.get("remote_port"), kv.get("remote_engine_id")
    if host:
        return f"{host}:{port}" if port else str(host)
    return str(engine) if engine else None


def _bad_counts(usage: dict[str, Any]) -> str:
    """The usage counts no server can mean (negative, NaN, fractional, not numbers), as ``key=value``."""
    details = usage.get("prompt_tokens_details")
    counts = {k: usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    if isinstance(details, dict):
        counts["cached_tokens"] = details.get("cached_tokens")
    return ", ".join(
        f"{k}={v!r}" for k, v in counts.items()
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0)
    )  # fmt: skip


def _warn(rec: RequestRecord, text: str) -> None:
    rec.warning = text if not rec.warning else f"{rec.warning};{text}"


def _fail(rec: RequestRecord, error_class: str, message: str) -> None:
    rec.status = STATUS_ERROR
    rec.error_class = error_class
    rec.error_message = message[:300]


def _finish(rec: RequestRecord, st: _Stream, t0: float) -> None:
    """Token times -> first/last/ITL and tokens per chunk; server usage reconciled with the trace's
    lengths; an ok stream without a generated token becomes ``no_tokens``."""
    times = st.times
    tokens = chunk_tokens(len(times), st.multi)
    if times:
        rec.first_token_s = times[0] - t0
        rec.last_token_s = times[-1] - t0
    rec.output_tokens_received = tokens
    usage = st.usage
    if usage is None and st.usage_line is not None:
        with contextlib.suppress(ValueError):
            usage = parse_chunk(st.usage_line).usage
    completion = None if usage is None else usage.get("completion_tokens")
    if times:
        total = completion if isinstance(completion, int) and st.counted < 0 else tokens
        ct = chunk_timing(times, st.multi, total)
        rec.itl_s, rec.itl_unresolved = ct.itl_s, ct.itl_unresolved
        rec.tokens_per_chunk, rec.tokens_per_chunk_max = ct.tokens_per_chunk, ct.tokens_per_chunk_max
    elif rec.status != STATUS_ERROR and rec.output_tokens_requested > 0:
        said = f" (the server's usage says completion_tokens={completion})" if completion is not None else ""
        _fail(rec, "no_tokens", f"the stream ended without a generated token{said}")
    if usage is None:
        if rec.status != STATUS_ERROR:
            _warn(rec, "no_usage")
        return
    bad = _bad_counts(usage)
    if bad:
        if rec.status != STATUS_ERROR:
            _fail(rec, "bad_usage", f"impossible usage: {bad}")
        return
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(prompt, int):
        rec.prompt_tokens_server = prompt
        if prompt != rec.prompt_tokens_trace:
            _warn(rec, f"usage_mismatch:prompt={prompt}/{rec.prompt_tokens_trace}")
    if isinstance(completion, int):
        rec.output_tokens_received = completion  # a chunk may carry several tokens
        if completion != rec.output_tokens_requested and rec.status != STATUS_ERROR:
            _warn(rec, f"usage_mismatch:output={completion}/{rec.output_tokens_requested}")
    cached = _cached(usage)
    if cached is not None:
        rec.cached_tokens = cached
