"""Sweep throughput, the local process pool against Ray: points per second and the overhead per point.

Two kinds of point on the case study: ``plan`` points (the analytic planner, milliseconds: the
executor's own overhead dominates) and ``simulate`` points of 2,000 requests on the PrfaaS topology
(seconds each). For each executor it prints the points, its start-up (until the first point is
dispatched: a local Ray starts here; pool processes start on the first submit, so theirs lands in the
overhead), the wall time, points/s end to end, the mean time a point computes inside its worker, and
the overhead per point: (wall − start-up) × slots / points − that mean, i.e. what a slot spends per
point beyond computing it (dispatch, pickling, result transfer, the driver's Parquet write); and the
same in steady state ("steady": from the first point back to the last, so neither Ray's start nor
the pool's process start counts).

    .venv/bin/python benchmarks/bench_sweep.py [--workers 1] [--plan-points 200] [--simulate-points 8]
        [--batch-size 1] [--executors local,ray]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from harness.sweep import LocalPool, journal, load_sweep, read_rows, run_sweep

REPO = Path(__file__).resolve().parent.parent
PAPER = REPO / "workloads" / "paper-case-study.toml"


def _spec(tmp: Path, kind: str, points: int) -> Path:
    if kind == "plan":  # distinct bandwidths, so every point is its own
        gbps = ", ".join(f"{10 + i * 0.5:g}" for i in range(points))
        body = f'run = ["plan"]\n[grid]\n"link.bandwidth_gbps" = [{gbps}]\n'
    else:
        seeds = ", ".join(str(i) for i in range(points))
        body = (
            'run = ["simulate"]\ntopologies = ["prfaas"]\n'
            f'[grid]\n"simulate.requests" = [2000]\nrate = [2.0]\nseed = [{seeds}]\n'
        )
    path = tmp / f"{kind}.toml"
    path.write_text(f'scenario = "{PAPER}"\n{body}')
    return path


def _executor(name: str, workers: int):
    if name == "ray":
        from harness.sweep.rayexec import RayExecutor

        return RayExecutor(None, workers=workers)
    return LocalPool(workers)


def _measure(spec: Path, name: str, workers: int, batch_size: int) -> dict:
    sweep = load_sweep(spec)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        executor = _executor(name, workers)
        t0 = time.time()
        result = run_sweep(sweep, executor, out, batch_size=batch_size)
        wall = time.time() - t0
        entries = journal(out)
        first = min(e["time"] for e in entries if e["event"] == "dispatched")
        finished = sorted((e["time"], e["key"]) for e in entries if e["event"] == "finished")
        rows = read_rows(out).set_index("key")
    n = len(rows)
    startup = first - t0
    compute = float(rows["wall_s"].mean())
    return {
        "points": n,
        "failed": result.progress.failed,
        "slots": executor.slots,
        "startup_s": startup,
        "wall_s": wall,
        "points_per_s": n / wall,
        "compute_s": compute,
        "overhead_ms": ((wall - startup) * executor.slots / n - compute) * 1e3,
        # from the first point back to the last, less the compute of the points after the first: no
        # start-up, no pool process starting, no first point paying the worker's imports
        "steady_ms": (
            (finished[-1][0] - finished[0][0]) * executor.slots / (n - 1)
            - float(rows.loc[[key for _, key in finished[1:]], "wall_s"].mean())
        )
        * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=1, help="pool processes / local Ray CPUs (default 1)")
    ap.add_argument("--plan-points", type=int, default=200)
    ap.add_argument("--simulate-points", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--executors", default="local,ray")
    args = ap.parse_args()
    print(f"workers {args.workers}, batch size {args.batch_size}; load average {os.getloadavg()[0]:.1f}")
    header = (
        f"{'points':<22} {'executor':<8} {'n':>5} {'slots':>5} {'start s':>8} {'wall s':>8} {'points/s':>9} "
        f"{'compute s':>10} {'overhead ms':>12} {'steady ms':>10}"
    )
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for kind, count in (("plan", args.plan_points), ("simulate", args.simulate_points)):
            if count < 2:  # 0 skips a kind; the steady figure needs two points
                continue
            spec = _spec(Path(tmp), kind, count)
            label = "plan" if kind == "plan" else "simulate 2,000 requests"
            for name in args.executors.split(","):
                m = _measure(spec, name, args.workers, args.batch_size)
                print(
                    f"{label:<22} {name:<8} {m['points']:>5} {m['slots']:>5} {m['startup_s']:>8.2f} "
                    f"{m['wall_s']:>8.2f} {m['points_per_s']:>9.3f} {m['compute_s']:>10.4f} "
                    f"{m['overhead_ms']:>12.1f} {m['steady_ms']:>10.1f}"
                    + (f"  ({m['failed']} failed)" if m["failed"] else "")
                )
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
