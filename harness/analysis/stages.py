"""Which stage of a benchmark each run is, as the dashboard names it, and one colour per topology.

A ``make bench`` directory holds several runs of one source: the Λ_max search and the paired run are
both ``simulate``. Figures label each run by its stage, so no two runs share a label and no bar adds
two runs: ``capacity search`` (``simulate --find-max-rate``), ``rate sweep`` (a simulate run whose
topologies are all ``<name>@<rate>rps``), ``paired simulate`` (a simulate run beside a replay),
``simulate`` (alone), ``replay``, and ``replay ×0.85`` for one rung of a capacity ladder (its meta's
``ladder.share``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import pandas as pd

from harness.analysis import metrics as m
from harness.analysis.capacity import split_label
from harness.analysis.runs import Bundle, Run

STAGE_ORDER = ("plan", "capacity search", "rate sweep", "paired simulate", "simulate", "replay")
TOPOLOGY_COLOURS = {"prfaas": "#2563eb", "homogeneous": "#ea580c", "naive": "#16a34a"}
_MORE_COLOURS = ("#9333ea", "#0891b2", "#be123c", "#854d0e", "#4b5563")


def stage(run: Run, *, paired: bool) -> str:
    """The run's stage; ``paired``: the bundle also holds a replay (so a plain simulate is its pair)."""
    if run.source == "simulate":
        if run.meta.get("find_max_rate"):
            return "capacity search"
        names = run.records["topology"].unique()
        if len(names) and all(split_label(str(n))[1] is not None for n in names):
            return "rate sweep"
        return "paired simulate" if paired else "simulate"
    rung = run.meta.get("ladder")
    if run.source == "replay" and isinstance(rung, Mapping) and isinstance(rung.get("share"), int | float):
        return f"replay ×{rung['share']:g}"
    return run.source


def stage_order(label: str) -> tuple[int, str]:
    """Sort key: plan, capacity search, paired simulate, simulate, replay, then rungs and the rest."""
    base = label.split(" (")[0]
    return (STAGE_ORDER.index(base) if base in STAGE_ORDER else len(STAGE_ORDER), label)


def run_stages(bundle: Bundle) -> dict[str, str]:
    """run_id → stage label; a label that several runs would share gets the run id appended."""
    paired = any(r.source == "replay" for r in bundle.runs)
    labels = {r.run_id: stage(r, paired=paired) for r in bundle.runs}
    topologies = Counter(
        (labels[r.run_id], str(t)) for r in bundle.runs for t in r.records["topology"].unique()
    )
    clash = {label for (label, _), n in topologies.items() if n > 1}
    return {rid: f"{label} ({rid})" if label in clash else label for rid, label in labels.items()}


@dataclass(frozen=True)
class Series:
    """One run's one topology: the unit every figure draws as one trace (or one bar)."""

    stage: str
    topology: str
    run: Run
    records: pd.DataFrame  # measured, successful requests


def series(bundle: Bundle) -> Iterator[Series]:
    """Every (stage, topology) of the bundle, in stage order, each from exactly one run."""
    stages = run_stages(bundle)
    for run in sorted(bundle.runs, key=lambda r: stage_order(stages[r.run_id])):
        for name, df in run.records.groupby("topology", sort=True):
            df = m.measured(df)
            yield Series(stages[run.run_id], str(name), run, df[m.ok_mask(df)])


def colour(topology: str) -> str:
    """A fixed colour per topology name (``prfaas@2rps`` takes prfaas's), the same in every figure."""
    base = split_label(topology)[0]
    if base in TOPOLOGY_COLOURS:
        return TOPOLOGY_COLOURS[base]
    return _MORE_COLOURS[sum(map(ord, base)) % len(_MORE_COLOURS)]
