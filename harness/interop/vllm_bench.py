"""vLLM ``bench serve`` result files (``--save-result --save-detailed``): read into records, and written
from them.

The shape and units are vLLM's own (``vllm/benchmarks/serve.py``, vLLM 0.32): per-request arrays in
seconds (``ttfts``, ``itls``, ``latencies``, ``start_times``, ``queue_times``), summary figures in
milliseconds (``mean_ttft_ms``, ``p99_itl_ms``, ...). vLLM times a request from when it was *sent*
(``start_times``, ``time.perf_counter()``) and keeps the wait for a free concurrency slot apart
(``queue_times`` = sent − when the schedule released it); we time from the schedule's release, so
our scheduled time is ``start_time − queue_time`` and our TTFT is vLLM's TTFT + its queue time. Its
``itls`` are gaps between *chunks* (one per SSE message), which are gaps between tokens only when every
chunk held one token.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from harness.analysis import metrics as m
from harness.errors import InputError
from harness.records import STATUS_ERROR, STATUS_OK

FORMAT = "vllm-bench"
# Keys every generation result of vLLM bench serve carries (with or without --save-detailed).
_SUMMARY_KEYS = frozenset({"backend", "model_id", "completed", "request_throughput", "duration"})
# The per-request arrays --save-detailed keeps; reading needs them.
_DETAILED = ("input_lens", "output_lens", "ttfts", "itls", "latencies", "start_times", "errors")
_PERCENTILES = (50.0, 90.0, 95.0, 99.0)


def looks_like(obj: Any) -> bool:
    """A vLLM bench serve result: its summary keys and a TTFT figure (detailed or summary)."""
    return (
        isinstance(obj, Mapping) and obj.keys() >= _SUMMARY_KEYS and ("ttfts" in obj or "mean_ttft_ms" in obj)
    )


def _array(obj: Mapping[str, Any], key: str, n: int, where: str) -> list:
    values = obj.get(key)
    if not isinstance(values, list) or len(values) != n:
        got = f"{len(values)} entries" if isinstance(values, list) else type(values).__name__
        raise InputError(f"vLLM bench serve result: '{key}' must be a list of {n}, got {got}", where=where)
    return values


def _seconds(value: Any, key: str, i: int, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise InputError(
            f"vLLM bench serve result: {key}[{i}] = {value!r} is not a time in seconds", where=where
        )
    return float(value)


def to_records(obj: Mapping[str, Any], *, run_id: str, where: str) -> list[dict[str, Any]]:
    """One record per request of a detailed result, on a clock whose zero is the first release."""
    missing = [k for k in _DETAILED if k not in obj]
    if missing:
        raise InputError(
            f"vLLM bench serve result without per-request data (no {', '.join(missing)}): "
            "save it with --save-result --save-detailed (vLLM 0.32 writes all of these)",
            where=where,
        )
    n = len(obj["ttfts"]) if isinstance(obj["ttfts"], list) else -1
    cols = {k: _array(obj, k, n, where) for k in _DETAILED}
    queue = _array(obj, "queue_times", n, where) if "queue_times" in obj else [0.0] * n
    sent = [_seconds(s, "start_times", i, where) for i, s in enumerate(cols["start_times"])]
    waited = [_seconds(q, "queue_times", i, where) for i, q in enumerate(queue)]
    zero = min((s - q for s, q in zip(sent, waited, strict=True)), default=0.0)
    rows = []
    for i in range(n):
        start, latency = sent[i] - zero, _seconds(cols["latencies"][i], "latencies", i, where)
        error = cols["errors"][i]
        # vLLM saves no success flag: a failure has an error text, or no timing at all (latency 0).
        ok = not error and latency > 0
        itl = cols["itls"][i] if isinstance(cols["itls"][i], list) else []
        out_tokens = int(cols["output_lens"][i] or 0)
        row: dict[str, Any] = {
            "run_id": run_id, "topology": "default", "request_id": str(i), "trace_row": i,
            "scheduled_s": start - waited[i], "sent_s": start, "source": FORMAT, "phase": "measure",
            "prompt_tokens_trace": int(cols["input_lens"][i] or 0), "output_tokens_received": out_tokens,
            "status": STATUS_OK if ok else STATUS_ERROR, "end_s": start + latency,
        }  # fmt: skip
        if ok:
            ttft = _seconds(cols["ttfts"][i], "ttfts", i, where)
            gaps = [float(g) for g in itl]
            row |= {
                "first_token_s": start + ttft,
                "last_token_s": start + latency,
                "itl_s": gaps,
                # Chunk gaps are token gaps only when every chunk held one token.
                "tokens_per_chunk": out_tokens / (len(gaps) + 1) if out_tokens else None,
                "itl_unresolved": out_tokens >= 2 and len(gaps) != out_tokens - 1,
            }
        else:
            row |= {"error_class": "failed", "error_message": str(error or "no token received")[:500]}
        rows.append(row)
    return rows


def meta_of(obj: Mapping[str, Any], *, run_id: str, path: str) -> dict[str, Any]:
    """What the file says about the run, for ``meta``: model, rate, and vLLM's own summary figures."""
    rate = obj.get("request_rate")
    return {
        "run_id": run_id,
        "source": FORMAT,
        "format": "vllm bench serve --save-result --save-detailed",
        "path": path,
        "complete": True,
        "model": obj.get("model_id"),
        "rate_rps": float(rate) if isinstance(rate, int | float) and not isinstance(rate, bool) else None,
        "max_concurrency": obj.get("max_concurrency"),
        "tool_summary": {k: v for k, v in obj.items() if not isinstance(v, list)},
    }


# --- writing -------------------------------------------------------------------------------------


def _stats(values: Sequence[float], name: str) -> dict[str, float]:
    # vLLM's figures: mean, median, std and percentiles of the list, in ms; 0 for an empty list.
    v = np.asarray(values if len(values) else [0.0], dtype=float) * 1000
    out = {
        f"mean_{name}_ms": float(v.mean()),
        f"median_{name}_ms": float(np.median(v)),
        f"std_{name}_ms": float(v.std()),
    }
    for p in _PERCENTILES:
        out[f"p{int(p)}_{name}_ms"] = float(np.percentile(v, p))
    return out


def _peaks(
    start: np.ndarray, ttft: np.ndarray, itls: list[list[float]], latency: np.ndarray
) -> tuple[float, int]:
    # vLLM's max_output_tokens_per_s / max_concurrent_requests: tokens and running requests per whole
    # second since the first send, their maxima.
    if not len(start):
        return 0.0, 0
    t0 = start.min()
    seconds = int(np.ceil((start + latency).max() - t0)) + 1
    tokens, running = np.zeros(seconds), np.zeros(seconds)
    for s, f, gaps, lat in zip(start, ttft, itls, latency, strict=True):
        times = s + f + np.concatenate([[0.0], np.cumsum(gaps)])
        idx = (times - t0).astype(int)
        np.add.at(tokens, idx[(idx >= 0) & (idx < seconds)], 1)
        running[int(s - t0) : int(s + lat - t0) + 1] += 1
    return float(tokens.max()), int(running.max())


def _config(meta: Mapping[str, Any]) -> Mapping[str, Any]:
    # replay's meta: {"config": {"load": {...}, "endpoints": [...], "tokenizer": ...}}
    config = meta.get("config")
    return config if isinstance(config, Mapping) else {}


def _load(meta: Mapping[str, Any]) -> Mapping[str, Any]:
    load = _config(meta).get("load")
    return load if isinstance(load, Mapping) else {}


def _model(meta: Mapping[str, Any]) -> str | None:
    endpoints = _config(meta).get("endpoints")
    if isinstance(endpoints, list) and endpoints and isinstance(endpoints[0], Mapping):
        return endpoints[0].get("model")
    return meta.get("model")


def _per_s(count: float, duration: float) -> float:
    return count / duration if duration else 0.0


def _rate(value: Any) -> float | str:
    # vLLM writes "inf" for an unpaced run.
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else "inf"


def from_records(records: pd.DataFrame, meta: Mapping[str, Any], *, label: str) -> dict[str, Any]:
    """A vLLM bench serve ``--save-result --save-detailed`` JSON of one topology's records.

    Arrays follow vLLM's definitions (TTFT and latency from the actual send, the wait before it in
    ``queue_times``); ``itls`` are our per-token gaps; ``generated_texts`` are empty (replay keeps no
    text). Figures the records cannot give are vLLM's empty values (0 or None), as vLLM writes them.
    """
    df = m.measured(records)
    ok = m.ok_mask(df)
    sched = m.col(df, "scheduled_s")
    sent = np.where(np.isnan(m.col(df, "sent_s")), sched, m.col(df, "sent_s"))
    ttft = np.where(ok, m.col(df, "first_token_s") - sent, 0.0)
    latency = np.where(ok, m.col(df, "last_token_s") - sent, 0.0)
    out_lens = np.where(ok, np.nan_to_num(m.col(df, "output_tokens_received")), 0).astype(int)
    prompt = m.col(df, "prompt_tokens_server")
    prompt = np.where(np.isnan(prompt), m.col(df, "prompt_tokens_trace"), prompt).astype(int)
    itls = [list(map(float, v)) if k and v is not None else [] for v, k in zip(df["itl_s"], ok, strict=True)]
    errors = [
        "" if k else f"{c or 'error'}: {msg or ''}".strip()
        for k, c, msg in zip(ok, df["error_class"], df["error_message"], strict=True)
    ]
    duration = m.duration(df)
    dur = duration if math.isfinite(duration) and duration > 0 else 0.0
    completed, total_in, total_out = int(ok.sum()), int(prompt[ok].sum()), int(out_lens.sum())
    n = out_lens[ok]
    # vLLM's TPOT: (latency − TTFT) / (output tokens − 1), requests with more than one token.
    tpots = ((latency - ttft)[ok][n > 1] / (n[n > 1] - 1)).tolist()
    peak_tokens, peak_running = _peaks(
        sent[ok], ttft[ok], [g for g, k in zip(itls, ok, strict=True) if k], latency[ok]
    )
    load, started = _load(meta), meta.get("started_at")
    result: dict[str, Any] = {
        "date": time.strftime(
            "%Y%m%d-%H%M%S", time.localtime(started if isinstance(started, int | float) else None)
        ),
        "endpoint_type": "openai",
        "backend": "openai",
        "label": label,
        "model_id": _model(meta),
        "tokenizer_id": _config(meta).get("tokenizer") or _model(meta),
        "num_prompts": len(df),
        "request_rate": _rate(load.get("rate_rps") or meta.get("rate_rps")),
        # vLLM's burstiness is the gamma shape, 1/CV²: 1 for Poisson; none for a trace's own timestamps.
        "burstiness": {"poisson": 1.0, "gamma": 1 / float(load.get("gamma_cv") or 1) ** 2}.get(
            load.get("arrival")
        ),
        "max_concurrency": load.get("concurrency"),
        "duration": dur,
        "completed": completed,
        "failed": len(df) - completed,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": _per_s(completed, dur),
        "request_goodput": None,
        "output_throughput": _per_s(total_out, dur),
        "total_token_throughput": _per_s(total_in + total_out, dur),
        "input_lens": prompt.tolist(),
        "output_lens": out_lens.tolist(),
        "ttfts": ttft.tolist(),
        "itls": itls,
        "latencies": latency.tolist(),
        "start_times": sent.tolist(),
        "queue_times": (sent - sched).tolist(),
        "generated_texts": [""] * len(df),
        "errors": errors,
        "max_output_tokens_per_s": peak_tokens,
        "max_concurrent_requests": peak_running,
        "rtfx": 0.0,
    }
    result |= _stats(ttft[ok].tolist(), "ttft") | _stats(tpots, "tpot")
    result |= _stats([gap for gaps in itls for gap in gaps], "itl")
    result |= _stats(latency[ok].tolist(), "e2el")
    return result
