"""How fast is the load generator itself? Prints figures; not a test.

    .venv/bin/python benchmarks/bench_loadgen.py [--quick]
    .venv/bin/python benchmarks/bench_loadgen.py --vs-vllm [--quick] [--requests N] [--reps N]

Against ``prfaas-bench fake-server`` (streams every token at once) in separate processes:

0. the endpoint alone: a raw aiohttp loop at concurrency 64 that reads whole bodies without parsing,
   so the figures below say whether the client or the server was the limit;
1. closed loop, concurrency 64, rate=inf: req/s with 32-token prompts and 16-token outputs; SSE token
   events/s with 1024-token outputs (every token's timestamp recorded) — 1 and 2 worker processes;
2. open loop: the highest Poisson rate whose send-lag p99 stays <= 5 ms — 1 and 2 workers;
3. memory: peak RSS of a replay process after 10k and after 100k requests (records streamed, not held).

``--vs-vllm`` runs only section 4: our client beside vLLM's ``bench serve`` in one run, alternating,
against three kinds of fake server (``benchmarks/loadgen_vs_vllm.py``; needs ``make vllm-venv``).

``--ray-workers 1,2,3`` runs only sections 2 and 5: section 2's open-loop search with local worker
processes, then the same with that many Ray actors (``replay --ray-address``) on a one-node Ray that
``ray start`` runs on 127.0.0.1 for the benchmark (needs ``pip install -e '.[ray]'``), with each count's
efficiency per worker against one Ray worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from harness.loadgen import Endpoint, LoadSpec, RayPlacement, ReplayConfig, replay
from harness.loadgen.fakeserver import WRITES, fake_server_process
from harness.records import read_records
from harness.traces.frame import Trace


def synthetic_trace(n: int, n_in: int, n_out: int) -> Trace:
    """``n`` requests of fixed lengths; prompts share 50 prefixes (a warm block cache, as in real traces)."""
    blocks = (n_in + 511) // 512
    return Trace(
        arrival_s=np.zeros(n),
        input_tokens=np.full(n, n_in),
        output_tokens=np.full(n, n_out),
        hash_values=np.repeat(np.arange(n) % 50, blocks).astype(np.int64),
        hash_offsets=np.arange(n + 1, dtype=np.int64) * blocks,
    )


async def _raw_loop(url: str, n_in: int, n_out: int, requests: int, concurrency: int) -> float:
    import aiohttp

    body = json.dumps(
        {"model": "m", "prompt": " the" * n_in, "max_tokens": n_out, "stream": True, "ignore_eos": True}
    ).encode()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        left = 0

        async def one() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.post(url + "/v1/completions", data=body) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"endpoint answered {r.status}")

        left = 4 * concurrency  # open the connections first, as the harness's timed span does
        await asyncio.gather(*(one() for _ in range(concurrency)))
        left = requests
        t = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(concurrency)))
        return requests / (time.perf_counter() - t)


def endpoint_alone(url: str, n_out: int, requests: int) -> float:
    """Requests/s the fake server delivers to a client that does nothing but read (no SSE parsing)."""
    return asyncio.run(_raw_loop(url, 32, n_out, requests, 64))


def closed_loop(url: str, n_out: int, requests: int, workers: int) -> dict:
    trace = synthetic_trace(1000, 32, n_out)
    load = LoadSpec(rate_rps=float("inf"), concurrency=64, max_requests=requests)
    cfg = ReplayConfig(
        endpoints=(Endpoint(name="b", url=url, model="m"),), load=load, workers=workers, progress=False
    )
    with tempfile.TemporaryDirectory() as out:
        replay(trace, cfg, out, quiet=True)
        df = read_records(out)
    ok = df[df.status == "ok"]
    span = float(ok.last_token_s.max() - ok.sent_s.min())
    events = int(ok.itl_s.map(len).sum() + len(ok))  # every content event has a timestamp
    return {"req_s": len(ok) / span, "events_s": events / span, "failed": int((df.status != "ok").sum())}


def open_loop_max_rate(
    url: str, workers: int, rates: list[float], seconds: float, ray: RayPlacement | None = None
) -> tuple[float, list]:
    """Highest rate in ``rates`` with send-lag p99 <= 5 ms (and no failures), with every rate's p99;
    with ``ray``, the workers are Ray actors on that cluster."""
    trace = synthetic_trace(1000, 32, 16)
    best, rows = 0.0, []
    for rate in rates:
        load = LoadSpec(arrival="poisson", rate_rps=rate, max_requests=int(rate * seconds), seed=1)
        cfg = ReplayConfig(
            endpoints=(Endpoint(name="b", url=url, model="m"),), load=load, workers=workers, progress=False,
            ray=ray,
        )  # fmt: skip
        with tempfile.TemporaryDirectory() as out:
            res = replay(trace, cfg, out, quiet=True)
        s = res.summaries["b"]
        p99 = s["send_lag_s"]["p99"] * 1e3
        rows.append((rate, p99, s["failed"]))
        if p99 <= 5.0 and s["failed"] == 0:
            best = rate
        else:
            break
    return best, rows


_MEM_CHILD = """
import json, resource, sys, tempfile
from benchmarks.bench_loadgen import synthetic_trace
from harness.loadgen import Endpoint, LoadSpec, RayPlacement, ReplayConfig, replay
n, url = int(sys.argv[1]), sys.argv[2]
cfg = ReplayConfig(endpoints=(Endpoint(name="m", url=url, model="m"),), progress=False,
                   load=LoadSpec(rate_rps=float("inf"), concurrency=64, max_requests=n))
with tempfile.TemporaryDirectory() as out:
    replay(synthetic_trace(1000, 32, 16), cfg, out, quiet=True)
print(json.dumps({"maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def peak_rss_mib(url: str, requests: int) -> float:
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", _MEM_CHILD, str(requests), url],
        capture_output=True, text=True, check=True, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)},
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])["maxrss_mib"]


def vs_vllm(requests: int, reps: int, servers: tuple[str, ...]) -> None:
    """Section 4: the side-by-side table (``benchmarks/loadgen_vs_vllm.py``)."""
    repo = Path(__file__).resolve().parent.parent
    sys.path[:0] = [str(repo), str(repo / "tests")]  # run as a script: neither is on the path
    from realengine.vllm import VENV, build_tiny_model, vllm_python

    from benchmarks.loadgen_vs_vllm import CONCURRENCY, N_IN, N_OUT, print_table, side_by_side

    python = vllm_python()
    if python is None:
        sys.exit(f"no vLLM venv at {VENV}: `make vllm-venv` installs it")
    print(f"\n[4] beside vLLM's bench serve: closed loop, concurrency {CONCURRENCY}, {N_IN}-in/{N_OUT}-out, "
          f"{requests} requests per run, {reps} runs per client in turn")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tiny_model(Path(tmp) / "model", python)  # bench serve needs one; nothing downloaded
        print_table(side_by_side(requests, reps, python, tokenizer, servers))


RATES = [100, 200, 300, 400, 500, 600, 800, 1000, 1200, 1500, 2000]


def open_loop_section(url: str, counts: list[int], seconds: float, ray: RayPlacement | None = None) -> None:
    """Section 2 (local worker processes) or 5 (Ray actors): each count's highest rate and p99s."""
    one = None  # one worker's highest rate, for each count's efficiency per worker
    for w in counts:
        best, rows = open_loop_max_rate(url, w, RATES, seconds, ray)
        one = best if w == 1 else one
        detail = ", ".join(f"{r:g}:{p:.1f}ms" + (f"/{f} failed" if f else "") for r, p, f in rows)
        per = f"; {best / (w * one):.2f} of one worker's rate per worker" if one and w > 1 else ""
        print(f"  workers={w}: {best:,.0f} req/s{per}   (rate: p99 send lag -> {detail})")


def ray_section(url: str, counts: list[int], seconds: float) -> None:
    """Section 5 on a one-node Ray started here with ``ray start`` (every port given, as the tests do)."""
    repo = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(repo / "tests"))
    from raynodes import free_ports, loopback, node_argv, ray_env, ray_node

    env = ray_env(single_host=True)
    os.environ.update(env)  # this process is the driver: the cluster's token and single-host switch
    ports = free_ports(5)
    with tempfile.TemporaryDirectory(prefix="pfbench-", dir="/tmp") as temp:
        argv = node_argv("127.0.0.1", ports, cpus=max(counts), temp=Path(temp))
        with ray_node(loopback, argv, env, Path(temp) / "head.log"):
            print(
                f"\n[5] open loop on Ray actors (one node, {max(counts)} CPUs): highest rate with send-lag p99 <= 5 ms"
            )
            open_loop_section(url, counts, seconds, RayPlacement(f"127.0.0.1:{ports[0]}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller runs (a smoke check of the script)")
    ap.add_argument("--vs-vllm", action="store_true", help="only section 4: beside vLLM's bench serve")
    ap.add_argument("--requests", type=int, help="section 4: requests per run (default 640; --quick 128)")
    ap.add_argument("--reps", type=int, default=2, help="section 4: runs per client and server (default 2)")
    ap.add_argument(
        "--servers", default="burst,token,token-dumps", help="section 4: fake-server --writes modes"
    )
    ap.add_argument("--ray-workers", help="only sections 2 and 5: Ray worker counts, e.g. 1,2,3")
    args = ap.parse_args()
    servers = tuple(args.servers.split(","))
    if not set(servers) <= set(WRITES) or (args.requests or 1) < 1 or args.reps < 1:
        ap.error(f"--servers takes some of {','.join(WRITES)}; --requests and --reps at least 1")
    q = args.quick
    n_short, n_long = (3000, 300) if q else (20_000, 2_000)
    load = os.getloadavg()[0]
    print(
        f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; load average {load:.1f} at start"
    )
    if args.vs_vllm:
        vs_vllm(args.requests or (128 if q else 640), args.reps, servers)
        print(f"\nload average {os.getloadavg()[0]:.1f} at end (other processes share these cores)")
        return
    if args.ray_workers:
        counts = [int(c) for c in args.ray_workers.split(",")]
        with fake_server_process() as url:
            print("\n[2] open loop, Poisson, local worker processes: highest rate with send-lag p99 <= 5 ms")
            open_loop_section(url, [1, 2], 2.0 if q else 5.0)
            ray_section(url, counts, 2.0 if q else 5.0)
        print(f"\nload average {os.getloadavg()[0]:.1f} at end (other processes share these cores)")
        return
    with fake_server_process() as url:
        endpoint_alone(url, 16, 500)  # warm up
        raw_short = endpoint_alone(url, 16, n_short)
        raw_long = endpoint_alone(url, 1024, n_long)
        print(f"\n[0] endpoint alone (raw aiohttp loop, c=64, no parsing): {raw_short:,.0f} req/s (16-token outputs); "
              f"{raw_long * 1024:,.0f} tok/s (1024-token outputs)")  # fmt: skip
        print("\n[1] closed loop, concurrency 64, rate=inf")
        for w in (1, 2):
            short = closed_loop(url, 16, n_short, w)
            long = closed_loop(url, 1024, n_long, w)
            print(
                f"  workers={w}: {short['req_s']:,.0f} req/s (32-in/16-out; "
                f"{short['req_s'] / raw_short:.2f}x the endpoint alone); "
                f"{long['events_s']:,.0f} SSE token events/s with timestamps (1024-out; "
                f"{long['events_s'] / (raw_long * 1024):.2f}x the endpoint alone); failed={short['failed'] + long['failed']}"
            )
        print("\n[2] open loop, Poisson: highest rate with send-lag p99 <= 5 ms")
        open_loop_section(url, [1, 2], 2.0 if q else 5.0)
        print("\n[3] memory (one worker, closed loop c=64, 32-in/16-out): peak RSS of the replay process")
        for n in (10_000, 100_000) if not q else (2_000, 10_000):
            print(f"  {n:>7,} requests: {peak_rss_mib(url, n):,.0f} MiB")
    print(f"\nload average {os.getloadavg()[0]:.1f} at end (other processes share these cores)")


if __name__ == "__main__":
    main()
