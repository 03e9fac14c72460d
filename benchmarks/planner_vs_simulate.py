"""The planner's Λ_max against the simulator's, per topology, on scenario files (docs/planner.md's table).

For each topology: the plan (configuration, Λ_max); ``simulate --find-max-rate``'s Λ_max (SLO search;
the whole trace per probe, or ``--requests`` synthetic requests) with the throughput achieved at it;
and the simulator's saturated throughput — offered ``--overload`` times the planner's Λ_max, the
completion rate between the 20th and 80th percentile completions — which measures capacity without a
TTFT bound.

    .venv/bin/python benchmarks/planner_vs_simulate.py workloads/paper-case-study.toml [more.toml ...]
        [--requests 8000] [--overload 1.3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from harness.scenario import load_scenario
from harness.serving.config import prepare
from harness.serving.run import SimulateRequest, simulate
from harness.serving.runner import run_topology
from harness.serving.workload import retime, synthetic_trace
from harness.traces.context import fit_context


def saturated_rps(setup, name: str, rate: float, requests: int) -> float:
    """Completion rate over the middle 60% of completions when ``rate`` overloads the topology."""
    workload = setup.deployment.workload
    if workload.trace is not None:
        trace = retime(workload.trace, rate, 0)
    else:
        trace = synthetic_trace(setup, requests, rate, 0)
        trace, _ = fit_context(trace, setup.deployment.model.context_length, "clip")
    done: list[float] = []
    run_topology(setup.stack, setup.topologies[name], trace, sink=lambda r: done.append(r.last_token_s))
    ends = np.sort([t for t in done if t is not None])
    a, b = int(0.2 * len(ends)), int(0.8 * len(ends))
    return (b - a) / (ends[b] - ends[a])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenarios", nargs="+")
    ap.add_argument("--requests", type=int, default=8000, help="synthetic requests per probe")
    ap.add_argument("--overload", type=float, default=1.3, help="offered / planner Λ_max for saturation")
    args = ap.parse_args()
    print(
        f"{'scenario':<22} {'topology':<12} {'N_prfaas/N_p/N_d':>16} {'t':>7} {'plan':>6} {'sim':>6} "
        f"{'plan/sim':>8} {'achieved':>8} {'saturated':>9} {'plan/sat':>8}"
    )
    for path in args.scenarios:
        scenario = load_scenario(path)
        setup = prepare(scenario)
        workload = setup.deployment.workload
        with tempfile.TemporaryDirectory() as out:
            request = SimulateRequest(
                trace=workload.trace,
                find_max_rate=True,
                requests=None if workload.trace is not None else args.requests,
                out_dir=Path(out),
            )
            result = simulate(setup, request)
        for name, entry in result["topologies"].items():
            plan, sim = entry["planner_lambda_max"], entry["lambda_max"]
            sat = saturated_rps(setup, name, args.overload * plan, args.requests)
            split = f"{entry['n_prfaas'] or '-'}/{entry['n_p'] or '-'}/{entry['n_d']}"
            t = f"{entry['threshold_tokens']:,.0f}" if entry["threshold_tokens"] else "-"
            print(
                f"{scenario.name:<22} {name:<12} {split:>16} {t:>7} {plan:>6.2f} {sim:>6.2f} "
                f"{plan / sim - 1:>+8.1%} {entry['throughput_rps'] / sim:>8.1%} {sat:>9.2f} {plan / sat - 1:>+8.1%}",
                flush=True,
            )


if __name__ == "__main__":
    main()
