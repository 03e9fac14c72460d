"""``prfaas-bench simulate`` as a library call: every topology at every rate, or at its Λ_max.

The pieces live beside it: the requests (``workload``), one topology's run and the run directory
(``runner``), and the Λ_max search (``rate_search``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from harness.analysis.summary import Slo
from harness.errors import ScenarioError
from harness.records import new_run_id
from harness.serving.config import SimSetup
from harness.serving.rate_search import find_max_rate
from harness.serving.runner import RunDirectory, TopologyRun, run_topology
from harness.serving.workload import build_workload, scenario_rate
from harness.traces.context import ContextPolicy
from harness.traces.frame import Trace


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


def meets_attainment(slo: Slo) -> Callable[[float, TopologyRun], bool]:
    """The Λ_max search's verdict on one probe: its SLO attainment reaches the target."""

    def passes(rate: float, run: TopologyRun) -> bool:
        return (run.summary.slo_attainment or 0.0) >= slo.attainment

    return passes


def _check(req: SimulateRequest) -> None:
    for r in req.rates:
        if not (r > 0 and math.isfinite(r)):
            raise ScenarioError(f"rates must be > 0 requests/s, got {r:g}")
    if req.attainment is not None and not 0 < req.attainment <= 1:
        raise ScenarioError(f"--attainment must be in (0, 1], got {req.attainment:g}")
    if req.ttft_slo_s is not None and not req.ttft_slo_s > 0:
        raise ScenarioError(f"--ttft-slo must be > 0 s, got {req.ttft_slo_s:g}")


def simulate(setup: SimSetup, req: SimulateRequest) -> dict[str, Any]:
    """Run the command: every topology, every rate (or the Λ_max search); returns the JSON summary."""
    _check(req)
    seed = setup.spec.seed if req.seed is None else req.seed
    scen = setup.deployment.slo
    slo = Slo(
        ttft_s=req.ttft_slo_s or scen.ttft_s or setup.spec.ttft_slo_s,
        tpot_s=scen.tpot_s,
        attainment=req.attainment or scen.attainment,
    )
    rates: list[float | None] = list(req.rates)
    if not rates:
        rates = [None] if (req.trace is not None and req.trace_timestamps) else [scenario_rate(setup)]
    workload = partial(
        build_workload, setup, trace=req.trace, seed=seed, requests=req.requests,
        duration_s=req.duration_s, context=req.context,
    )  # fmt: skip
    # Validate the workload once (context fit, non-empty) before any long run, and record the rule.
    _, fit = workload(rate=rates[0] or (1.0 if req.find_max_rate else None))
    if req.find_max_rate:
        # Λ_max is a steady-state figure: a transient link fault has no place in its probes.
        setup = replace(setup, stack=replace(setup.stack, link_events=()))

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
                found = find_max_rate(
                    lambda rate, topo=topo: run_topology(setup.stack, topo, workload(rate=rate)[0], slo=slo),
                    meets_attainment(slo),
                    start_rps=topo.planner_lambda_max,
                )
                if not found.bracketed:  # the requests all fit in the SLO even arriving at once
                    raise ScenarioError(
                        f"--find-max-rate: the SLO is still met at {found.rate_rps:.3g} req/s, so "
                        f"{len(workload(rate=found.rate_rps)[0])} requests are too few to load the system; "
                        "give more (--requests or [simulate] requests)"
                    )
                entry.update(lambda_max=found.rate_rps, probes=found.probes)
                run_rates = [found.rate_rps] if found.rate_rps > 0 else []
            runs = {}
            for rate in run_rates:
                label = name if len(run_rates) == 1 else f"{name}@{rate:g}rps"
                done = run_dir.run(setup.stack, topo, workload(rate=rate)[0], label=label, slo=slo)
                runs[label] = {"rate_rps": rate, **vars(done.summary)}
            if len(runs) == 1:
                entry.update(next(iter(runs.values())))
            else:
                entry["runs"] = runs
            result["topologies"][name] = entry
        run_dir.finish(result["topologies"])
    return result


def topology_rows(result: dict[str, Any]) -> Sequence[dict[str, Any]]:
    """Flat rows (one per topology and rate) for printing."""
    rows = []
    for name, entry in result["topologies"].items():
        for label, run in (entry.get("runs") or {name: entry}).items():
            rows.append({"topology": label, **{k: v for k, v in entry.items() if k != "runs"}, **run})
    return rows
