"""Where the replay client spends its CPU per token: cProfile of one closed-loop run. Prints; not a test.

    .venv/bin/python benchmarks/profile_loadgen.py [--writes token-dumps] [--requests 256] [--top 25]

Closed loop at concurrency 64, 32-in/1024-out, against ``fake-server --writes WRITES`` in its own
process (``token-dumps``: one write per token, each ``json.dumps``-ed: the server shares the cores and
the client gets the fewest chunks per read). Prints reads per token event (under the profiler the
client is slower, so more chunks gather per read than in a plain run: 0.14 reads per event there),
then the functions with the most own time and with the most cumulative time, each as a share of the
run's profiled time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from benchmarks.bench_loadgen import synthetic_trace
from harness.loadgen import Endpoint, LoadSpec, ReplayConfig, replay
from harness.loadgen.fakeserver import WRITES, fake_server_process
from harness.records import read_records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writes", choices=WRITES, default="token-dumps")
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    load = LoadSpec(rate_rps=float("inf"), concurrency=64, max_requests=args.requests)
    with fake_server_process("--writes", args.writes) as url, tempfile.TemporaryDirectory() as out:
        cfg = ReplayConfig(endpoints=(Endpoint(name="m", url=url, model="m"),), load=load, progress=False)
        prof = cProfile.Profile()
        prof.runcall(replay, synthetic_trace(1000, 32, 1024), cfg, out, quiet=True)
        df = read_records(out)
    events = int(df.itl_s.map(len).sum() + len(df))
    stats = pstats.Stats(prof)
    total = stats.total_tt  # type: ignore[attr-defined]
    reads = sum(v[1] for k, v in stats.stats.items() if k[2] == "readany")  # type: ignore[attr-defined]
    print(f"{len(df)} requests, {events:,} token events, {reads:,} reads ({reads / events:.2f} per event); "
          f"profiled {total:.2f} s = {total / events * 1e6:.1f} us per event")  # fmt: skip
    for key, title in (("tottime", "own time"), ("cumulative", "cumulative")):
        print(f"\n-- top {args.top} by {title} (share of profiled time) --")
        rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2 if key == "tottime" else 3], reverse=True)  # type: ignore[attr-defined]
        for (file, line, fn), (_, calls, tt, ct, _) in rows[: args.top]:
            where = f"{Path(file).name}:{line}({fn})"
            print(f"  {tt / total:6.1%} own {ct / total:6.1%} cum {calls:>9,} calls  {where}")


if __name__ == "__main__":
    main()
