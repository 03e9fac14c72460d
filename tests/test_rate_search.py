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


def test_a_ceiling_from_a_failed_probe_narrows_the_bracket():
    # The probe "completes" at most 3.0 req/s; a rate passes when it completes within 3% of it. The
    # ceiling (completions / 0.97) moves the top of the bracket from 8 straight down to 3.0928.
    seen: list[float] = []

    def probe(rate: float) -> float:
        seen.append(rate)
        return min(rate, 3.0)

    found = find_max_rate(
        probe,
        lambda r, done: done >= 0.97 * r,
        start_rps=2.0,
        rel_tol=0.01,
        ceiling=lambda r, done: done / 0.97,
    )
    assert seen[:2] == [2.0, 4.0]  # 4 fails; its ceiling 3.0928 < 4 becomes the top
    assert seen[2] == pytest.approx((2.0 + 3.0 / 0.97) / 2)
    assert found.rate_rps <= 3.0 / 0.97 < found.rate_rps * 1.01 + 1e-9
    assert found.probes < 9  # bisecting [2, 4] to 1% would take 2 + 7


def test_a_ceiling_below_a_passing_rate_is_ignored():
    seen: list[float] = []
    found = find_max_rate(
        lambda r: seen.append(r) or r, lambda r, _: r <= 3.3, start_rps=2.0, ceiling=lambda r, _: 1.0
    )
    assert 3.3 * 0.99 <= found.rate_rps <= 3.3 and seen[2] == 3.0  # plain bisection of [2, 4]


def test_a_smaller_step_walks_down_from_a_failing_start_then_bisects():
    seen: list[float] = []
    probe, passes = _below(2.5, seen)
    found = find_max_rate(probe, passes, start_rps=3.3, step=1.2, rel_tol=0.01)
    assert seen[:3] == pytest.approx([3.3, 3.3 / 1.2, 3.3 / 1.2**2])  # 3.3 and 2.75 fail, 2.29 passes
    assert 2.5 * 0.99 <= found.rate_rps <= 2.5
