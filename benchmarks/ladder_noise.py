"""How often a capacity-ladder rung's verdict comes out "wrong" for its span, in simulate.

bench's ladder judges each rung as a Λ_max probe (``harness.serving.stability``); a short rung's verdict
is noisy near Λ_max. This runs every topology of a scenario at each share of its simulated Λ_max, for
each rung span and several seeds (the rung's Poisson arrivals), exactly as the ladder builds a rung,
and prints how many rungs passed. Λ_max comes from ``simulate --find-max-rate``'s search (run first).

    .venv/bin/python benchmarks/ladder_noise.py workloads/paper-case-study.toml \\
        --spans 180,240,300 --shares 0.6,0.85,1.0,1.15 --seeds 6
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from functools import partial
from pathlib import Path

from harness.capacity_ladder import LadderPlan, rung_requests, simulate_rung
from harness.scenario import load_scenario
from harness.serving.config import prepare
from harness.serving.run import SimulateRequest, search_slo, simulate
from harness.serving.workload import build_workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario")
    ap.add_argument("--spans", default="180,240,300", help="rung spans, model seconds")
    ap.add_argument("--shares", default="0.85,1.0,1.15", help="rungs, shares of the simulated Λ_max")
    ap.add_argument("--seeds", type=int, default=6)
    args = ap.parse_args()
    scenario = load_scenario(args.scenario)
    setup = prepare(scenario, warnings=[])
    slo = search_slo(setup)
    source = setup.deployment.workload.read
    with tempfile.TemporaryDirectory(prefix="ladder-noise-") as tmp:
        found = simulate(setup, SimulateRequest(trace=source, find_max_rate=True, out_dir=Path(tmp)))
    lam = {n: e["lambda_max"] for n, e in found["topologies"].items()}
    stack = replace(setup.stack, link_events=())
    shares = tuple(float(x) for x in args.shares.split(","))
    print(
        "span s  topology      Λ_max  " + "  ".join(f"x{s:<5g}" for s in shares) + "   (rungs passed / seeds)"
    )
    for span in (float(x) for x in args.spans.split(",")):
        plan = LadderPlan(shares=shares, span_s=span, lambda_max=lam)
        passed: dict[tuple[str, float], int] = {}
        for seed in range(args.seeds):
            workload = partial(build_workload, setup, trace=source, seed=seed)
            for name, share, rate, n in plan.rungs():
                trace = rung_requests(workload, rate, n, span)  # exactly as bench's ladder
                ok = simulate_rung(stack, setup.topologies[name], trace, rate, slo).passed
                passed[name, share] = passed.get((name, share), 0) + ok
        for name in lam:
            cells = "  ".join(f"{passed.get((name, s), 0)}/{args.seeds:<4}" for s in shares)
            print(f"{span:6.0f}  {name:12s} {lam[name]:6.3f}  {cells}", flush=True)


if __name__ == "__main__":
    main()
