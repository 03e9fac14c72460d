"""Each topology against the homogeneous baseline: ratios with seeded bootstrap intervals, and per cost.

Rates (throughput, goodput) are block-bootstrapped over equal time windows of each run; latency
percentiles are bootstrapped over requests. Topologies are resampled independently.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from harness.analysis import metrics as m
from harness.analysis.stats import (
    Estimate,
    bootstrap,
    bootstrap_ratio,
    mean_stat,
    quantile_stat,
    rate_windows,
)
from harness.analysis.summary import Slo

# Ratio columns: summary key -> how to get resamplable values from records.
RATE_KEYS = ("throughput_rps", "goodput_rps")
LATENCY_KEYS = {"ttft_p50_s": (m.ttft, 0.5), "ttft_p90_s": (m.ttft, 0.9), "tpot_p50_s": (m.tpot, 0.5)}


def rate_samples(df: pd.DataFrame, key: str, slo: Slo) -> np.ndarray:
    """Per-window completion rates whose mean is ``key`` (throughput or goodput) of ``df``."""
    df = m.measured(df)
    done = m.ok_mask(df) if key == "throughput_rps" else m.meets_slo(df, slo.ttft_s, slo.tpot_s)
    start = float(np.nanmin(m.col(df, "scheduled_s"))) if len(df) else 0.0
    end = start + m.duration(df)
    if not np.isfinite(end):
        return np.empty(0)
    n_windows = int(np.clip(done.sum() // 10, 2, 20))
    return rate_windows(m.col(df, "last_token_s")[done], start, end, n_windows)


def rate_ci(df: pd.DataFrame, key: str, slo: Slo, *, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """Throughput or goodput of ``df`` with a block-bootstrap interval."""
    return bootstrap(rate_samples(df, key, slo), mean_stat, n_boot=n_boot, seed=seed)


def compare_to_baseline(
    groups: Mapping[str, pd.DataFrame],
    baseline: str,
    slo: Slo,
    costs: Mapping[str, float | None],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """For each topology in ``groups`` (records by name): ratio vs ``baseline`` of every ratio column.

    Returns ``{topology: {key: {"value", "low", "high"}, "cost_per_hour": float|None,
    "throughput_per_cost": {...}|None}}``; a ratio > 1 means larger than the baseline.
    """
    base = groups[baseline]
    out: dict[str, dict[str, Any]] = {}
    for name, df in groups.items():
        row: dict[str, Any] = {}
        for key in RATE_KEYS:
            est = bootstrap_ratio(
                rate_samples(df, key, slo), rate_samples(base, key, slo), mean_stat, n_boot=n_boot, seed=seed
            )
            row[key] = est.to_dict()
        for key, (fn, q) in LATENCY_KEYS.items():
            ok, ok_base = m.measured(df), m.measured(base)
            a, b = fn(ok[m.ok_mask(ok)]), fn(ok_base[m.ok_mask(ok_base)])
            row[key] = bootstrap_ratio(a, b, quantile_stat(q), n_boot=n_boot, seed=seed).to_dict()
        cost, base_cost = costs.get(name), costs.get(baseline)
        row["cost_per_hour"] = cost
        thr = row["throughput_rps"]
        if cost and base_cost and thr["value"] is not None:
            scale = base_cost / cost
            row["throughput_per_cost"] = {k: None if v is None else v * scale for k, v in thr.items()}
        else:
            row["throughput_per_cost"] = None
        out[name] = row
    return out
