"""Summary statistics of a trace, as printed by ``trace inspect``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from harness.traces.frame import Trace
from harness.traces.transforms import mean_rate

DEFAULT_ABOVE = (8192, 19400, 32768, 131072)


@dataclass(frozen=True)
class LengthStats:
    mean: float
    median: float
    p90: float
    p99: float
    max: int

    @classmethod
    def of(cls, values: np.ndarray) -> LengthStats:
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return cls(float(values.mean()), float(p50), float(p90), float(p99), int(values.max()))


@dataclass(frozen=True)
class TraceStats:
    """What ``trace inspect`` reports. Rates are ``(n - 1) / span``; CV = std / mean of the gaps."""

    source: str
    requests: int
    span_s: float
    rate_rps: float
    input_tokens: LengthStats
    output_tokens: LengthStats
    interarrival_mean_s: float
    interarrival_cv: float
    prefix_reuse: float  # fraction of blocks whose id appeared earlier (unbounded prefix cache)
    block_tokens: int
    sessions: int
    share_above: dict[int, float]  # fraction of requests with input_tokens > threshold

    def to_dict(self) -> dict:
        out = asdict(self)
        out["share_above"] = {str(k): v for k, v in self.share_above.items()}
        return out


def prefix_reuse(trace: Trace) -> float:
    """Fraction of all prefix blocks whose id was already seen, replaying in order with an unbounded cache."""
    total = len(trace.hash_values)
    return 1.0 - len(np.unique(trace.hash_values)) / total if total else 0.0


def trace_stats(trace: Trace, above: Sequence[int] = DEFAULT_ABOVE) -> TraceStats:
    """Statistics on lengths, arrivals and prefix reuse of a non-empty trace."""
    gaps = np.diff(trace.arrival_s)
    gap_mean = float(gaps.mean()) if len(gaps) else math.nan
    gap_cv = float(gaps.std() / gap_mean) if len(gaps) and gap_mean > 0 else math.nan
    sessions = 0 if trace.session_id is None else len(np.unique(trace.session_id[trace.session_id >= 0]))
    return TraceStats(
        source=trace.source,
        requests=len(trace),
        span_s=trace.duration_s,
        rate_rps=mean_rate(trace),
        input_tokens=LengthStats.of(trace.input_tokens),
        output_tokens=LengthStats.of(trace.output_tokens),
        interarrival_mean_s=gap_mean,
        interarrival_cv=gap_cv,
        prefix_reuse=prefix_reuse(trace),
        block_tokens=trace.block_tokens,
        sessions=sessions,
        share_above={int(t): float((trace.input_tokens > t).mean()) for t in above},
    )
