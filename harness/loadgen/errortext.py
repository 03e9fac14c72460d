"""The server's own words from an error response, short and without credentials, for records and summaries."""

from __future__ import annotations

import json
import re

_LIMIT = 300
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def server_message(raw: bytes | str, limit: int = _LIMIT) -> str:
    """The message in an error body: OpenAI's ``error.message``, vLLM's ``message``, FastAPI's ``detail``;
    else the body itself. Whitespace collapsed, cut to ``limit`` characters ("" for an empty body)."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        error = obj.get("error")
        for found in (
            error.get("message") if isinstance(error, dict) else error,
            obj.get("message"),
            obj.get("detail"),
        ):
            if isinstance(found, str) and found.strip():
                text = found
                break
    return " ".join(text.split())[:limit]


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with each secret (an API key) and every ``user:password@`` of a URL replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return _URL_CREDENTIALS.sub("***@", text)
