"""The Λ_max search: the highest offered rate a probe still passes, by doubling then bisection.

What a probe is and what passing means are the caller's: ``probe(rate)`` runs the system at ``rate``
and ``passes(rate, result)`` judges that one run. The search assumes the verdict is monotone in the
rate (a rate that fails has no higher rate that passes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

P = TypeVar("P")


@dataclass(frozen=True)
class RateSearch(Generic[P]):
    """Where the search ended: Λ_max, the probe that passed there, and every probe in the order run."""

    rate_rps: float  # the highest passing rate found; 0.0 when even the first probe failed
    at_rate: P | None  # the probe result at ``rate_rps`` (None when nothing passed)
    history: tuple[tuple[float, P, bool], ...]  # (rate, result, passed) of every probe
    bracketed: bool  # False: no probe failed, so Λ_max was not measured (only a lower bound)

    @property
    def probes(self) -> int:
        """How many probes the search ran."""
        return len(self.history)


def find_max_rate(
    probe: Callable[[float], P],
    passes: Callable[[float, P], bool],
    *,
    start_rps: float | None = None,
    rel_tol: float = 0.01,
    max_probes: int = 40,
    step: float = 2.0,
    ceiling: Callable[[float, P], float | None] | None = None,
) -> RateSearch[P]:
    """From ``start_rps`` (default 1), multiply the rate by ``step`` until a probe fails (or, when the
    first fails, divide it until one passes), then bisect to ``rel_tol`` of the rate.

    ``ceiling(rate, result)`` may name, for a failed probe, a lower rate above which every probe would
    fail too (an overloaded probe's completion rate tells where its capacity is); the top of the bracket
    moves down to it, unless it is not above the best passing rate.

    Rates below ``rel_tol`` × the start rate are not probed: when even those fail, Λ_max is 0.0 (at
    ever smaller rates the arrivals drift so far out that virtual time stops resolving a decode step).
    """
    history: list[tuple[float, P, bool]] = []
    lo, lo_result = 0.0, None

    def run(rate: float) -> tuple[P, bool]:
        result = probe(rate)
        ok = passes(rate, result)
        history.append((rate, result, ok))
        return result, ok

    def top(rate: float, result: P) -> float:
        cap = ceiling(rate, result) if ceiling is not None else None
        return cap if cap is not None and lo < cap < rate else rate

    hi = start_rps if start_rps and start_rps > 0 else 1.0
    floor = rel_tol * hi
    bracketed = False
    while len(history) < max_probes:  # up until a probe fails
        result, ok = run(hi)
        if not ok:
            bracketed, hi = True, top(hi, result)
            break
        lo, lo_result, hi = hi, result, hi * step
    while bracketed and lo == 0.0 and len(history) < max_probes and hi > floor:  # down until one passes
        rate = hi / step
        result, ok = run(rate)
        if ok:
            lo, lo_result = rate, result
        else:
            hi = top(rate, result)
    while bracketed and lo > 0.0 and len(history) < max_probes and hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2
        result, ok = run(mid)
        if ok:
            lo, lo_result = mid, result
        else:
            hi = top(mid, result)
    return RateSearch(lo, lo_result, tuple(history), bracketed)
