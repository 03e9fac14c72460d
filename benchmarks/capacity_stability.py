"""Is ``simulate --find-max-rate``'s Λ_max a property of the deployment or of the probe length?

For each scenario and each probe size (``--requests``: synthetic requests, or the trace rows taken), runs
the Λ_max search and prints, per topology: Λ_max, the planner's Λ_max, achieved/offered throughput over
the measured window at Λ_max (``harness.serving.stability``), the requests in the passing probe, how
many probes the search ran and its wall time; then Λ_max's change from the smallest probe size.

    .venv/bin/python benchmarks/capacity_stability.py workloads/paper-case-study.toml \\
        workloads/mooncake-conversation.toml workloads/azure-code.toml [--sizes 1000,8000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from harness.scenario import load_scenario
from harness.serving.config import prepare
from harness.serving.run import SimulateRequest, simulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenarios", nargs="+")
    ap.add_argument("--sizes", default="1000,8000", help="comma-separated requests per probe")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"{'scenario':<22} {'topology':<12} {'size':>5} {'Λ_max':>6} {'plan':>6} {'plan/sim':>8} "
        f"{'ach/off':>7} {'probe n':>7} {'probes':>6} {'wall s':>6} {'vs first':>8}"
    )
    for path in args.scenarios:
        scenario = load_scenario(path)
        setup = prepare(scenario)
        first: dict[str, float] = {}
        for size in sizes:
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                request = SimulateRequest(
                    trace=setup.deployment.workload.trace,
                    find_max_rate=True,
                    requests=size,
                    out_dir=Path(out),
                )
                result = simulate(setup, request)
                wall = time.perf_counter() - start
            for name, entry in result["topologies"].items():
                lam, plan, at = entry["lambda_max"], entry["planner_lambda_max"], entry["stability"]
                first.setdefault(name, lam)
                print(
                    f"{scenario.name:<22} {name:<12} {size:>5} {lam:>6.2f} {plan:>6.2f} {plan / lam - 1:>+8.1%} "
                    f"{at['achieved_rps'] / at['offered_rps']:>7.1%} {at['requests']:>7} {entry['probe_count']:>6} "
                    f"{wall:>6.0f} {lam / first[name] - 1:>+8.1%}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
