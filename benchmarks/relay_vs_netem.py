"""The relay against the kernel's netem: the same link specs shaped by each backend, measured the same way.

    scripts/netem-vm.sh run -- .venv/bin/python benchmarks/relay_vs_netem.py [--quick]

Needs a kernel that has netem and TUN (this machine's has no netem: run it in the VM of
``scripts/netem-vm.sh``, as above). Prints one Markdown table (it goes in docs/network.md): per check,
the configured value and what each backend measured. Every row builds its own two-site network
through the library (``Network(..., backend=B).up()``), relay and netem alternating:

- RTT: 1-byte TCP ping-pongs (``measure.rtt_ms``), 5 ms each way: p50 / p90 / p99 / max;
- jitter: 5 ms ± 2 ms each way: the RTT's standard deviation, and how many of 500 numbered UDP
  datagrams sent 0.2 ms apart arrived after a later one (reordering; the receiving veth hands every
  packet to one CPU, so that two CPUs' receive queues do not reorder them after the backend);
- goodput: bulk TCP at 100 Mbit/s, 5 ms each way, against rate × (mtu − 52) / (mtu + 14);
- loss: 20,000 UDP datagrams at 1%;
- one KV transfer: 8 MiB with the emulator's own KV sender and receiver (``harness.emulation.kvlink``)
  over 100 Mbit/s, 5 ms each way, from the first byte sent to the last byte received.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys

from harness.emulation.kvlink import KvReceiver, KvSender, new_transfer_id
from harness.network import Network, kernel, parse_network, probe
from harness.network.measure import (
    arrival_order,
    expected_goodput_mbit,
    goodput_mbit,
    loss_pct,
    reordered,
    rtt_ms,
)

PREFIX = "pfbrn-"
BACKENDS = ("relay", "netem")


def two_sites(backend: str, **link) -> Network:
    table = {"sites": ["a", "b"], "links": [{"between": ["a", "b"], **link}]}
    return Network(parse_network(table), prefix=PREFIX, table=table, backend=backend)


def kv_transfer_s(net: Network, nbytes: int) -> float:
    """Seconds from a KV transfer's start in site a to its last byte in site b (the receiver's clock)."""
    listener = net.socket("b", socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((net.address("b"), 0))

    async def run() -> float:
        rx, tx = KvReceiver(), KvSender()
        addr = await rx.start(sock=listener)
        try:
            start = asyncio.get_running_loop().time()
            obs = await tx.send(new_transfer_id(), addr, nbytes)
            return obs.last_byte_s - start
        finally:
            await tx.close()
            await rx.close()

    # The sender's sockets must be made in site a: run the loop on a thread that entered it.
    return kernel._in_namespace(net.namespace("a"), lambda: asyncio.run(run()))


def measure(backend: str, quick: bool) -> dict[str, str]:
    samples, packets, seconds = (100, 5000, 1.0) if quick else (300, 20000, 2.0)
    out: dict[str, str] = {}
    with two_sites(backend, delay_ms=5).up() as net:
        rtts = rtt_ms(net, "a", "b", samples=samples)
    q = statistics.quantiles(rtts, n=100)
    out["rtt"] = f"{statistics.median(rtts):.2f} / {q[89]:.2f} / {q[98]:.2f} / {max(rtts):.2f}"
    with two_sites(backend, delay_ms=5, jitter_ms=2).up() as net:
        rtts = rtt_ms(net, "a", "b", samples=samples)
        # Every received packet on one CPU (RPS), so that the count is the backend's reordering, not
        # two CPUs' receive backlogs overtaking each other (tests/netem_in_vm.py explains).
        kernel.set_rps_cpus(net.namespace("b"), net.topology.direction("a", "b").peer_dev, 1)
        order = arrival_order(net, "a", "b", 500, 0.0002)
    out["jitter"] = f"sd {statistics.stdev(rtts):.2f} ms; {reordered(order)} of {len(order)} reordered"
    with two_sites(backend, rate_mbit=100, delay_ms=5).up() as net:
        got = goodput_mbit(net, "a", "b", seconds=seconds, warmup_s=1.0)
        kv = kv_transfer_s(net, 8 << 20)
    out["goodput"] = f"{got:.1f} ({got / expected_goodput_mbit(100, 1500) - 1:+.1%})"
    out["kv"] = f"{kv:.3f}"
    with two_sites(backend, forward={"loss_pct": 1.0}).up() as net:
        out["loss"] = f"{loss_pct(net, 'a', 'b', packets=packets, pps=20000):.2f}"
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer samples (about a minute on a real host)")
    a = p.parse_args()
    missing = [b for b in BACKENDS if not probe().check(b).works]
    if missing:
        sys.exit(
            f"needs both backends; not here: {', '.join(f'{b} ({probe().check(b).reason})' for b in missing)}"
        )
    got = {b: measure(b, a.quick) for b in BACKENDS}
    kv_expected = 8 * 2**20 * 8 / expected_goodput_mbit(100, 1500) / 1e6 + 0.015  # bytes at goodput + 1.5 RTT
    rows = [
        ("RTT p50 / p90 / p99 / max (ms)", "5 ms each way: 10", "rtt"),
        ("jitter: RTT sd; UDP reordering", "5 ± 2 ms each way", "jitter"),
        ("goodput (Mbit/s)", f"100 Mbit/s, 5 ms: {expected_goodput_mbit(100, 1500):.1f}", "goodput"),
        ("loss (%)", "1%", "loss"),
        ("one 8 MiB KV transfer (s)", f"100 Mbit/s, 5 ms: ≈ {kv_expected:.3f}", "kv"),
    ]
    print(f"kernel {os.uname().release}; {os.cpu_count()} CPUs; python {sys.version.split()[0]}\n")
    print("| check | configured | relay | netem |")
    print("|---|---|---|---|")
    for label, conf, key in rows:
        print(f"| {label} | {conf} | {got['relay'][key]} | {got['netem'][key]} |")


if __name__ == "__main__":
    main()
