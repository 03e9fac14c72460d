"""The Λ_max search on its own: probes are plain functions of the rate, so every answer is known."""

from __future__ import annotations

import pytest

from harness.serving.rate_search import find_max_rate


def _below(limit: float, seen: list[float]):
    def probe(rate: float) -> float:
        seen.append(rate)
        return rate

    return probe, lambda rate, result: result <= limit


@pytest.mark.parametrize(("limit", "start"), [(3.3, 1.0), (3.3, 3.28), (0.7, 2.0), (100.0, None)])
def test_finds_the_limit_within_the_tolerance_from_below(limit, start):
    seen: list[float] = []
    probe, passes = _below(limit, seen)
    found = find_max_rate(probe, passes, start_rps=start, rel_tol=0.01)
    assert found.bracketed and found.at_rate == found.rate_rps
    assert found.probes == len(seen)
    lowest_fail = min(r for r in seen if r > limit)
    assert found.rate_rps <= limit < lowest_fail and lowest_fail - found.rate_rps <= 0.01 * lowest_fail
    # doubling until the first failure, then each probe halves the bracket [best pass, lowest fail]
    first_fail = next(i for i, r in enumerate(seen) if r > limit)
    assert seen[: first_fail + 1] == [(start or 1.0) * 2**k for k in range(first_fail + 1)]
    for i in range(first_fail + 1, len(seen)):
        passed = [r for r in seen[:i] if r <= limit]
        lo, hi = max(passed, default=0.0), min(r for r in seen[:i] if r > limit)
        assert seen[i] == (lo + hi) / 2


def test_nothing_passes_gives_zero_and_stops():
    seen: list[float] = []
    found = find_max_rate(lambda r: seen.append(r) or r, lambda r, _: False, start_rps=2.0, rel_tol=0.01)
    assert (found.rate_rps, found.at_rate, found.bracketed) == (0.0, None, True)
    assert min(seen) > 0.01 * 2.0 / 2 and len(seen) == 8  # 2, 1, 0.5, ..., 0.015625 (< 1% of 2)


def test_everything_passes_is_not_bracketed():
    found = find_max_rate(lambda r: r, lambda r, _: True, start_rps=1.0, max_probes=5)
    assert (found.rate_rps, found.probes, found.bracketed) == (16.0, 5, False)
