"""Server-sent-event lines of an OpenAI-compatible stream, classified cheaply.

Most lines of a stream are token chunks; deciding "generated token or not" must not cost a
``json.loads`` per token. Inside a JSON string every ``"`` is escaped, so the byte pattern
``"text":"`` (or ``"content":"``) can only be a key; the byte after it says whether the text is empty.
Lines that carry the final usage (``"choices": []``), errors, routing (``PRFAAS_KEY``) or
``kv_transfer_params`` are parsed fully; a running ``usage.completion_tokens`` beside choices is read
off the bytes.

Server-reported breakdown (the wire format the emulated endpoints send, see docs/replay.md): any chunk —
by convention the final usage chunk, the one with ``"choices": []`` — may carry a JSON object under the
top-level key ``"prfaas"`` with the fields of ``PRFAAS_FIELDS``. Absolute times are Unix epoch seconds
(the server's ``time.time()``); ``prefill_queue_s`` is a duration.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from json.decoder import scanstring
from typing import Any

PRFAAS_KEY = "prfaas"
# field -> type on the wire; every field is optional, unknown fields are ignored.
PRFAAS_FIELDS: dict[str, type] = {
    "route": str,  # "local" | "remote" | "colocated" | ...
    "prefill_site": str,
    "prefill_instance": str,
    "decode_site": str,
    "decode_instance": str,
    "cached_tokens": int,  # prefix tokens served from a cache
    "kv_bytes": int,  # KVCache bytes moved from prefill to decode
    "kv_transfer_start_s": float,  # epoch seconds
    "kv_transfer_end_s": float,  # epoch seconds
    "prefill_queue_s": float,  # seconds waited before prefill started (a duration)
    "prefill_start_s": float,  # epoch seconds
    "prefill_end_s": float,  # epoch seconds
    "decode_start_s": float,  # epoch seconds
}
EPOCH_FIELDS = (
    "kv_transfer_start_s",
    "kv_transfer_end_s",
    "prefill_start_s",
    "prefill_end_s",
    "decode_start_s",
)

# Line kinds
CONTENT, EMPTY, DONE, FULL, SKIP, BAD = range(6)

# A key can be matched on raw bytes: inside a JSON string every quote is escaped, so ``t":`` never
# occurs there. Lines that carry errors, routing, kv_transfer_params or a usage-only chunk
# (``"choices": []``) need a parse; a running ``completion_tokens`` beside choices (vLLM's
# ``continuous_usage_stats``) is read off the bytes, so a counted stream costs no parse per token.
# (The leading quote is factored out: the same matches, found a quarter faster.)
_KEYS = re.compile(rb'"(?:prfaas"|error"|kv_transfer_params"|choices": *\[\]|completion_tokens": *(\d+))')
_NEEDS_PARSE = re.compile(rb'"(?:prfaas|error|kv_transfer_params)"|"choices": *\[\]')
# the first byte of the text value: '"' means empty; anything else (after the opening quote) is text
_TEXT_START = re.compile(rb'"(?:text|content)": *"')
_TEXT = re.compile(rb'"(?:text|content)": *(")?(.)')
# An empty text is still a generated token (a partial UTF-8 byte, say) unless the chunk is chat's
# role chunk or a bare end-of-stream chunk with a finish reason.
_NOT_A_TOKEN = re.compile(rb'"role":|"finish_reason": *"')


def classify(line: bytes) -> tuple[int, bytes, int]:
    """Kind of one SSE line (without its newline), its data payload, and the running
    ``usage.completion_tokens`` the chunk carries (-1 when it carries none).

    CONTENT: a chunk that carries a generated token (``is_token``), or any chunk with choices and a
    running count (the count says how many tokens it holds; its text is not looked at); EMPTY: a
    chunk without a token (role-only, end, no text); DONE: ``[DONE]``; FULL: parse the payload with
    ``parse_chunk``; SKIP: blank line, comment, ``event:``/``id:``/``retry:`` field; BAD: not SSE.
    """
    if line.startswith(b"data: {") and line.endswith(b"}"):  # the common form: no \r, one space, an object
        payload = line[6:]
    else:
        payload = _payload(line)
        if not isinstance(payload, bytes):
            return payload
    k = _KEYS.search(payload)
    if k is not None:
        count, end = k.group(1), k.end()
        # after the count, a tail of a few bytes (vLLM's "}}") cannot hold a key
        if count is None or (len(payload) - end > 4 and _NEEDS_PARSE.search(payload, end)):
            return FULL, payload, -1
        return CONTENT, payload, int(count)
    return CONTENT if is_token(payload) else EMPTY, payload, -1


def _payload(line: bytes) -> bytes | tuple[int, bytes, int]:
    """The JSON payload of a line in any other form than ``data: {...}``, or what ``classify`` says
    of a line that has none."""
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line.startswith(b"data:"):
        if not line or line.startswith((b":", b"event:", b"id:", b"retry:")):
            return SKIP, b"", -1
        return BAD, line, -1
    payload = line[6:] if line[5:6] == b" " else line[5:]
    if payload[:1] != b"{" or payload[-1:] != b"}":
        payload = payload.strip(b" ")
        if payload == b"[DONE]":
            return DONE, payload, -1
        if payload[:1] != b"{" or payload[-1:] != b"}":
            return BAD, payload, -1
    return payload


def is_token(payload: bytes) -> bool:
    """Whether a chunk's text says it holds a generated token: a text string that is non-empty, or
    empty in a chunk that is neither chat's role chunk nor an end chunk with a ``finish_reason``."""
    m = _TEXT.search(payload)
    if m is None or m.group(1) is None:  # no text, or a null one
        return False
    # a string value whose next byte does not close it at once is text
    return m.group(2) != b'"' or not _NOT_A_TOKEN.search(payload)


@dataclass(slots=True)
class Chunk:
    """What a fully parsed chunk says. ``completion_tokens`` is the running count a chunk with choices
    carries (continuous usage stats), -1 when none."""

    has_token: bool = False
    completion_tokens: int = -1
    usage: dict[str, Any] | None = None
    prfaas: dict[str, Any] | None = None
    kv_transfer_params: dict[str, Any] | None = None
    error: str | None = None


def _is_token(choice: Any) -> bool:
    # classify's rule on parsed JSON: a text string, non-empty or not a role/end chunk.
    if not isinstance(choice, dict):
        return False
    text = choice.get("text")
    delta = choice.get("delta")
    if text is None and isinstance(delta, dict):
        if "role" in delta:
            return bool(delta.get("content"))
        text = delta.get("content")
    if not isinstance(text, str):
        return False
    return bool(text) or not isinstance(choice.get("finish_reason"), str)


def chunk_text(payload: bytes) -> str:
    """The generated text a chunk carries ('' for none): the first text or content string, read where
    ``classify`` looks for it, decoded without parsing the whole chunk (session mode reads every one)."""
    m = _TEXT_START.search(payload)
    if m is None:
        return ""
    try:
        return scanstring(payload[m.end() :].decode("utf-8", "replace"), 0)[0]
    except ValueError:
        return ""


def parse_chunk(payload: bytes) -> Chunk:
    """Parse one JSON chunk; raises ValueError when it is not a JSON object."""
    obj = json.loads(payload)
    if not isinstance(obj, dict):
        raise ValueError("SSE data is not a JSON object")
    chunk = Chunk()
    choices = obj.get("choices") or ()
    chunk.has_token = any(_is_token(c) for c in choices)
    usage = obj.get("usage")
    if isinstance(usage, dict):
        chunk.usage = usage
        count = usage.get("completion_tokens")
        if choices and isinstance(count, int) and not isinstance(count, bool) and count >= 0:
            chunk.completion_tokens = count
    extra = obj.get(PRFAAS_KEY)
    if isinstance(extra, dict):
        chunk.prfaas = extra
    kv = obj.get("kv_transfer_params")
    if isinstance(kv, dict):
        chunk.kv_transfer_params = kv
    err = obj.get("error")
    if err:
        chunk.error = str(err.get("message", err) if isinstance(err, dict) else err)[:300]
    return chunk


def prfaas_fields(obj: dict[str, Any], wall_offset_s: float) -> dict[str, Any]:
    """The breakdown fields of a ``prfaas`` object, typed, epoch times moved onto the run clock.

    ``wall_offset_s`` is the epoch time of run-clock zero. Fields of the wrong type are dropped.
    """
    out: dict[str, Any] = {}
    for name, typ in PRFAAS_FIELDS.items():
        value = obj.get(name)
        if value is None or isinstance(value, bool):
            continue
        if typ is float and isinstance(value, int | float):
            value = float(value)
        elif not isinstance(value, typ):
            continue
        out[name] = value - wall_offset_s if name in EPOCH_FIELDS else value
    return out
