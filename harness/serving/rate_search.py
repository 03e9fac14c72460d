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
) -> RateSearch[P]:
    """Double from ``start_rps`` (default 1) until a probe fails, then bisect to ``rel_tol`` of the rate.

    Rates below ``rel_tol`` × the start rate are not probed: when even those fail, Λ_max is 0.0 (at
    ever smaller rates the arrivals drift so far out that virtual time stops resolving a decode step).
    """
    history: list[tuple[float, P, bool]] = []

    def run(rate: float) -> tuple[P, bool]:
        result = probe(rate)
        ok = passes(rate, result)
        history.append((rate, result, ok))
        return result, ok

    lo, lo_result = 0.0, None
    hi = start_rps if start_rps and start_rps > 0 else 1.0
    floor = rel_tol * hi
    bracketed = False
    while len(history) < max_probes:
        result, ok = run(hi)
        if not ok:
            bracketed = True
            break
        lo, lo_result, hi = hi, result, hi * 2
    while bracketed and len(history) < max_probes and hi - lo > rel_tol * hi and hi > floor:
        mid = (lo + hi) / 2
        result, ok = run(mid)
        if ok:
            lo, lo_result = mid, result
        else:
            hi = mid
    return RateSearch(lo, lo_result, tuple(history), bracketed)
