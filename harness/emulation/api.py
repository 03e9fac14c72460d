"""The OpenAI-compatible request and response shapes, as pure functions (no I/O).

``parse_request`` turns a JSON body into a validated ``GenRequest`` or raises ``ApiError`` carrying the
HTTP status and an OpenAI-style error body. The ``*_chunk`` and ``*_response`` builders produce the
exact JSON objects of ``/v1/completions`` and ``/v1/chat/completions`` (streamed and not).

The emulator has no model: it never emits EOS, so a request always produces ``max_tokens`` tokens
(``ignore_eos`` and ``min_tokens`` are accepted and validated, and cannot change that). Each token is
one word, so a client counting words or SSE chunks counts tokens.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.emulation.tokens import block_ids, prompt_words

COMPLETIONS, CHAT = "completions", "chat"
TOKEN_TEXT = " tok"
DEFAULT_MAX_TOKENS = 16


class ApiError(Exception):
    """An HTTP error with an OpenAI-style body: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.retry_after_s = retry_after_s

    @property
    def error_type(self) -> str:
        return {404: "not_found_error", 429: "rate_limit_error"}.get(
            self.status, "invalid_request_error" if self.status < 500 else "server_error"
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}


@dataclass(frozen=True, slots=True, kw_only=True)
class GenRequest:
    """A validated generation request."""

    kind: str  # COMPLETIONS or CHAT
    model: str
    prompt_tokens: int
    block_ids: tuple[int, ...] = field(repr=False)
    max_tokens: int
    min_tokens: int = 0
    ignore_eos: bool = False
    stream: bool = False
    include_usage: bool = False
    kv_transfer_params: Mapping[str, Any] | None = None
    request_id: str = ""


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def _int_field(body: Mapping[str, Any], name: str, default: int | None, *, minimum: int) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"'{name}' must be an integer, got {value!r}", name)
    if value < minimum:
        raise _bad(f"'{name}' must be >= {minimum}, got {value}", name)
    return value


def _bool_field(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(f"'{name}' must be a boolean, got {value!r}", name)
    return value


def _prompt_words(kind: str, body: Mapping[str, Any]) -> list[str]:
    if kind == CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _bad("'messages' must be a non-empty list", "messages")
        words: list[str] = []
        for i, msg in enumerate(messages):
            if not isinstance(msg, Mapping) or not isinstance(msg.get("role"), str):
                raise _bad(f"messages[{i}] must be an object with a string 'role'", "messages")
            content = msg.get("content")
            if isinstance(content, list):  # content parts: only text parts carry tokens here
                parts = [p.get("text") for p in content if isinstance(p, Mapping) and p.get("type") == "text"]
                if any(not isinstance(t, str) for t in parts):
                    raise _bad(f"messages[{i}].content has a text part without a string 'text'", "messages")
                content = " ".join(parts)
            if content is None:
                content = ""
            if not isinstance(content, str):
                raise _bad(f"messages[{i}].content must be a string or a list of parts", "messages")
            words.extend(prompt_words(content))
        return words
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return prompt_words(prompt)
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        return [str(t) for t in prompt]  # token ids: one id, one token
    if isinstance(prompt, list) and len(prompt) > 1:
        raise _bad("batched prompts are not supported: send one prompt per request", "prompt")
    raise _bad("'prompt' must be a string or a list of token ids", "prompt")


def parse_request(
    kind: str,
    body: Any,
    *,
    models: tuple[str, ...],
    context_tokens: int,
    block_tokens: int,
    request_id: str | None = None,
) -> GenRequest:
    """Validate one request body; raises ``ApiError`` (400 bad field, 404 unknown model, 400 too long)."""
    if not isinstance(body, Mapping):
        raise _bad("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required and must be a string", "model")
    if model not in models:
        raise ApiError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")
    if _int_field(body, "n", 1, minimum=1) != 1:
        raise _bad("only n = 1 is supported", "n")
    name = (
        "max_completion_tokens"
        if kind == CHAT and body.get("max_completion_tokens") is not None
        else "max_tokens"
    )
    max_tokens = _int_field(body, name, DEFAULT_MAX_TOKENS, minimum=1)
    min_tokens = _int_field(body, "min_tokens", 0, minimum=0)
    assert max_tokens is not None and min_tokens is not None
    if min_tokens > max_tokens:
        raise _bad(f"'min_tokens' ({min_tokens}) must be <= max_tokens ({max_tokens})", "min_tokens")
    stream = _bool_field(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, Mapping):
        raise _bad("'stream_options' must be an object", "stream_options")
    include_usage = bool(options and options.get("include_usage"))
    if options is not None and not stream:
        raise _bad("'stream_options' is only allowed when 'stream' is true", "stream_options")
    kv_params = body.get("kv_transfer_params")
    if kv_params is not None and not isinstance(kv_params, Mapping):
        raise _bad("'kv_transfer_params' must be an object", "kv_transfer_params")
    words = _prompt_words(kind, body)
    if not words:
        raise _bad("the prompt is empty", "messages" if kind == CHAT else "prompt")
    if len(words) + max_tokens > context_tokens:
        raise _bad(
            f"This model's maximum context length is {context_tokens} tokens. However, you requested "
            f"{len(words) + max_tokens} tokens ({len(words)} in the prompt, {max_tokens} for the completion).",
            "messages" if kind == CHAT else "prompt",
        )
    return GenRequest(
        kind=kind,
        model=model,
        prompt_tokens=len(words),
        block_ids=tuple(block_ids(words, block_tokens)),
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        ignore_eos=_bool_field(body, "ignore_eos"),
        stream=stream,
        include_usage=include_usage,
        kv_transfer_params=kv_params,
        request_id=request_id or uuid.uuid4().hex,
    )


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def _envelope(req: GenRequest, *, chunk: bool) -> dict[str, Any]:
    if req.kind == CHAT:
        obj, prefix = ("chat.completion.chunk" if chunk else "chat.completion"), "chatcmpl-"
    else:
        obj, prefix = "text_completion", "cmpl-"
    return {"id": prefix + req.request_id, "object": obj, "created": int(time.time()), "model": req.model}


def token_chunk(req: GenRequest, text: str, finish_reason: str | None) -> dict[str, Any]:
    """One streamed chunk carrying ``text`` (``finish_reason`` set on the last one)."""
    if req.kind == CHAT:
        choice = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": finish_reason}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return {**_envelope(req, chunk=True), "choices": [choice]}


def role_chunk(req: GenRequest) -> dict[str, Any]:
    """The chat stream's first chunk: the assistant role, no content (not a token)."""
    choice = {
        "index": 0,
        "delta": {"role": "assistant", "content": ""},
        "logprobs": None,
        "finish_reason": None,
    }
    return {**_envelope(req, chunk=True), "choices": [choice]}


def usage_chunk(req: GenRequest, usage_obj: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """The final streamed chunk: no choices, the usage, and ``extra`` fields (breakdown, kv params)."""
    return {**_envelope(req, chunk=True), "choices": [], "usage": dict(usage_obj), **extra}


def full_response(
    req: GenRequest, text: str, usage_obj: Mapping[str, Any], extra: Mapping[str, Any]
) -> dict[str, Any]:
    """A non-streamed response body."""
    if req.kind == CHAT:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": "length",
        }
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
    return {**_envelope(req, chunk=False), "choices": [choice], "usage": dict(usage_obj), **extra}


def sse(obj: Mapping[str, Any]) -> bytes:
    """One server-sent event carrying ``obj`` as JSON."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
