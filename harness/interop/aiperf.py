"""AIPerf's per-request export, ``profile_export.jsonl``: one JSON object a line, read into records.

Format (ai-dynamo/aiperf, docs/tutorials/working-with-profile-exports.md; ``MetricRecordInfo`` in
AIPerf 0.13): ``metadata`` with epoch nanoseconds ``credit_issued_ns`` (when the rate limiter released
the request: our scheduled time; absent for fixed schedules), ``request_start_ns`` (sent) and
``request_end_ns``, ``benchmark_phase`` and ``x_request_id``;
``metrics``, each ``{"value": ..., "unit": ...}`` (``time_to_first_token`` and ``request_latency`` in
ms, ``inter_chunk_latency`` a list of ms, ``input_sequence_length`` / ``output_sequence_length`` in
tokens; its own tokenizer's count of the text unless ``--use-server-token-count``), the server's
``usage_prompt_tokens`` / ``usage_completion_tokens`` / ``usage_prompt_cache_read_tokens`` when it reports
usage; ``error`` (``code``, ``type``, ``message``) or null. Without a credit time the send is the
release and the send lag is missing (not 0).
Its per-chunk gaps are per-token gaps only when every chunk held one token. Output tokens are the
server's count when it gave one: a client tokenizer that is not the model's re-counts the text
differently (16 for 8 generated tokens in tests/data/aiperf_fake_server), and the chunk gaps then
seem not to resolve tokens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from harness.errors import InputError
from harness.records import STATUS_ERROR, STATUS_OK

FORMAT = "aiperf"
_TO_SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0}


def looks_like(obj: Any) -> bool:
    """JSON Lines whose rows carry AIPerf's ``metadata.request_start_ns`` and ``metrics``."""
    return (
        isinstance(obj, list)
        and bool(obj)
        and all(
            isinstance(r, Mapping) and isinstance(r.get("metadata"), Mapping) and "metrics" in r for r in obj
        )
        and "request_start_ns" in obj[0]["metadata"]
    )


def _value(metrics: Mapping[str, Any], name: str, line: int, where: str, *, time: bool) -> Any:
    m = metrics.get(name)
    if m is None:
        return None
    if not isinstance(m, Mapping) or "value" not in m:
        raise InputError(f"line {line}: metrics.{name} must be {{'value', 'unit'}}", where=where)
    value = m["value"]
    if not time:
        return value
    scale = _TO_SECONDS.get(str(m.get("unit")))
    if scale is None:
        raise InputError(f"line {line}: metrics.{name} has unit {m.get('unit')!r}, not a time", where=where)
    if isinstance(value, list):
        return [float(v) * scale for v in value]
    return float(value) * scale


# The server's count first, then AIPerf's own (its tokenizer's, or the server's under
# --use-server-token-count).
_OUTPUT_COUNTS = ("usage_completion_tokens", "output_sequence_length", "output_token_count")


def _first(metrics: Mapping[str, Any], names: tuple[str, ...], line: int, where: str) -> Any:
    for name in names:
        value = _value(metrics, name, line, where, time=False)
        if value is not None:
            return value
    return None


def _ns(meta: Mapping[str, Any], key: str, line: int, where: str) -> int | float | None:
    v = meta.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise InputError(f"line {line}: metadata.{key} = {v!r} is not epoch nanoseconds", where=where)
    return v  # kept as an int: epoch ns as a float lose ~256 ns


def to_records(rows: list[Mapping[str, Any]], *, run_id: str, where: str) -> list[dict[str, Any]]:
    """One record per line; seconds from the earliest release (credit) or send."""
    starts = [_ns(r["metadata"], "request_start_ns", i, where) for i, r in enumerate(rows, 1)]
    if any(s is None for s in starts):
        line = starts.index(None) + 1
        raise InputError(f"line {line}: metadata.request_start_ns is missing", where=where)
    issued = [_ns(r["metadata"], "credit_issued_ns", i, where) for i, r in enumerate(rows, 1)]
    zero = min(s if c is None else min(c, s) for s, c in zip(starts, issued, strict=True))
    out = []
    for line, (row, start_ns, issued_ns) in enumerate(zip(rows, starts, issued, strict=True), 1):
        meta, metrics, error = row["metadata"], row.get("metrics") or {}, row.get("error")
        start = (start_ns - zero) * 1e-9
        end_ns = _ns(meta, "request_end_ns", line, where)
        rec: dict[str, Any] = {
            "run_id": run_id, "topology": "default", "request_id": str(meta.get("x_request_id") or line - 1),
            "trace_row": line - 1, "source": FORMAT,
            "scheduled_s": start if issued_ns is None else (issued_ns - zero) * 1e-9,
            "sent_s": None if issued_ns is None else start,
            "phase": "warmup" if meta.get("benchmark_phase") == "warmup" else "measure",
            "end_s": None if end_ns is None else (end_ns - zero) * 1e-9,
        }  # fmt: skip
        rec["prompt_tokens_trace"] = int(
            _first(metrics, ("input_sequence_length", "error_isl"), line, where) or 0
        )
        for field, name in (("prompt_tokens_server", "usage_prompt_tokens"),
                            ("cached_tokens", "usage_prompt_cache_read_tokens")):  # fmt: skip
            value = _value(metrics, name, line, where, time=False)
            if value is not None:
                rec[field] = int(value)
        ttft = _value(metrics, "time_to_first_token", line, where, time=True)
        latency = _value(metrics, "request_latency", line, where, time=True)
        if error or ttft is None or latency is None:
            err = error if isinstance(error, Mapping) else {}
            rec |= {
                "status": STATUS_ERROR,
                "error_class": str(err.get("type") or "no_tokens"),
                "error_message": str(err.get("message") or "no time to first token recorded")[:500],
            }
            out.append(rec)
            continue
        n = int(_first(metrics, _OUTPUT_COUNTS, line, where) or 0)
        gaps = _value(metrics, "inter_chunk_latency", line, where, time=True) or []
        rec |= {
            "status": STATUS_OK, "first_token_s": start + ttft, "last_token_s": start + latency,
            "output_tokens_received": n, "itl_s": gaps,
            "tokens_per_chunk": n / (len(gaps) + 1) if n else None,
            "itl_unresolved": n >= 2 and len(gaps) != n - 1,
        }  # fmt: skip
        out.append(rec)
    return out


def meta_of(rows: list[Mapping[str, Any]], *, run_id: str, path: str) -> dict[str, Any]:
    """The little a per-request export says about its run."""
    return {"run_id": run_id, "source": FORMAT, "format": "AIPerf profile_export.jsonl", "path": path,
            "complete": True, "requests": len(rows)}  # fmt: skip
