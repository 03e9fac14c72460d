"""The Λ_max search's verdict on one probe: does it meet the SLO, and is it in steady state?

A probe that ends before its queue has breached the TTFT bound can meet the SLO at a rate the system
cannot sustain. So a probe passes only if, over its *measured window*, it

* meets the SLO attainment target (``slo``): the share of the window's arrivals that met every bound;
* keeps up: the window's completions per second are within ``throughput_tol`` of its arrivals per
  second (an overloaded system completes at its capacity, whatever the offered rate);
* has no growing queue: the least-squares trend of the number of *waiting* requests (arrived, no first
  token yet), times the window's length, converted to seconds of waiting at the achieved rate, adds at
  most ``trend_share`` of the TTFT bound. A queue growing at ``s`` req/s over a window of ``D`` s makes
  the last arrival wait ``s·D/μ`` s longer than the first (μ the completion rate). Half the bound leaves
  the other half for the prefill itself and the stationary queue; a tighter share flags the chance
  drift of a stable queue near capacity (which is of the order of its mean wait) as a trend.

The measured window is defined by arrival time: it starts ``warmup_share`` of the arrival span after
the first arrival (the system fills from empty before that) and ends at the last arrival, so the drain,
when completions continue with no arrivals, is left out. Completions are counted by completion time in
the window: counting the window's *arrivals* that complete would reach the offered rate whatever the
queue did, because a simulated probe runs every request to the end.

Everything here is a pure function of the probe's records (``harness.records`` columns).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from harness.analysis import metrics as m
from harness.analysis.summary import Slo

WARMUP_SHARE = 0.2  # of the arrival span, before the window opens
THROUGHPUT_TOL = 0.03  # completions per second may fall this far below arrivals per second
TREND_SHARE = 0.5  # of the TTFT bound: the most waiting the queue's trend may add over the window
_GRID_POINTS = 512  # queue-depth samples over the window for the trend

Reason = Literal["slo", "unstable"]


@dataclass(frozen=True)
class ProbeVerdict:
    """One probe's figures and verdict (``reason`` None when it passed)."""

    rate_rps: float  # the offered (nominal) rate of the probe
    requests: int
    window_start_s: float
    window_end_s: float
    offered_rps: float  # arrivals in the window / its length
    achieved_rps: float  # successful completions in the window / its length
    attainment: float  # SLO attainment of the window's arrivals
    queue_slope_rps: float  # least-squares slope of the waiting count over the window
    queue_slope_bound_rps: float  # the largest slope that passes
    passed: bool
    reason: Reason | None
    detail: str  # a one-line why, with the figures

    def as_dict(self) -> dict[str, Any]:
        """The figures as a flat dict (for JSON, meta.json and probes.csv)."""
        return asdict(self)


def waiting_counts(arrival_s: np.ndarray, first_token_s: np.ndarray, at_s: np.ndarray) -> np.ndarray:
    """How many requests have arrived by each time in ``at_s`` and have no first token yet (a request
    that never got one waits for ever)."""
    arrived = np.searchsorted(np.sort(arrival_s), at_s, side="right")
    served = np.searchsorted(np.sort(first_token_s[~np.isnan(first_token_s)]), at_s, side="right")
    return arrived - served


def judge_probe(
    records: pd.DataFrame,
    rate_rps: float,
    slo: Slo,
    *,
    warmup_share: float = WARMUP_SHARE,
    throughput_tol: float = THROUGHPUT_TOL,
    trend_share: float = TREND_SHARE,
) -> ProbeVerdict:
    """Judge one probe at offered ``rate_rps`` from its records (see the module docstring)."""
    arrival = m.col(records, "scheduled_s")
    first, last = m.col(records, "first_token_s"), m.col(records, "last_token_s")
    ok = m.ok_mask(records)
    t0, t1 = float(np.nanmin(arrival)), float(np.nanmax(arrival))
    w0 = t0 + warmup_share * (t1 - t0)
    window_s = t1 - w0
    in_window = (arrival >= w0) & (arrival <= t1)
    offered = float(in_window.sum()) / window_s if window_s > 0 else float("nan")
    done = ok & (last >= w0) & (last <= t1)
    achieved = float(done.sum()) / window_s if window_s > 0 else float("nan")
    attainment = m.slo_attainment(records[in_window], slo.ttft_s, slo.tpot_s)

    grid = np.linspace(w0, t1, _GRID_POINTS) if window_s > 0 else np.array([w0])
    # A failed request is not waiting: it counts against attainment and throughput instead.
    depth = waiting_counts(arrival[ok], first[ok], grid).astype(float)
    slope = float(np.polyfit(grid, depth, 1)[0]) if window_s > 0 else 0.0
    bound_s = slo.ttft_s if slo.ttft_s is not None else float("inf")
    slope_bound = trend_share * bound_s * achieved / window_s if window_s > 0 else float("inf")

    # Instability first: it is the diagnosis (an overloaded probe usually misses the SLO as well).
    reason: Reason | None = None
    if not achieved >= (1 - throughput_tol) * offered:
        reason = "unstable"
        detail = (
            f"completes {achieved:.4g} req/s of {offered:.4g} offered "
            f"({achieved / offered - 1:+.1%}, tolerance -{throughput_tol:.0%})"
        )
    elif not slope <= slope_bound:
        reason = "unstable"
        detail = (
            f"waiting requests grow {slope:.3g}/s (bound {slope_bound:.3g}/s): "
            f"{slope * window_s / achieved:.3g} s more wait over the {window_s:.0f} s window, "
            f"more than {trend_share:g} x the {bound_s:g} s TTFT bound"
        )
    elif not attainment >= slo.attainment:
        reason = "slo"
        detail = f"SLO attainment {attainment:.2%} < {slo.attainment:.2%} over the window"
    else:
        detail = (
            f"attainment {attainment:.2%}, completes {achieved:.4g} of {offered:.4g} req/s, "
            f"queue trend {slope:+.3g}/s (bound {slope_bound:.3g}/s)"
        )
    return ProbeVerdict(
        rate_rps=rate_rps,
        requests=len(records),
        window_start_s=w0,
        window_end_s=t1,
        offered_rps=offered,
        achieved_rps=achieved,
        attainment=attainment,
        queue_slope_rps=slope,
        queue_slope_bound_rps=slope_bound,
        passed=reason is None,
        reason=reason,
        detail=detail,
    )


def overload_ceiling(verdict: ProbeVerdict, throughput_tol: float = THROUGHPUT_TOL) -> float:
    """The highest offered rate that could still keep up, from a probe that did not: an overloaded
    deployment completes at its capacity, so any rate above its completions / (1 − tolerance) fails the
    keep-up test too (the Λ_max search caps its bracket with it; the capacity ladder reads Λ_max off it)."""
    return verdict.achieved_rps / (1 - throughput_tol)
