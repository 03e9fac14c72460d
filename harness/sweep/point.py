"""One sweep point run where it lands (a pool process or a Ray worker): the library's own plan and
simulate on the point's scenario, flattened into one row.

Columns: the point's labels (``Point.labels``), ``status`` (``ok`` or ``failed``), ``error`` (one line),
``wall_s``; then per run, with the topology name in the middle:

    plan.TOPOLOGY.lambda_max ...     plan.prfaas_vs_homogeneous ...   (``plan``: PlanReport)
    simulate.TOPOLOGY.ttft_p90_s ...                                  (``simulate`` at the point's rate)
    max_rate.TOPOLOGY.lambda_max ... max_rate.prfaas_vs_homogeneous   (``simulate --find-max-rate``)

Every scalar figure of the library's result is kept under its own name; nothing is recomputed here.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from harness.scenario import Scenario
from harness.sweep.spec import Point

_SCALARS = (int, float, str, bool, type(None))
_PLAN_FIGURES = (
    "lambda_max", "threshold_tokens", "n_prfaas", "n_p", "n_d", "offload_share", "egress_gbps",
    "bottleneck", "cost_per_hour", "requests_per_dollar",
)  # fmt: skip
_ERROR_CHARS = 500


def run_batch(points: Iterable[Point], runs_dir: str | None = None) -> list[dict[str, Any]]:
    """Every point of a batch, in order (what one executor task runs)."""
    return [run_point(point, None if runs_dir is None else Path(runs_dir)) for point in points]


def run_point(point: Point, runs_dir: Path | None = None) -> dict[str, Any]:
    """The point's row. An exception is the point's result, not the sweep's end: it becomes ``status =
    "failed"`` with the error in one line. ``runs_dir``: keep each simulate run directory under
    ``runs_dir/KEY/`` (else they go to a temporary directory, removed after the point)."""
    start = time.perf_counter()
    try:
        if runs_dir is not None:
            figures = _figures(point, runs_dir / point.key)
        else:
            with tempfile.TemporaryDirectory(prefix="prfaas-sweep-") as tmp:
                figures = _figures(point, Path(tmp))
    except Exception as exc:  # every failure of a point is data (KeyboardInterrupt is not an Exception)
        return failed_row(point, f"{type(exc).__name__}: {exc}", wall_s=time.perf_counter() - start)
    return {**point.labels(), "status": "ok", "error": None, "wall_s": time.perf_counter() - start, **figures}


def failed_row(point: Point, error: str, *, wall_s: float | None = None) -> dict[str, Any]:
    """The row of a point that did not finish: its labels and the error, first line, bounded."""
    line = (error.strip().splitlines() or ["unknown error"])[0][:_ERROR_CHARS]
    return {**point.labels(), "status": "failed", "error": line, "wall_s": wall_s}


def _figures(point: Point, out_dir: Path) -> dict[str, Any]:
    from harness.model.deployment import deployment_from_scenario
    from harness.model.study import plan_deployment

    scenario = point.scenario()
    chosen = point.topologies
    out: dict[str, Any] = {}
    if "plan" in point.runs:
        deployment = deployment_from_scenario(scenario)
        if chosen is not None:  # plan only those, so the ratios are between them too
            deployment = replace(deployment, topologies={n: deployment.topologies[n] for n in chosen})
        report = plan_deployment(deployment)
        for name, tp in report.topologies.items():
            row = tp.as_dict()
            out |= {f"plan.{name}.{k}": row[k] for k in _PLAN_FIGURES}
        out |= {f"plan.{k}": v for k, v in report.ratios.items()}
    for run in ("simulate", "max-rate"):
        if run in point.runs:
            prefix = run.replace("-", "_")
            out |= _simulated(point, scenario, run == "max-rate", out_dir / prefix, prefix)
    return out


def _simulated(
    point: Point, scenario: Scenario, find_max_rate: bool, out_dir: Path, prefix: str
) -> dict[str, Any]:
    from harness.model.study import kind_ratios
    from harness.serving.config import prepare
    from harness.serving.run import SimulateRequest, simulate

    setup = prepare(scenario, topologies=list(point.topologies) if point.topologies else None)
    trace_path = setup.deployment.workload.trace_path
    rates = () if find_max_rate or point.rate is None else (point.rate,)
    result = simulate(
        setup,
        SimulateRequest(
            trace=None if trace_path is None else _read_trace(str(trace_path)),
            trace_timestamps=not rates,
            rates=rates,
            find_max_rate=find_max_rate,
            seed=point.seed,
            out_dir=out_dir,
        ),
    )
    out: dict[str, Any] = {}
    for name, entry in result["topologies"].items():
        out |= {f"{prefix}.{name}.{k}": v for k, v in _scalars(entry)}
    if find_max_rate:
        firsts: dict[str, float] = {}
        for entry in result["topologies"].values():
            firsts.setdefault(entry["kind"], entry["lambda_max"])
        out |= {f"{prefix}.{k}": v for k, v in kind_ratios(firsts).items()}
    return out


def _scalars(entry: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """The entry's plain figures (probe lists, link byte tables and the like stay in run directories)."""
    return ((k, v) for k, v in entry.items() if isinstance(v, _SCALARS))


@lru_cache(maxsize=4)
def _read_trace(path: str):
    """A trace read once per worker process, however many of its points replay it."""
    from harness.traces.readers import read_trace

    return read_trace(path)
