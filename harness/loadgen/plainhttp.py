"""Short synchronous HTTP exchanges outside a run's event loop: a cache reset, a ``/metrics``
scrape, a ``/tokenize`` probe. One place decides what a failure looks like, so every caller reads
the same (status, text) pair instead of catching urllib's exceptions its own way."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping

MAX_BYTES = 1 << 23  # a /metrics page of a large fleet's engine stays well under this


def fetch_text(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 5.0,
) -> tuple[int, str]:
    """(HTTP status, body as text) of one request. An error status comes back as itself with no
    body; no answer at all (refused, timed out, a bad URL) is status 0 with the reason as text."""
    data = body if body is not None else (b"" if method == "POST" else None)
    try:
        req = urllib.request.Request(url, method=method, headers=dict(headers or {}), data=data)
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, resp.read(MAX_BYTES).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return 0, str(getattr(exc, "reason", exc)) or type(exc).__name__
