"""``prfaas-bench simulate`` as a library call: every topology at every rate, or at its Λ_max.

The pieces live beside it: the requests (``workload``), one topology's run and the run directory
(``runner``), the Λ_max search (``rate_search``) and its verdict on one probe (``stability``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from harness.analysis.summary import Slo
from harness.errors import ScenarioError
from harness.records import new_run_id
from harness.serving.build import TopologyPlan
from harness.serving.config import SimSetup
from harness.serving.rate_search import RateSearch, find_max_rate
from harness.serving.runner import RunDirectory, run_topology
from harness.serving.stability import (
    THROUGHPUT_TOL,
    TREND_SHARE,
    WARMUP_SHARE,
    ProbeVerdict,
    judge_probe,
    overload_ceiling,
)
from harness.serving.workload import PROBE_SPAN_TTFT_BOUNDS, build_workload, probe_span_s, scenario_rate
from harness.traces.context import ContextFit, ContextPolicy
from harness.traces.frame import Trace
from harness.traces.sessions import ThinkTime, session_plan

Workload = Callable[..., tuple[Trace, ContextFit]]  # build_workload with the run's fixed arguments bound


@dataclass(frozen=True)
class SimulateRequest:
    """The command's choices, after parsing."""

    trace: Trace | None = None  # None: synthetic from the scenario's [workload]
    trace_timestamps: bool = True
    rates: tuple[float, ...] = ()
    requests: int | None = None
    duration_s: float | None = None
    find_max_rate: bool = False
    ttft_slo_s: float | None = None
    attainment: float | None = None
    seed: int | None = None
    context: ContextPolicy = "refuse"  # prompts beyond the model's context (harness.traces.context)
    out_dir: Path = Path("results")
    sessions: ThinkTime | None = None  # session mode: later turns wait for their predecessor (and think)


SEARCH_STEP = 1.2  # from the planner's Λ_max, up or down by 20% until the verdict changes, then bisect


def search_topology(
    setup: SimSetup, topo: TopologyPlan, slo: Slo, workload: Workload
) -> RateSearch[ProbeVerdict]:
    """The Λ_max search for one topology: the highest rate whose probe meets the SLO in steady state
    (``harness.serving.stability``), each probe's arrivals spanning ``probe_span_s`` at least."""
    span = probe_span_s(slo.ttft_s)

    def probe(rate: float) -> ProbeVerdict:
        trace = workload(rate=rate, min_span_s=span)[0]
        return judge_probe(run_topology(setup.stack, topo, trace, slo=slo).records, rate, slo)

    return find_max_rate(
        probe,
        lambda _, verdict: verdict.passed,
        start_rps=topo.planner_lambda_max,
        step=SEARCH_STEP,
        ceiling=lambda _, verdict: overload_ceiling(verdict),
    )


def search_slo(setup: SimSetup, *, ttft_s: float | None = None, attainment: float | None = None) -> Slo:
    """The SLO a run is judged by: the scenario's ``[slo]`` (TTFT bound: ``[slo] ttft_s``, else
    ``[simulate] ttft_slo_s``), with the command's overrides."""
    scen = setup.deployment.slo
    return Slo(
        ttft_s=ttft_s or scen.ttft_s or setup.spec.ttft_slo_s,
        tpot_s=scen.tpot_s,
        attainment=attainment or scen.attainment,
    )


def _stability_rule(slo: Slo) -> dict[str, Any]:
    return {
        "warmup_share": WARMUP_SHARE,
        "throughput_tol": THROUGHPUT_TOL,
        "trend_share": TREND_SHARE,
        "probe_span_ttft_bounds": PROBE_SPAN_TTFT_BOUNDS,
        "probe_span_s": probe_span_s(slo.ttft_s),
    }


def _check(req: SimulateRequest) -> None:
    for r in req.rates:
        if not (r > 0 and math.isfinite(r)):
            raise ScenarioError(f"rates must be > 0 requests/s, got {r:g}")
    if req.attainment is not None and not 0 < req.attainment <= 1:
        raise ScenarioError(f"--attainment must be in (0, 1], got {req.attainment:g}")
    if req.ttft_slo_s is not None and not req.ttft_slo_s > 0:
        raise ScenarioError(f"--ttft-slo must be > 0 s, got {req.ttft_slo_s:g}")
    if req.sessions is not None and (req.trace is None or req.rates or req.find_max_rate):
        raise ScenarioError(
            "session mode replays a trace at its own timestamps: give a trace, drop --rate/--find-max-rate"
        )


def simulate(setup: SimSetup, req: SimulateRequest) -> dict[str, Any]:
    """Run the command: every topology, every rate (or the Λ_max search); returns the JSON summary."""
    _check(req)
    seed = setup.spec.seed if req.seed is None else req.seed
    slo = search_slo(setup, ttft_s=req.ttft_slo_s, attainment=req.attainment)
    rates: list[float | None] = list(req.rates)
    if not rates:
        rates = [None] if (req.trace is not None and req.trace_timestamps) else [scenario_rate(setup)]
    workload = partial(
        build_workload, setup, trace=req.trace, seed=seed, requests=req.requests,
        duration_s=req.duration_s, context=req.context,
    )  # fmt: skip
    # Validate the workload once (context fit, non-empty) before any long run, and record the rule.
    checked, fit = workload(rate=rates[0] or (1.0 if req.find_max_rate else None))
    # Session mode: a broken session (a gap in its turns) is one line before any run.
    plan = None if req.sessions is None else session_plan(checked, req.sessions, seed=seed)
    if req.find_max_rate:
        # Λ_max is a steady-state figure: a transient link fault has no place in its probes.
        setup = replace(setup, stack=replace(setup.stack, link_events=()))
    span = probe_span_s(slo.ttft_s) if req.find_max_rate else None
    probe_rows: list[dict[str, Any]] = []

    run_id = new_run_id("sim")
    meta = {
        "source": "simulate",
        "seed": seed,
        "rates_rps": [r for r in rates if r is not None],
        "find_max_rate": req.find_max_rate,
        "slo": slo.to_dict(),
        "workload": "trace" if req.trace is not None else "synthetic",
        "trace_source": req.trace.source if req.trace is not None else None,
        "context": fit.as_dict(),
        "sessions": None if plan is None else {"sessions": plan.sessions, **asdict(req.sessions)},
        **({"stability_rule": _stability_rule(slo)} if req.find_max_rate else {}),
        **setup.describe(),
    }
    result: dict[str, Any] = {"topologies": {}, "run_dir": str(req.out_dir / run_id)}
    with RunDirectory(
        req.out_dir / run_id, meta, run_id=run_id, sample_interval_s=setup.spec.sample_interval_s
    ) as run_dir:
        for name, topo in setup.topologies.items():
            entry: dict[str, Any] = {
                "kind": topo.kind,
                "n_p": topo.n_p,
                "n_d": topo.n_d,
                "n_prfaas": topo.n_prfaas,
                "threshold_tokens": topo.threshold_tokens,
                "planner_lambda_max": topo.planner_lambda_max,
                "lambda_max": None,  # filled in by --find-max-rate
            }
            run_rates = rates
            if req.find_max_rate:
                found = search_topology(setup, topo, slo, workload)
                probes = [verdict.as_dict() for _, verdict, _ in found.history]
                probe_rows += [{"topology": name, **p} for p in probes]
                entry.update(
                    lambda_max=found.rate_rps,
                    probe_count=found.probes,
                    bracketed=found.bracketed,  # False: no probe failed, Λ_max is only a lower bound
                    probes=probes,
                    stability=None if found.at_rate is None else found.at_rate.as_dict(),
                )
                run_rates = [found.rate_rps] if found.rate_rps > 0 else []
            runs = {}
            for rate in run_rates:
                label = name if len(run_rates) == 1 else f"{name}@{rate:g}rps"
                trace = workload(rate=rate, min_span_s=span)[0]  # at Λ_max: the passing probe's requests
                done = run_dir.run(setup.stack, topo, trace, label=label, slo=slo, sessions=plan)
                runs[label] = {"rate_rps": rate, **vars(done.summary)}
            if len(runs) == 1:
                entry.update(next(iter(runs.values())))
            else:
                entry["runs"] = runs
            result["topologies"][name] = entry
        if probe_rows:  # every probe of the search, for the dashboard's attainment-vs-rate figure
            pd.DataFrame(probe_rows).to_csv(run_dir.path / "probes.csv", index=False)
        run_dir.finish(result["topologies"])
    return result


def topology_rows(result: dict[str, Any]) -> Sequence[dict[str, Any]]:
    """Flat rows (one per topology and rate) for printing."""
    rows = []
    for name, entry in result["topologies"].items():
        for label, run in (entry.get("runs") or {name: entry}).items():
            rows.append({"topology": label, **{k: v for k, v in entry.items() if k != "runs"}, **run})
    return rows
