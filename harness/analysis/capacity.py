"""Measured Λ_max: SLO attainment against offered rate across the runs of a rate sweep.

A sweep shows up either as one simulate run whose topologies are labelled ``<name>@<rate>rps``, or as
several runs (``replay --rate a,b,c`` writes one per rate) whose meta gives the offered rate.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from harness.analysis.metrics import lambda_max

_AT_RATE = re.compile(r"^(?P<name>.+)@(?P<rate>[0-9.]+(?:e[+-]?[0-9]+)?|inf)rps$")


def split_label(label: str) -> tuple[str, float | None]:
    """``"prfaas@2.5rps"`` → ("prfaas", 2.5); a plain name → (name, None)."""
    m = _AT_RATE.match(label)
    return (m["name"], float(m["rate"])) if m else (label, None)


def offered_rate(meta: Mapping[str, Any], label: str) -> float | None:
    """The offered rate of one topology of a run: from its label, else the run's meta."""
    _, rate = split_label(label)
    if rate is not None:
        return rate
    load = (meta.get("config") or {}).get("load") if isinstance(meta.get("config"), Mapping) else None
    for value in ((load or {}).get("rate_rps"), meta.get("rate_rps")):
        if isinstance(value, int | float) and math.isfinite(value):
            return float(value)
    rates = meta.get("rates_rps")
    if isinstance(rates, list) and len(rates) == 1 and isinstance(rates[0], int | float):
        return float(rates[0])
    return None


def measured_lambda_max(
    points: Iterable[tuple[str, str, float, float]], target: float
) -> dict[str, dict[str, dict[str, Any]]]:
    """``points`` = (source, topology, offered rate, attainment). For every (source, topology) with at
    least two rates: ``{"lambda_max_rps", "target", "rates_rps", "attainment"}`` (sorted by rate)."""
    groups: dict[tuple[str, str], dict[float, float]] = {}
    for source, name, rate, att in points:
        groups.setdefault((source, name), {})[rate] = att
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (source, name), by_rate in groups.items():
        if len(by_rate) < 2:
            continue
        rates = sorted(by_rate)
        att = [by_rate[r] for r in rates]
        lam = lambda_max(rates, att, target)
        out.setdefault(source, {})[name] = {
            "lambda_max_rps": None if math.isnan(lam) else lam,
            "target": target,
            "rates_rps": rates,
            "attainment": att,
        }
    return out
