"""Simulate the whole Mooncake conversation trace through each topology of the paper's case study.

Prints, per topology: wall time (including writing records.jsonl/parquet and the time series),
simulated seconds / wall seconds, and the process's peak RSS so far. Targets (issue 3): >= 200x real
time and < 1 GiB on a 2-core machine. With ``--find-max-rate``: the wall time of the scenario's Λ_max
search per topology (what ``simulate SCENARIO --find-max-rate`` spends), its result and probe count.

    .venv/bin/python benchmarks/bench_simulate.py [--trace PATH] [--scenario PATH] [--find-max-rate]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from harness.scenario import load_scenario
from harness.serving.config import prepare
from harness.serving.run import SimulateRequest, simulate
from harness.traces.readers import read_trace

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--trace", default=str(REPO.parent / "shared" / "traces" / "mooncake_conversation_trace.jsonl")
    )
    ap.add_argument("--scenario", default=str(REPO / "workloads" / "paper-case-study.toml"))
    ap.add_argument("--find-max-rate", action="store_true", help="time the Λ_max search instead")
    args = ap.parse_args()
    scenario = load_scenario(args.scenario)
    if args.find_max_rate:
        find_max_rate(scenario)
        return
    trace = read_trace(args.trace)
    names = list(prepare(scenario).topologies)
    print(f"trace: {len(trace)} requests over {trace.duration_s:.0f} s ({args.trace})")
    print(f"{'topology':<12} {'wall s':>7} {'sim s':>7} {'sim/wall':>9} {'peak RSS MiB':>13} {'records':>8}")
    with tempfile.TemporaryDirectory() as out:
        for name in names:
            setup = prepare(scenario, topologies=[name])
            t0 = time.perf_counter()
            result = simulate(setup, SimulateRequest(trace=trace, context="clip", out_dir=Path(out)))
            wall = time.perf_counter() - t0
            entry = result["topologies"][name]
            simulated = entry["duration_s"]
            rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(
                f"{name:<12} {wall:>7.2f} {simulated:>7.0f} {simulated / wall:>9.0f} {rss_mib:>13.0f} {entry['requests']:>8}"
            )


def find_max_rate(scenario) -> None:
    print(f"{'topology':<12} {'wall s':>7} {'Λ_max':>6} {'probes':>6}")
    total = 0.0
    with tempfile.TemporaryDirectory() as out:
        for name in prepare(scenario).topologies:
            setup = prepare(scenario, topologies=[name])
            t0 = time.perf_counter()
            result = simulate(setup, SimulateRequest(find_max_rate=True, out_dir=Path(out)))
            entry = result["topologies"][name]
            wall = time.perf_counter() - t0
            total += wall
            print(f"{name:<12} {wall:>7.2f} {entry['lambda_max']:>6.2f} {entry['probe_count']:>6}")
    print(f"{'all':<12} {total:>7.2f}")


if __name__ == "__main__":
    main()
