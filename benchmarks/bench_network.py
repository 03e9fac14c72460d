"""Network emulation accuracy on this machine: configured versus measured, with the backend used.

    sudo .venv/bin/python benchmarks/bench_network.py [--quick] [--relay-only] [--hogs 2]

Prints two Markdown tables (they go in docs/network.md). The first, checks and tolerances (issue 5):
  goodput at 100 Mbit/s and 1 Gbit/s, within 5% of rate * (mtu-52)/(mtu+14) (headers removed);
  the same 1 Gbit/s through the relay (10 ms each way), where the TAP relay carries every byte;
  round-trip time at 0, 10 and 25 ms one way, within the configured value + 1 ms (median of 30);
  loss at 1%, within 0.3 points (20,000 UDP datagrams, one direction);
  setup and teardown time of three sites (median of 3 builds, relays included).
Every row uses its own short-lived network built through the library (``Network.up``).

The second is the relay's added-delay error (issue 12), at idle and with ``--hogs`` CPU hogs
(``python3 -c 'while 1: pass'``, started and stopped here) beside it, on a 1 Gbit/s link with 4 ms
each way: the round trip of a 1-byte ping-pong against the configured 8 ms (end to end: relay,
kernel and the measuring threads), and the relay's own measured lateness per direction (how much
later than due it released each frame; ``harness/network/relaylag.py``), once for the ping-pong
(every frame is a wake-up from idle) and once for a bulk TCP flow at the link rate.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

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


@contextlib.contextmanager
def cpu_hogs(n: int) -> Iterator[None]:
    """``n`` busy-looping processes beside the measurement (two on this 2-core host: every core busy)."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5 if n else 0.0)  # let them reach full speed
        yield
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def _late(hist) -> str:
    q = hist.summary()
    return f"{q['late_ms_p50']:.3f} / {q['late_ms_p99']:.3f} / {q['late_ms_max']:.3f}"


def bench_relay_error(hogs: int, samples: int, seconds: float) -> list[str]:
    """Rows of the relay added-delay table for one load condition."""
    one_way = 4.0
    with cpu_hogs(hogs), two_sites(rate_mbit=1000, delay_ms=one_way).up() as net:
        t0 = net.relay_lag()
        rtts = rtt_ms(net, "a", "b", samples=samples)
        t1 = net.relay_lag()
        goodput_mbit(net, "a", "b", seconds=seconds, warmup_s=0.5)
        t2 = net.relay_lag()
    ping = {k: t1[k].since(t0[k]) for k in t1}
    bulk = t2["a->b"].since(t1["a->b"])
    label = "idle" if hogs == 0 else f"{hogs} CPU hogs"
    q = statistics.quantiles(rtts, n=100)
    rtt = f"{statistics.median(rtts) - 2 * one_way:+.3f} / {q[98] - 2 * one_way:+.3f}"
    return [
        f"| {label} | ping-pong, {len(rtts)} round trips | {rtt} | a->b {_late(ping['a->b'])}; "
        f"b->a {_late(ping['b->a'])} | {ping['a->b'].frames + ping['b->a'].frames} |",
        f"| {label} | bulk TCP, {seconds:g} s at 1 Gbit/s | - | a->b {_late(bulk)} | {bulk.frames} |",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="shorter measurements (about 15 s in all)")
    p.add_argument("--relay-only", action="store_true", help="only the relay added-delay table")
    p.add_argument("--hogs", type=int, default=2, help="CPU hogs for the loaded rows of the relay table")
    a = p.parse_args()
    seconds, samples, packets, repeats = (1.0, 15, 10000, 1) if a.quick else (2.0, 30, 20000, 3)
    backend = backend_name()
    if backend == "app-delay":
        sys.exit("needs root and a kernel shaping backend (see `prfaas-bench net probe`)")
    print(f"backend: {backend}   (python {sys.version.split()[0]}; {seconds:g} s per goodput figure)\n")
    if not a.relay_only:
        main_table(seconds, samples, packets, repeats)
    print("\nrelay added-delay error, 4 ms each way (RTT configured 8 ms); times in ms\n")
    print("| load | traffic | RTT p50 / p99 minus 8 ms | relay lateness p50 / p99 / max | frames |")
    print("|---|---|---|---|---|")
    for hogs in (0, a.hogs):
        for line in bench_relay_error(hogs, samples=200 if a.quick else 1000, seconds=seconds):
            print(line, flush=True)


def main_table(seconds: float, samples: int, packets: int, repeats: int) -> None:
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
