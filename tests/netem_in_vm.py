"""What only the netem backend has, checked on a kernel with netem: inside the VM of
``scripts/netem-vm.sh`` (``tests/test_netem_vm.py`` runs this file there; its name keeps a plain
``pytest`` on a host without netem from collecting it).
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, need
from conftest import net_prefix as P

from harness.network import LinkSpec, Network, kernel, parse_network, probe
from harness.network.measure import arrival_order, loss_pct, reordered
from harness.records import read_meta, read_records

PB = str(REPO / ".venv" / "bin" / "prfaas-bench")

pytestmark = pytest.mark.root


@pytest.fixture
def netem(root) -> None:
    need(probe().check("netem").works, f"no netem here: {probe().check('netem').reason}")


def _net(link: dict, prefix: str, **kw) -> Network:
    table = {"sites": ["a", "b"], "links": [{"between": ["a", "b"], **link}]}
    return Network(parse_network(table), prefix=prefix, table=table, **kw)


def test_the_probe_finds_netem_and_net_probe_says_so(netem):
    out = subprocess.run(
        [PB, "net", "probe"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    assert probe().chosen == "netem"
    assert out.splitlines()[0].startswith("netem      yes"), out
    assert out.splitlines()[-1] == "chosen: netem", out


def test_jitter_does_not_reorder_unless_netem_is_left_to_itself(netem):
    # 0.2 ms between datagrams and ±4 ms of jitter: netem's own queue (sorted by each packet's
    # send time) would put many of them out of order; the harness keeps them in sending order. The
    # network is fresh: before the harness pinned its neighbours, the datagrams that waited for ARP
    # (a delayed round trip) raced the later ones into netem once it resolved, and 19-112 of 500
    # arrived out of order in 3 of 8 such runs (0 of 8 once resolved).
    # What is measured is netem's order, so the receiving veth hands every packet to one CPU (RPS):
    # a veth queues what it receives on the CPU that sent it, and netem releases packets on whichever
    # CPU its timer or a sender runs on, so two CPUs' backlogs could deliver them out of order.
    # Seen in the 2-vCPU guest under TCG, jitter or not: plain netem with no jitter reordered 4 of
    # 500 in 2 of 18 runs, the harness's jitter 78 in 1 of 18; with RPS on one CPU, 0 in 12; in a
    # 1-vCPU guest, 0 in 48.
    with _net({"delay_ms": 8, "jitter_ms": 4}, P("n1")).up() as net:
        d = net.topology.direction("a", "b")
        kernel.set_rps_cpus(net.namespace("b"), d.peer_dev, 1)
        ours = arrival_order(net, "a", "b", 500, 0.0002)
        with kernel.rtnl(net.namespace("a")) as ipr:  # plain netem, as `tc ... delay 8ms 4ms` gives
            idx = kernel.ifindex(ipr, d.dev)
            ipr.tc("del", index=idx, handle=0x10000, parent=0xFFFFFFFF)
            ipr.tc("add", "netem", idx, handle=0x10000, delay=8000, jitter=4000, limit=1000)
        plain = arrival_order(net, "a", "b", 500, 0.0002)
    assert len(ours) == 500 and reordered(ours) == 0
    assert len(plain) == 500 and reordered(plain) > 50  # the check can see reordering


def test_the_netem_queue_holds_the_bandwidth_delay_product(netem):
    # 100 Mbit/s, 40 ms: 331 full frames are in flight one way, more than the 100-packet queue the
    # spec asks for. netem holds every packet for its whole delay, so 400 datagrams sent within the
    # delay (20 ms at 20,000/s, 32 Mbit/s: TBF passes them) must all fit in netem's queue: none is
    # lost with the harness's limit, and most are with a limit of limit_packets (the control), each
    # one dropped by netem itself. The first burst goes to a fresh network on purpose: before the
    # harness pinned its neighbours, ARP crossed netem's 40 ms both ways and the neighbour queue
    # (208 KiB) kept only the first 166 datagrams: 58.5% lost, none of it netem's.
    spec = LinkSpec(rate_mbit=100, delay_ms=40, limit_packets=100)
    bdp_packets = 100e6 / 8 * 0.040 / (1500 + 14)
    with _net({"rate_mbit": 100, "delay_ms": 40, "limit_packets": 100}, P("n2")).up() as net:
        dev = net.topology.direction("a", "b").dev
        with kernel.rtnl(net.namespace("a")) as ipr:
            qd = kernel.read_qdiscs(ipr, kernel.ifindex(ipr, dev))
        ours = loss_pct(net, "a", "b", packets=400, pps=20000)
        with kernel.rtnl(net.namespace("a")) as ipr:  # the same netem with the spec's limit alone
            ipr.tc("change", "netem", kernel.ifindex(ipr, dev), handle=0x10000, delay=40000, limit=100)
        small = loss_pct(net, "a", "b", packets=400, pps=20000)
        with kernel.rtnl(net.namespace("a")) as ipr:
            after = kernel.read_qdiscs(ipr, kernel.ifindex(ipr, dev))
    netem_q = next(q for q in qd if q["kind"] == "netem")
    assert netem_q["limit"] >= bdp_packets + spec.limit_packets
    assert netem_q["delay_us"] == 40_000 and netem_q["jitter_us"] == 0  # the kernel's ticks, read back in µs
    assert ours == 0.0
    assert small >= 50.0  # 400 in flight, 100 places
    # All of it netem's queue; the counter may hold a few more (the veth's own IPv6 chatter, dropped
    # with them: 301 drops for 300 datagrams lost in one run)
    drops, lost = {q["kind"]: q["drops"] for q in after}, round(small * 400 / 100)
    assert lost <= drops["netem"] <= lost + 5 and drops["tbf"] == 0, after


@pytest.mark.parametrize("rate_mbit", [5_000, 34_000])
def test_rates_above_4_gbit_reach_the_kernel_exactly(netem, rate_mbit):
    with _net({"rate_mbit": rate_mbit, "delay_ms": 1}, P("n3")).up() as net:
        with kernel.rtnl(net.namespace("a")) as ipr:
            qd = kernel.read_qdiscs(ipr, kernel.ifindex(ipr, net.topology.direction("a", "b").dev))
        rows = {r.direction: r for r in net.status()}
    rates = [q["rate_bytes_s"] for q in qd if q.get("rate_bytes_s")]
    assert rates and all(r == rate_mbit * 1_000_000 // 8 for r in rates), qd
    assert rows["a->b"].ok, rows["a->b"].problems


def test_segmentation_offloads_are_off_only_while_netem_drops_packets(netem):
    # netem would drop a whole TSO/GSO segment of up to 64 KiB at once: a burst, not 1% of packets
    seg = ("tx-tcp-segmentation", "tx-generic-segmentation")
    with _net({"rate_mbit": 50, "forward": {"loss_pct": 1}}, P("n4")).up() as net:
        lossy = {r.direction: r for r in net.status()}
        net.set_link("a", "b", loss_pct=0)
        healed = {r.direction: r for r in net.status()}
    assert all(r.ok for r in (*lossy.values(), *healed.values()))
    assert [lossy["a->b"].offloads[k] for k in seg] == [False, False]
    assert [lossy["b->a"].offloads[k] for k in seg] == [True, True]  # a veth's default
    assert [healed["a->b"].offloads[k] for k in seg] == [True, True]


def serve_and_replay(
    tmp: Path, prefix: str, *, speedup: float = 4.0, gap_s: float = 1.0
) -> tuple[dict, dict, pd.DataFrame]:
    """``serve`` the case study (as root: its sites in namespaces, the link shaped by the probe's choice)
    and ``replay`` six long prompts, ``gap_s`` wall seconds apart, on its naive topology, every prefill
    remote, so each request's KV crosses the shaped link. Returns serve's description, the run's meta and its records; serve is
    stopped with Ctrl-C's signal and its namespaces are checked gone."""
    scenario = REPO / "workloads" / "paper-case-study.toml"
    serve = subprocess.Popen(
        [PB, "serve", str(scenario), "--speedup", f"{speedup:g}", "--prefix", prefix, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stdout is not None
        line = serve.stdout.readline()  # the description, once every site serves
        assert line, f"serve did not come up: {serve.stderr.read() if serve.stderr else ''}"
        info = json.loads(line)
        trace = tmp / "trace.jsonl"
        rows = (
            {"timestamp": gap_s * speedup * 1e3 * i, "input_length": 4096 * (1 + i % 3), "output_length": 8,
             "hash_ids": [i]}
            for i in range(6)
        )  # fmt: skip
        trace.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out = tmp / "run"
        metrics = [a for url in info["sites"].values() for a in ("--metrics-url", url)]
        replayed = subprocess.run(
            [PB, "replay", "--endpoint", info["urls"]["naive"], "--model", info["model"], "--trace", str(trace),
             "--speedup", f"{speedup:g}", "--time-scale", f"{speedup:g}", "--quiet", "--out", str(out), *metrics],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        return info, read_meta(out), read_records(out)
    finally:
        serve.send_signal(signal.SIGINT)
        serve.communicate(timeout=60)
        assert not kernel.list_namespaces(prefix)


# What emulated CPUs cannot do: keep the client's sends and the sites' event loops within 10 ms of time.
TCG_TIMING_CHECKS = {"send_lag_p99_ms", "loop_lag_p99_ms", "client_stall_share"}


def test_serve_and_replay_record_netem_and_are_judged_by_their_verdict(netem, tmp_path):
    # Issue 18: a short serve + replay on the netem backend, judged by its validity verdict, not by its
    # timings. Under TCG a guest's Python runs about ten times slower than on the host (its loops lag
    # 10-60 ms), so the verdict is expected to call the run invalid for that, and for nothing else:
    # every request answered, every KV crossed the link (on the host, with the relay, it is valid).
    info, meta, records = serve_and_replay(tmp_path, P("sv"))
    assert info["backend"] == "netem"
    assert meta["shaping_backend"] == "netem"  # declared by serve's sites, recorded by replay
    assert meta["complete"] and len(records) == 6
    assert (records["status"] == "ok").all() and (records["route"] == "remote").all()
    assert (records["kv_bytes"] > 0).all()
    checks = meta["summaries"]["default"]["validity"]["checks"]
    assert checks["failed_share"]["ok"] and checks["pd_no_kv_share"]["ok"], checks
    broken = {name.split("[")[0] for name, c in checks.items() if isinstance(c, dict) and not c["ok"]}
    assert broken <= TCG_TIMING_CHECKS, meta["validity"]
