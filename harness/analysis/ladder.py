"""Λ_max from a capacity ladder: a few offered rates, each run once and judged as a Λ_max probe.

Each rung is judged by the Λ_max search's own verdict (``harness.serving.stability.judge_probe``:
SLO attainment, keeping up, no growing queue over the measured window); this module only reads the
verdicts across the rungs. It is pure: verdicts in, figures out.

* **Bracket.** Λ_max lies between the highest passing rung (``low``) and the next rung up, which
  failed (``high``). Short rungs make the verdict noisy near a boundary, so when the verdicts are not
  monotone in the rate (a pass above a failure) the boundary is the one that contradicts the fewest
  rungs (a bracketed one on a tie, the lowest of those), and ``monotone`` is False. With no failing
  rung Λ_max is only a lower bound; with no passing rung, only an upper bound.
* **Point estimate.** Each test the ``high`` rung failed gives the rate where it starts to fail: the
  keep-up test the search's own overload ceiling (completions / (1 − tolerance):
  ``overload_ceiling``), the others their margin (1 − queue slope / bound, attainment − target),
  linear in the offered rate between ``low`` and ``high``, at 0. Λ_max is the lowest of these,
  kept within the bracket.
* **Gain.** ``Λ_max(a) / Λ_max(b)`` at the point estimates, with the interval every pair of rates in
  the two brackets allows: [low_a / high_b, high_a / low_b]. It holds whenever both brackets hold,
  so it covers at least 95% when each bracket holds with probability ≥ 97.5% (independent runs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from harness.serving.stability import THROUGHPUT_TOL, ProbeVerdict, overload_ceiling

INTERPOLATION = (
    "between the highest passing rung and the failing rung above it: for each test the upper rung failed, "
    "where it starts to fail (keep-up: the search's overload ceiling, completions / (1 − tolerance); queue "
    "trend and SLO: their margins linear in the offered rate, at 0); Λ_max the lowest, within the bracket"
)
GAIN_INTERVAL = (
    "[low_a/high_b, high_a/low_b]: every gain the two brackets allow; ≥ 95% coverage when each bracket "
    "holds with probability ≥ 97.5%"
)


@dataclass(frozen=True)
class LadderFit:
    """Λ_max read from one topology's rungs (rates in req/s; None where the rungs do not say)."""

    lambda_max_rps: float | None  # the interpolated point estimate (None: not bracketed)
    low_rps: float | None  # the passing rung below ``high_rps`` (None: none passed)
    high_rps: float | None  # the failing rung where the verdict turns (None: every rung passed)
    first_failure: str | None  # the test that fails first between the bracket's rungs
    monotone: bool  # False: a rung above a failing rung passed (the verdict's noise exceeds a rung step)

    @property
    def bracketed(self) -> bool:
        return self.low_rps is not None and self.high_rps is not None

    def as_dict(self) -> dict[str, Any]:
        """The figures as a flat dict, with ``bracketed``."""
        return {**asdict(self), "bracketed": self.bracketed}


def _boundary(passed: Sequence[bool]) -> int:
    """Index of the first failing rung of the step (pass below, fail from it on) that contradicts the
    fewest verdicts: a bracketed step (a pass below it, a failure at it) on a tie, the lowest of those."""

    def cost(k: int) -> tuple[int, bool, int]:
        wrong = sum(not p for p in passed[:k]) + sum(passed[k:])
        return wrong, not (0 < k < len(passed)), k

    return min(range(len(passed) + 1), key=cost)


def crossings(lo: ProbeVerdict, hi: ProbeVerdict, target: float) -> dict[str, float]:
    """For each test ``hi`` failed, the rate between ``lo`` and ``hi`` where it starts to fail."""
    out: dict[str, float] = {}
    if not hi.achieved_rps >= (1 - THROUGHPUT_TOL) * hi.offered_rps:
        out["keep_up"] = overload_ceiling(hi) * hi.rate_rps / hi.offered_rps  # window rate → nominal
    linear = {
        "queue_trend": (
            1 - lo.queue_slope_rps / lo.queue_slope_bound_rps,
            1 - hi.queue_slope_rps / hi.queue_slope_bound_rps,
        ),
        "slo": (lo.attainment - target, hi.attainment - target),
    }
    for test, (m_lo, m_hi) in linear.items():
        if m_hi < 0 and math.isfinite(m_hi) and math.isfinite(m_lo):
            out[test] = lo.rate_rps + (hi.rate_rps - lo.rate_rps) * max(m_lo, 0.0) / (max(m_lo, 0.0) - m_hi)
    return {t: min(max(r, lo.rate_rps), hi.rate_rps) for t, r in out.items()}


def fit_ladder(rungs: Sequence[ProbeVerdict], target: float) -> LadderFit:
    """Λ_max from rungs judged at the SLO attainment ``target`` (any order; see the module docstring)."""
    ordered = sorted(rungs, key=lambda v: v.rate_rps)
    passed = [v.passed for v in ordered]
    k = _boundary(passed)
    monotone = passed == sorted(passed, reverse=True)
    if k == len(ordered):
        return LadderFit(None, ordered[-1].rate_rps if ordered else None, None, None, monotone)
    hi = ordered[k]
    if k == 0:
        return LadderFit(None, None, hi.rate_rps, None, monotone)
    lo = ordered[k - 1]
    found = crossings(lo, hi, target)
    # At the best step the rung below it passed and the rung at it failed (moving the step by one would
    # contradict one verdict fewer otherwise), so a test failed; none crosses only for an empty window.
    if not found:
        return LadderFit((lo.rate_rps + hi.rate_rps) / 2, lo.rate_rps, hi.rate_rps, None, monotone)
    test = min(found, key=found.__getitem__)
    return LadderFit(found[test], lo.rate_rps, hi.rate_rps, test, monotone)


def gain(a: LadderFit, b: LadderFit) -> dict[str, Any] | None:
    """``a``'s Λ_max over ``b``'s with the bracket interval (module docstring); None unless both are
    bracketed."""
    if not (a.bracketed and b.bracketed) or a.lambda_max_rps is None or b.lambda_max_rps is None:
        return None
    assert a.low_rps is not None and a.high_rps is not None and b.low_rps is not None and b.high_rps
    return {
        "value": a.lambda_max_rps / b.lambda_max_rps,
        "ci_low": a.low_rps / b.high_rps,
        "ci_high": a.high_rps / b.low_rps,
        "interval": GAIN_INTERVAL,
    }


def rung_row(share: float, v: ProbeVerdict, verdict: str | None = None) -> dict[str, Any]:
    """One rung for analysis.json: its share of the simulated Λ_max, the probe figures, and (replay)
    the run's validity verdict."""
    return {"share": share, **v.as_dict(), **({"validity": verdict} if verdict is not None else {})}


def ladder_result(
    rungs: Mapping[str, Mapping[str, Iterable[tuple[float, ProbeVerdict, str | None]]]],
    *,
    target: float,
    plan: Mapping[str, float],
    search: Mapping[str, float | None],
    baseline: str = "homogeneous",
    validity: str,
    design: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """analysis.json's ``capacity_ladder``: ``rungs[source][topology]`` = (share, verdict, validity)
    per rung, for source ``replay`` and ``simulate``; ``plan`` and ``search`` are the planner's and the
    simulated search's Λ_max per topology, for the side-by-side and the gains; ``design`` (rungs, span,
    speed-up) is recorded as given."""
    out: dict[str, Any] = {
        "design": dict(design or {}),
        "target": target,
        "interpolation": INTERPOLATION,
        "validity": validity,
        "sources": {},
        "lambda_max": {},
        "gain": {},
    }
    fits: dict[str, dict[str, LadderFit]] = {}
    for source, per in rungs.items():
        out["sources"][source] = {}
        for name, rows in per.items():
            rows = list(rows)
            fit = fit_ladder([v for _, v, _ in rows], target)
            fits.setdefault(source, {})[name] = fit
            out["sources"][source][name] = {
                **fit.as_dict(),
                "rungs": [rung_row(s, v, verdict) for s, v, verdict in rows],
            }
    names = [*plan, *search, *(n for per in fits.values() for n in per)]
    for name in dict.fromkeys(names):  # the plan's order (prfaas, homogeneous, naive), then any other
        out["lambda_max"][name] = {
            "plan": plan.get(name),
            "simulate": search.get(name),
            **{f"{src}_ladder": per[name].lambda_max_rps for src, per in fits.items() if name in per},
        }
    for name in out["lambda_max"]:
        if name == baseline:
            continue
        entry: dict[str, Any] = {}
        p, p0, s, s0 = plan.get(name), plan.get(baseline), search.get(name), search.get(baseline)
        entry["plan"] = p / p0 if p and p0 else None
        entry["simulate"] = s / s0 if s and s0 else None
        for src, per in fits.items():
            if name in per and baseline in per:
                entry[f"{src}_ladder"] = gain(per[name], per[baseline])
        out["gain"][f"{name}_vs_{baseline}"] = entry
    return out
