"""Turning a decode's token stream into the HTTP answer: SSE chunks as tokens appear, or one JSON body."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from harness.emulation import api
from harness.emulation.api import ApiError, GenRequest
from harness.emulation.wire import PRFAAS_KEY, WallClock
from harness.serving.instances import DecodeRejected, TokenStream


def _note_decode_start(fields: dict[str, Any], stream: TokenStream, clock: WallClock) -> None:
    if stream.admitted_s is not None:
        fields["decode_start_s"] = clock.epoch(stream.admitted_s)


async def respond_json(
    req: GenRequest, stream: TokenStream, fields: dict[str, Any], clock: WallClock
) -> web.Response:
    """Wait for every token, then one completion body with usage and the breakdown.

    Raises ``DecodeRejected`` if the decode instance refused the sequence (before any byte is sent).
    """
    times = await stream.wait()
    _note_decode_start(fields, stream, clock)
    usage = api.usage(req.prompt_tokens, len(times), int(fields.get("cached_tokens", 0)))
    return web.json_response(api.full_response(req, api.TOKEN_TEXT * len(times), usage, {PRFAAS_KEY: fields}))


async def respond_sse(
    request: web.Request, req: GenRequest, stream: TokenStream, fields: dict[str, Any], clock: WallClock
) -> tuple[web.StreamResponse, bool]:
    """Stream one chunk per token as the decode steps end; returns the response and whether the
    decode failed mid-stream (reported in-band as an error event)."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    n = 0
    # Every token chunk but the last is the same bytes (OpenAI keeps id and created per completion).
    token = api.sse(api.token_chunk(req, api.TOKEN_TEXT, None))
    try:
        if req.kind == api.CHAT:
            await resp.write(api.sse(api.role_chunk(req)))
        async for chunk in stream:
            _note_decode_start(fields, stream, clock)
            k = min(len(chunk), req.max_tokens - n)
            n += k
            if n < req.max_tokens:
                await resp.write(token * k)
                continue
            last = api.token_chunk(req, api.TOKEN_TEXT, "length")
            if not req.include_usage:
                last[PRFAAS_KEY] = fields
            await resp.write(token * (k - 1) + api.sse(last))
        if req.include_usage:
            usage = api.usage(req.prompt_tokens, n, int(fields.get("cached_tokens", 0)))
            await resp.write(api.sse(api.usage_chunk(req, usage, {PRFAAS_KEY: fields})))
        await resp.write(api.SSE_DONE)
    except ConnectionResetError:
        return resp, False  # the client left; the sequence still runs to its end in the decode batch
    except DecodeRejected as exc:  # headers are out, so the error goes in-band
        await resp.write(api.sse(ApiError(400, str(exc)).body()))
        await resp.write_eof()
        return resp, True
    await resp.write_eof()
    return resp, False
