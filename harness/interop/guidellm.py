"""GuideLLM's benchmarks JSON (``guidellm run --output kind=json``; report version 2, GuideLLM 0.8):
each benchmark's requests read into records.

Per request GuideLLM keeps raw epoch-second timings under ``info.timings``: ``targeted_start`` (when
the schedule wanted it sent: our scheduled time), ``request_start`` (sent), ``first_token_iteration``,
``last_token_iteration`` and ``request_end``; and ``prompt_tokens`` / ``output_tokens``. It keeps no
per-token timestamps, only how many stream iterations carried tokens, so ITL is unresolved (missing)
for its requests; TPOT is (last − first)/(output tokens − 1) as ours. GuideLLM's own
``inter_token_latency_ms`` is that same quantity, and its ``time_per_output_token_ms`` is the whole
request latency / output tokens (TTFT included), so ours and theirs differ there by name, not by data.
Each benchmark of a sweep becomes a topology ``default@<rate>rps`` (a rate strategy) or
``<strategy>-<k>``; a file with one benchmark gives ``default``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from harness.errors import InputError
from harness.records import STATUS_ERROR, STATUS_OK

FORMAT = "guidellm"
_KINDS = ("successful", "errored", "incomplete")  # GuideLLM's lists of requests, by outcome
_SAME_CLOCK_S = 86_400.0  # a target a day away from its send is on another clock


def looks_like(obj: Any) -> bool:
    """A GuideLLM report: ``benchmarks``, each with ``requests.successful``."""
    benchmarks = obj.get("benchmarks") if isinstance(obj, Mapping) else None
    return (
        isinstance(benchmarks, list)
        and bool(benchmarks)
        and all(isinstance(b, Mapping) and isinstance(b.get("requests"), Mapping) for b in benchmarks)
        and "successful" in benchmarks[0]["requests"]
    )


def _label(bench: Mapping[str, Any], k: int, n: int) -> str:
    if n == 1:
        return "default"
    strategy = (bench.get("config") or {}).get("strategy") or {}
    rate = strategy.get("rate")
    if isinstance(rate, int | float) and not isinstance(rate, bool) and math.isfinite(rate):
        return f"default@{rate:g}rps"
    return f"{strategy.get('type_', 'benchmark')}-{k}"


def _time(timings: Mapping[str, Any], key: str, where: str) -> float | None:
    v = timings.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise InputError(f"GuideLLM report: timings.{key} = {v!r} is not epoch seconds", where=where)
    return float(v)


def _requests(obj: Mapping[str, Any], where: str) -> list[tuple[str, str, Mapping[str, Any]]]:
    benchmarks = obj["benchmarks"]
    out = []
    for k, bench in enumerate(benchmarks):
        for key in _KINDS:
            reqs = bench["requests"].get(key) or []
            if not isinstance(reqs, list) or not all(isinstance(r, Mapping) for r in reqs):
                raise InputError(
                    f"GuideLLM report: benchmarks[{k}].requests.{key} must be a list of objects", where=where
                )
            out += [(_label(bench, k, len(benchmarks)), key, r) for r in reqs]
    return out


def _timings(requests: list[tuple[str, str, Mapping[str, Any]]]) -> list[Mapping[str, Any]]:
    out = []
    for _, _, r in requests:
        info = r.get("info") if isinstance(r.get("info"), Mapping) else {}
        out.append(info.get("timings") if isinstance(info.get("timings"), Mapping) else {})
    return out


def _targets_usable(timings: list[Mapping[str, Any]], where: str) -> bool:
    """Whether every ``targeted_start`` is on the epoch clock of ``request_start``.

    GuideLLM 0.8.1's Poisson strategy can hand out targets counted from its -1.0 placeholder instead of
    the start time (workers read the offset before the main process sets it): such a file has targets
    near 0, days away from the sends, and then none of them can be trusted."""
    for t in timings:
        target, sent = _time(t, "targeted_start", where), _time(t, "request_start", where)
        if target is not None and sent is not None and abs(sent - target) > _SAME_CLOCK_S:
            return False
    return True


def to_records(obj: Mapping[str, Any], *, run_id: str, where: str) -> list[dict[str, Any]]:
    """One record per request of every benchmark; seconds from the earliest release (targeted start,
    or the send when the targets are unusable: then the send lag is missing)."""
    requests = _requests(obj, where)
    timings = _timings(requests)
    targets = _targets_usable(timings, where)
    sends = [_time(t, "request_start", where) for t in timings]
    starts = [
        (_time(t, "targeted_start", where) if targets else None) or s
        for t, s in zip(timings, sends, strict=True)
    ]
    known = [s for s in starts if s is not None]
    if not known:
        raise InputError(
            "GuideLLM report: no request has info.timings.targeted_start or request_start", where=where
        )
    zero = min(known)
    rel = lambda v: None if v is None else v - zero  # noqa: E731
    rows = []
    for i, ((label, kind, r), t, sched) in enumerate(zip(requests, timings, starts, strict=True)):
        if sched is None:
            raise InputError(
                f"GuideLLM report: request {r.get('request_id', i)} has no start time", where=where
            )
        first, last = _time(t, "first_token_iteration", where), _time(t, "last_token_iteration", where)
        out_tokens = int(r.get("output_tokens") or 0)
        iterations = t.get("token_iterations")
        ok = kind == "successful" and first is not None and last is not None
        end = _time(t, "request_end", where) or _time(t, "resolve_end", where)
        row: dict[str, Any] = {
            "run_id": run_id, "topology": label, "request_id": str(r.get("request_id") or i), "trace_row": i,
            "scheduled_s": sched - zero, "source": FORMAT,
            "sent_s": rel(sends[i]) if targets else None,
            "prompt_tokens_trace": int(r.get("prompt_tokens") or 0), "output_tokens_received": out_tokens if ok else 0,
            "cached_tokens": r.get("cached_tokens"), "status": STATUS_OK if ok else STATUS_ERROR, "end_s": rel(end),
        }  # fmt: skip
        if ok:
            row |= {
                "first_token_s": first - zero, "last_token_s": last - zero, "itl_s": [],
                # No per-token times: only how many iterations carried tokens.
                "itl_unresolved": out_tokens >= 2,
                "tokens_per_chunk": out_tokens / iterations if isinstance(iterations, int) and iterations else None,
            }  # fmt: skip
        else:
            info = r.get("info") if isinstance(r.get("info"), Mapping) else {}
            message = str(info.get("error") or ("no token recorded" if kind == "successful" else kind))
            row |= {
                "error_class": message.split("(", 1)[0].strip()[:80] or "error",
                "error_message": message[:500],
            }
        rows.append(row)
    return rows


def meta_of(obj: Mapping[str, Any], *, run_id: str, path: str) -> dict[str, Any]:
    """Model, version and each benchmark's strategy, from the report's own metadata and config."""
    first = obj["benchmarks"][0].get("config") or {}
    backend = first.get("backend") if isinstance(first.get("backend"), Mapping) else {}
    rates = [((b.get("config") or {}).get("strategy") or {}).get("rate") for b in obj["benchmarks"]]
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    usable = _targets_usable(_timings(_requests(obj, path)), path)
    notes = (
        []
        if usable
        else [
            f"{path}: GuideLLM's targeted_start is not on the clock of its sends (GuideLLM 0.8.1's Poisson "
            "strategy can count targets from its -1.0 placeholder); TTFT and E2E count from the send, send lag missing"
        ]
    )
    return {
        "run_id": run_id, "source": FORMAT, "format": "GuideLLM benchmarks.json", "path": path, "complete": True,
        "model": backend.get("model"), "tool_version": meta.get("guidellm_version"),
        "rate_rps": rates[0] if len(rates) == 1 and isinstance(rates[0], int | float) else None,
        "notes": notes,
    }  # fmt: skip
