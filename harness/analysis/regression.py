"""The CI regression check: a current ``analyze`` result against a baseline one, metric by metric.

A metric regresses when it moves in its bad direction by more than the bound, relative to the
baseline: throughput and goodput down, latency percentiles up. The failed-request share is compared
in absolute terms (a rise from 0% to 6% is 6 points). A topology the baseline has and the current
run lacks is a regression too: a check that silently checks less is no check.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.errors import InputError

HIGHER_IS_BETTER = ("throughput_rps", "goodput_rps", "output_tps")
LOWER_IS_BETTER = tuple(
    f"{name}_{tag}_s" for name in ("ttft", "tpot", "e2e") for tag in ("p50", "p90", "p99")
)  # fmt: skip
ERROR_RATE = "failed_share"
_EPS = 1e-12  # a change equal to the bound passes (float noise must not fail CI)


@dataclass(frozen=True, slots=True)
class Check:
    """One metric of one topology: values, the signed change (+ = worse) and the verdict."""

    topology: str
    metric: str
    baseline: float | None
    current: float | None
    worse_by: float | None  # relative (absolute for failed_share); negative = better; None = not comparable
    regressed: bool


@dataclass(frozen=True)
class RegressionReport:
    max_regression: float
    checks: list[Check]
    missing: list[str] = field(default_factory=list)  # topologies in the baseline but not the current run

    @property
    def regressions(self) -> list[Check]:
        return [c for c in self.checks if c.regressed]

    @property
    def failed(self) -> bool:
        return bool(self.regressions or self.missing)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": not self.failed,
            "max_regression": self.max_regression,
            "regressions": len(self.regressions),
            "missing_topologies": self.missing,
            "checks": [asdict(c) for c in self.checks],
        }


def parse_bound(text: str) -> float:
    """``"5%"`` or ``"0.05"`` → 0.05."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(%?)\s*", text)
    if not m:
        raise InputError(f"--max-regression must look like 5% or 0.05, got {text!r}")
    value = float(m.group(1)) / (100 if m.group(2) else 1)
    if not 0 <= value < 1:
        raise InputError(f"--max-regression must be within [0%, 100%), got {text!r}")
    return value


def _worse_by(base: float, cur: float, higher_is_better: bool) -> float:
    if base == 0:
        if cur == 0:
            return 0.0
        return -math.inf if (cur > 0) == higher_is_better else math.inf
    change = (cur - base) / abs(base)
    return -change if higher_is_better else change


def _failed_share(entry: Mapping[str, Any]) -> float | None:
    n = entry.get("requests")
    return entry.get("failed", 0) / n if n else None


def check_regression(
    baseline: Mapping[str, Any], current: Mapping[str, Any], max_regression: float
) -> RegressionReport:
    """Compare two ``analyze`` results (their ``topologies``) within ``max_regression`` (0.05 = 5%)."""
    checks: list[Check] = []
    base_t, cur_t = baseline.get("topologies") or {}, current.get("topologies") or {}
    if not base_t:
        raise InputError("the baseline has no topologies to compare against")
    for name in sorted(set(base_t) & set(cur_t)):
        b, c = base_t[name], cur_t[name]
        for key in (*HIGHER_IS_BETTER, *LOWER_IS_BETTER):
            bv, cv = b.get(key), c.get(key)
            if bv is None or cv is None:
                checks.append(
                    Check(name, key, bv, cv, None, bv is not None)
                )  # a metric that vanished regresses
                continue
            worse = _worse_by(float(bv), float(cv), key in HIGHER_IS_BETTER)
            checks.append(Check(name, key, bv, cv, worse, worse > max_regression + _EPS))
        bf, cf = _failed_share(b), _failed_share(c)
        if bf is not None and cf is not None:
            checks.append(Check(name, ERROR_RATE, bf, cf, cf - bf, cf - bf > max_regression + _EPS))
    return RegressionReport(max_regression, checks, sorted(set(base_t) - set(cur_t)))


def _num(v: float | None, metric: str) -> str:
    if v is None:
        return "–"
    if metric == ERROR_RATE:
        return f"{v * 100:.2f}%"
    return (
        f"{v * 1000:.1f} ms"
        if metric.endswith("_s") and abs(v) < 1
        else f"{v:.4g}"
        + (
            " s"
            if metric.endswith("_s")
            else " /s"
            if metric.endswith("_rps") or metric.endswith("_tps")
            else ""
        )
    )


def _change(c: Check) -> str:
    if c.worse_by is None:
        return "n/a"
    if math.isinf(c.worse_by):
        return "from 0"
    unit = " pt" if c.metric == ERROR_RATE else "%"
    # Show the signed change of the value itself, not of "badness".
    sign = -1 if c.metric in HIGHER_IS_BETTER else 1
    return f"{sign * c.worse_by * 100:+.1f}{unit}"


def to_markdown(
    report: RegressionReport, *, baseline_label: str = "baseline", current_label: str = "current"
) -> str:
    """A PR-comment summary: verdict, the regressions first, then every other check."""
    bound = f"{report.max_regression * 100:g}%"
    verdict = (
        f"❌ **FAIL**: {len(report.regressions)} regression(s) beyond {bound}"
        + (f", missing topologies: {', '.join(report.missing)}" if report.missing else "")
        if report.failed
        else f"✅ **PASS**: no metric regressed by more than {bound}"
    )
    lines = [
        "### prfaas-bench regression check",
        "",
        verdict,
        "",
        f"baseline: `{baseline_label}` · current: `{current_label}`",
        "",
        "| topology | metric | baseline | current | change | |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    ordered = sorted(report.checks, key=lambda c: not c.regressed)
    for c in ordered:
        mark = "❌" if c.regressed else "✅" if c.worse_by is not None else "➖"
        lines.append(
            f"| {c.topology} | {c.metric} | {_num(c.baseline, c.metric)} | {_num(c.current, c.metric)} "
            f"| {_change(c)} | {mark} |"
        )
    lines.append("")
    lines.append("Higher is better for throughput/goodput; lower for latency percentiles and the failed share "
                 "(compared in absolute points).")  # fmt: skip
    return "\n".join(lines) + "\n"
