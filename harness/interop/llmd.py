"""llm-d's standardized benchmark report, version 0.2.1 (llm-d-benchmark, ``benchmark_report``).

The report holds aggregates, not requests: ``results.request_performance.aggregate`` with request
counts, length distributions, latencies (TTFT, TPOT, ITL, normalized TPOT, request latency) and
throughputs, each a ``Statistics`` object (``units`` and ``mean`` required, percentiles optional).
Units follow the categories llm-d's pydantic model enforces: latencies ``s``, per-token latencies
``s/token``, token rates ``tokens/s``, the request rate ``queries/s``, lengths ``count``. Our
definitions apply (TTFT from the scheduled send, ITL per token); a statistic with no value is left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from harness import __version__
from harness.analysis import metrics as m
from harness.jsonsafe import json_safe

VERSION = "0.2.1"
# llm-d's percentile keys: p0p1 is the 0.1th percentile, p99p9 the 99.9th.
_QUANTILES = (("p0p1", 0.1), ("p1", 1), ("p5", 5), ("p10", 10), ("p25", 25), ("p50", 50), ("p75", 75),
              ("p90", 90), ("p95", 95), ("p99", 99), ("p99p9", 99.9))  # fmt: skip


def statistics(values: np.ndarray, units: str) -> dict[str, Any] | None:
    """A ``Statistics`` object of the finite values; None when there are none (the field is omitted)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    out: dict[str, Any] = {"units": units, "mean": float(v.mean()), "stddev": float(v.std())}
    out |= {"min": float(v.min()), "max": float(v.max())}
    out |= {key: float(np.percentile(v, q)) for key, q in _QUANTILES}
    return out


def _rate(value: float, units: str) -> dict[str, Any] | None:
    return {"units": units, "mean": float(value)} if math.isfinite(value) else None


def _iso(t: Any) -> str | None:
    return datetime.fromtimestamp(t, tz=UTC).isoformat() if isinstance(t, int | float) else None


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _load(meta: Mapping[str, Any], df: pd.DataFrame, prompt: np.ndarray) -> dict[str, Any]:
    config = meta.get("config") if isinstance(meta.get("config"), Mapping) else {}
    load = config.get("load") if isinstance(config.get("load"), Mapping) else {}
    rate = load.get("rate_rps") or meta.get("rate_rps")
    # 0 is the records' "not known" for a requested length (other tools' files do not say it).
    out_len = m.col(df, "output_tokens_requested")
    out_len = out_len[out_len > 0]
    standardized = {
        "tool": "prfaas-bench",
        "tool_version": __version__,
        # Our prompts are synthesised from the trace's lengths and prefix ids: sampled from a trace.
        "source": "sampled",
        "input_seq_len": {
            "distribution": "other",
            "value": float(np.nanmean(prompt)) if len(prompt) else 0.0,
        },
        "output_seq_len": (
            {"distribution": "other", "value": float(np.nanmean(out_len))}
            if np.isfinite(out_len).any()
            else None
        ),
        "rate_qps": float(rate) if isinstance(rate, int | float) and 0 < rate < math.inf else None,
        "concurrency": load.get("concurrency"),
    }
    return {
        "metadata": {"schema_version": "0.0.1", "description": f"prfaas-bench {meta.get('source', '')} run"},
        "standardized": _drop_none(standardized),
        "native": {"config": json_safe(dict(config)) if config else None},
    }


def from_records(records: pd.DataFrame, meta: Mapping[str, Any], *, label: str) -> dict[str, Any]:
    """An llm-d benchmark report (v0.2.1) of one topology's records (``label`` names it in the run)."""
    df = m.measured(records)
    ok = m.ok_mask(df)
    good = df[ok]
    out_tokens = m.col(good, "output_tokens_received")
    prompt = m.col(df, "prompt_tokens_server")
    prompt = np.where(np.isnan(prompt), m.col(df, "prompt_tokens_trace"), prompt)
    duration = m.duration(df)
    total_in = float(np.nansum(prompt[ok]))
    with np.errstate(invalid="ignore", divide="ignore"):
        ntpot = np.where(out_tokens > 0, m.e2e(good) / out_tokens, np.nan)
        in_rate = total_in / duration if duration > 0 else math.nan
    out_rate = m.output_tps(df)
    run_id = str(meta.get("run_id") or "run")
    start, end = meta.get("started_at"), meta.get("finished_at")
    time = _drop_none({
        "start": _iso(start), "end": _iso(end),
        "duration": f"PT{duration:.6f}S" if math.isfinite(duration) else None,
    })  # fmt: skip
    aggregate = {
        "requests": _drop_none({
            "total": len(df), "failures": int((~ok).sum()),
            "input_length": statistics(prompt, "count"), "output_length": statistics(out_tokens, "count"),
        }),
        "latency": _drop_none({
            "time_to_first_token": statistics(m.ttft(good), "s"),
            "normalized_time_per_output_token": statistics(ntpot, "s/token"),
            "time_per_output_token": statistics(m.tpot(good), "s/token"),
            "inter_token_latency": statistics(m.itl(good), "s/token"),
            "request_latency": statistics(m.e2e(good), "s"),
        }),
        "throughput": _drop_none({
            "input_token_rate": _rate(in_rate, "tokens/s"),
            "output_token_rate": _rate(out_rate, "tokens/s"),
            "total_token_rate": _rate(in_rate + out_rate, "tokens/s"),
            "request_rate": _rate(m.throughput_rps(df), "queries/s"),
        }),
    }  # fmt: skip
    return {
        "version": VERSION,
        "run": _drop_none({
            "uid": f"{run_id}/{label}", "eid": run_id, "time": time or None,
            "description": f"prfaas-bench {meta.get('source', 'run')} {label} [{run_id}]",
        }),
        "scenario": {"load": _load(meta, df, prompt)},
        "results": {"request_performance": {"aggregate": aggregate}},
    }  # fmt: skip
