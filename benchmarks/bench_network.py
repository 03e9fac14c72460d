"""Network emulation accuracy on this machine: configured versus measured, with the backend used.

    sudo .venv/bin/python benchmarks/bench_network.py [--quick]

Prints one Markdown table (it goes in docs/network.md). Checks and tolerances (issue 5):
  goodput at 100 Mbit/s and 1 Gbit/s, within 5% of rate * (mtu-52)/(mtu+14) (headers removed);
  the same 1 Gbit/s through the relay (10 ms each way), where the TAP relay carries every byte;
  round-trip time at 0, 10 and 25 ms one way, within the configured value + 1 ms (median of 30);
  loss at 1%, within 0.3 points (20,000 UDP datagrams, one direction);
  setup and teardown time of three sites (median of 3 builds, relays included).
Every row uses its own short-lived network built through the library (``Network.up``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from harness.network import Network, backend_name, parse_network
from harness.network.measure import expected_goodput_mbit, goodput_mbit, loss_pct, rtt_ms

PREFIX = "pfbb-"


def two_sites(**link) -> Network:
    table = {"sites": ["a", "b"], "links": [{"between": ["a", "b"], **link}]}
    return Network(parse_network(table), prefix=PREFIX, table=table)


def row(check: str, configured: str, expected: float, measured: float, unit: str, tol: str, ok: bool) -> str:
    return f"| {check} | {configured} | {expected:.2f} | {measured:.2f} | {unit} | {tol} | {'yes' if ok else 'NO'} |"


def bench_goodput(rate: float, delay_ms: float, seconds: float) -> str:
    with two_sites(rate_mbit=rate, delay_ms=delay_ms).up() as net:
        warm = max(0.5, 40 * delay_ms / 1e3)
        got = goodput_mbit(net, "a", "b", seconds=seconds, warmup_s=warm)
    exp = expected_goodput_mbit(rate, 1500)
    where = f"{rate:g} Mbit/s" + (f", {delay_ms:g} ms each way (relay)" if delay_ms else "")
    return row("goodput", where, exp, got, "Mbit/s", "±5%", abs(got / exp - 1) <= 0.05)


def bench_rtt(one_way_ms: float, samples: int) -> str:
    with two_sites(delay_ms=one_way_ms).up() as net:
        got = statistics.median(rtt_ms(net, "a", "b", samples=samples))
    conf = 2 * one_way_ms
    return row("RTT", f"{one_way_ms:g} ms one way", conf, got, "ms", "+1 ms", conf - 0.05 <= got <= conf + 1)


def bench_loss(pct: float, packets: int) -> str:
    with two_sites(forward={"loss_pct": pct}).up() as net:
        got = loss_pct(net, "a", "b", packets=packets, pps=20000)
    return row("loss", f"{pct:g}%", pct, got, "%", "±0.3 pt", abs(got - pct) <= 0.3)


def bench_setup(repeats: int) -> list[str]:
    table = {
        "sites": ["client", "local", "remote"],
        "links": [
            {"between": ["client", "local"], "rate_mbit": 1000},
            {"between": ["local", "remote"], "rate_mbit": 800, "delay_ms": 5},
        ],
    }
    ups, downs = [], []
    for _ in range(repeats):
        net = Network(parse_network(table), prefix=PREFIX, table=table)
        t0 = time.perf_counter()
        net.build(owner_pid=None)
        t1 = time.perf_counter()
        net.teardown()
        downs.append(time.perf_counter() - t1)
        ups.append(t1 - t0)
    return [
        f"| setup, 3 sites + 2 relays | median of {repeats} | - | {statistics.median(ups):.2f} | s | - | - |",
        f"| teardown, 3 sites + 2 relays | median of {repeats} | - | {statistics.median(downs):.2f} | s | - | - |",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="shorter measurements (about 15 s in all)")
    a = p.parse_args()
    seconds, samples, packets, repeats = (1.0, 15, 10000, 1) if a.quick else (2.0, 30, 20000, 3)
    backend = backend_name()
    if backend == "app-delay":
        sys.exit("needs root and a kernel shaping backend (see `prfaas-bench net probe`)")
    print(f"backend: {backend}   (python {sys.version.split()[0]}; {seconds:g} s per goodput figure)\n")
    print("| check | configured | expected | measured | unit | tolerance | within |")
    print("|---|---|---|---|---|---|---|")
    lines = [
        bench_goodput(100, 0, seconds),
        bench_goodput(1000, 0, seconds),
        bench_goodput(1000, 10, seconds),
        bench_rtt(0, samples),
        bench_rtt(10, samples),
        bench_rtt(25, samples),
        bench_loss(1.0, packets),
        *bench_setup(repeats),
    ]
    for line in lines:
        print(line, flush=True)


if __name__ == "__main__":
    main()
