"""Pure parts of the network emulation: spec parsing, rendering, netem encoding, routes, timelines."""

from __future__ import annotations

import ipaddress
import time

import pytest
from pyroute2.iproute.linux import get_arguments_processor
from pyroute2.netlink.rtnl.tcmsg import tcmsg
from pyroute2.netlink.rtnl.tcmsg.common import tick_in_usec

from harness.errors import ScenarioError
from harness.network import (
    LinkSpec,
    Topology,
    parse_network,
    render_egress,
    render_interface,
    tcp_buffers,
    timeline,
)
from harness.network.measure import expected_goodput_mbit
from harness.network.schedule import Change, EventScheduler, worst_lag
from harness.network.status import compare

TABLE = {
    "sites": ["client", "local", "remote"],
    "links": [
        {"between": ["client", "local"]},
        {"between": ["local", "remote"], "rate_mbit": 1000, "delay_ms": 10, "reverse": {"loss_pct": 0.5}},
    ],
    "events": [{"at_s": 60, "duration_s": 30, "link": ["local", "remote"], "rate_factor": 0.1}],
}


def test_parse_applies_common_fields_and_per_direction_overrides():
    spec = parse_network(TABLE)
    ln = spec.link("remote", "local")
    assert ln.spec("local", "remote") == LinkSpec(rate_mbit=1000, delay_ms=10)
    assert ln.spec("remote", "local") == LinkSpec(rate_mbit=1000, delay_ms=10, loss_pct=0.5)
    assert spec.link("client", "local").forward == LinkSpec()
    assert spec.subnet == ipaddress.IPv4Network("10.77.0.0/16")
    assert spec.events[0].directions == (("local", "remote"), ("remote", "local"))


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            {"sites": ["client", "Local!"]},
            "[network] sites[1]: must match ^[a-z][a-z0-9]{0,7}$, got 'Local!'",
        ),
        ({"subnet": "8.8.0.0/16"}, "[network] subnet: must be a private /16, got 8.8.0.0/16"),
        (
            {"links": [{"between": ["client", "mars"]}]},
            "[network.links[0]] between: unknown site 'mars'; sites are client, local, remote",
        ),
        (
            {"links": [{"between": ["client", "local"], "rate": 5}]},
            "[network.links[0]] rate: unknown key (known: rate_mbit, delay_ms",
        ),
        ({"links": [1]}, "[network.links[0]]: must be a table, got 1"),  # was an AttributeError traceback
        ({"events": 3}, "[network] events: must be a list, got 3"),  # was a TypeError traceback
        (
            {"links": [{"between": ["client", "local"], "delay_ms": 1, "jitter_ms": 2}]},
            "[network.links[0]] jitter_ms: must be <= delay_ms (1), got 2",
        ),
        (
            {"links": [{"between": ["client", "local"], "mtu": "9000"}]},
            "[network.links[0]] mtu: must be an integer, got '9000'",
        ),
        (
            {"links": [{"between": ["client", "local"], "reverse": {"rate_mbit": -5}}]},
            "[network.links[0].reverse] rate_mbit: must be >= 0.001, got -5",
        ),
        (
            {"events": [{"at_s": 1, "link": ["client", "remote"], "loss_pct": 1}]},
            "[network.events[0]] link: no link between client and remote",
        ),
        (
            {"events": [{"at_s": 1, "link": ["client", "local"], "rate_factor": 0.5}]},
            "[network.events[0]] rate_factor: needs a direction with rate_mbit set",
        ),
        (
            {"events": [{"at_s": -1, "link": ["local", "remote"], "down": True}]},
            "[network.events[0]] at_s: must be >= 0, got -1",
        ),
        (
            {"events": [{"at_s": 1, "link": ["local", "mars"], "down": True}]},
            "[network.events[0]] link: unknown site 'mars'; sites are client, local, remote",
        ),
        (
            {"events": [{"at_s": 1, "link": ["local", "remote"]}]},
            "[network.events[0]]: an event needs one of rate_mbit, rate_factor, delay_ms",
        ),
    ],
)
def test_bad_tables_name_the_field(patch, message):
    with pytest.raises(ScenarioError) as err:
        parse_network({**TABLE, **patch}, source="s.toml")
    assert str(err.value).startswith(f"s.toml: {message}"), str(err.value)


def test_netem_backend_renders_netem_root_with_tbf_child_and_no_rate_on_netem():
    ops = render_egress(
        LinkSpec(rate_mbit=100, delay_ms=10, jitter_ms=2, loss_pct=1, limit_packets=500), "netem"
    )
    assert [(o.kind, o.parent, o.handle) for o in ops] == [("netem", "root", "1:"), ("tbf", "1:1", "10:")]
    netem = dict(ops[0].params)
    # µs integers; the queue is the spec's 500 packets plus the 100 full frames (12.5 MB/s x 12 ms
    # / 1514 B = 99.1) in flight over delay + jitter, which netem holds in its own queue; with jitter,
    # netem's top rate (2^32 - 1 bytes/s), which only keeps packets in order
    assert netem == {"delay": 10_000, "jitter": 2_000, "loss": 1, "limit": 600, "rate": 2**32 - 1}
    assert all(isinstance(netem[k], int) for k in ("delay", "jitter"))
    tbf = dict(ops[1].params)
    assert tbf["rate"] == "100000kbit"  # a string with units: a bare int would be bytes/s
    assert tbf["limit"] == 500 * 1514


def test_the_netem_queue_covers_the_bandwidth_delay_product_in_full_frames():
    def limit(spec: LinkSpec) -> int:
        return dict(render_egress(spec, "netem")[0].params)["limit"]

    # 125 MB/s x 25 ms = 3.125 MB = 2064.1 frames of 1514 B, on top of the spec's 1000 packets
    assert limit(LinkSpec(rate_mbit=1000, delay_ms=25)) == 1000 + 2065
    # unlimited counts as 10 Gbit/s (as for the TCP buffers): 1.25 GB/s x 5 ms / 1514 B = 4128.1
    assert limit(LinkSpec(delay_ms=5)) == 1000 + 4129
    # MTU 9000: 125 MB/s x 10 ms / 9014 B = 138.7
    assert limit(LinkSpec(rate_mbit=1000, delay_ms=10, mtu=9000, limit_packets=50)) == 50 + 139
    ops = render_egress(LinkSpec(rate_mbit=100, delay_ms=10, jitter_ms=2, limit_packets=500), "netem")
    assert ops[0].tc_command("eth1") == (
        "tc qdisc replace dev eth1 root handle 1: netem limit 600 delay 10000us 2000us rate 34359738360bit"
    )


def test_relay_backend_keeps_only_the_rate_in_the_kernel_and_down_is_a_zero_fifo():
    spec = LinkSpec(rate_mbit=100, delay_ms=10, loss_pct=1)
    assert [o.kind for o in render_egress(spec, "relay")] == ["tbf"]
    down = render_egress(spec.with_changes(up=False), "relay")
    assert [(o.kind, dict(o.params)) for o in down] == [("pfifo", {"limit": 0})]
    assert render_egress(LinkSpec(), "relay")[0].kind == "pfifo"
    assert render_egress(spec, "app-delay") == []


def test_netem_netlink_message_carries_microsecond_ticks_and_the_order_rate_only_inside_netem():
    """The kernel here has no netem, so check the message pyroute2 builds from our operation
    (tests/netem_in_vm.py checks what a kernel with netem makes of it)."""
    op = render_egress(LinkSpec(rate_mbit=100, delay_ms=10, jitter_ms=2, loss_pct=1), "netem")[0]
    args = dict(
        get_arguments_processor("tc", "replace", {**op.pyroute2_kwargs(), "kind": "netem", "index": 1})
    )
    assert "rate" not in args  # else it would also go out as the top-level TCA_RATE (an estimator)
    msg = tcmsg()
    msg["index"], msg["handle"], msg["parent"] = 1, args["handle"], args["parent"]
    msg["attrs"] = [["TCA_KIND", "netem"], ["TCA_OPTIONS", args["options"]]]
    msg.encode()
    back = tcmsg(msg.data)
    back.decode()
    opts = back.get("options")
    # psched ticks are 64 ns: 10 ms and 2 ms exactly, computed from µs integers
    assert opts["delay"] * 1000 / tick_in_usec == pytest.approx(10_000 * 1000)
    assert opts["jitter"] * 1000 / tick_in_usec == pytest.approx(2_000 * 1000)
    assert opts["loss"] == int((2**32 - 1) * 0.01)
    assert opts.get_attr("TCA_NETEM_RATE")["rate"] == 2**32 - 1  # keeps jittered packets in order
    # without jitter netem has no rate at all: TBF alone limits the rate
    plain = render_egress(LinkSpec(rate_mbit=100, delay_ms=10), "netem")[0]
    args = dict(
        get_arguments_processor("tc", "replace", {**plain.pyroute2_kwargs(), "kind": "netem", "index": 1})
    )
    assert not any(a[0] == "TCA_NETEM_RATE" for a in args["options"]["attrs"])


def test_tc_text_matches_the_operations():
    # netem's limit: 1000 packets of queue + 83 full frames in flight (12.5 MB/s x 10 ms / 1514 B = 82.6)
    ops = render_egress(LinkSpec(rate_mbit=100, delay_ms=10, loss_pct=1), "netem")
    assert (
        ops[0].tc_command("eth1")
        == "tc qdisc replace dev eth1 root handle 1: netem limit 1083 delay 10000us loss 1%"
    )
    assert ops[1].tc_command("eth1") == (
        "tc qdisc replace dev eth1 parent 1:1 handle 10: tbf rate 100000kbit burst 69632b limit 1514000b"
    )


def test_interface_rendering_is_htb_class_netem_leaf_and_u32_on_the_destination():
    ops = render_interface(LinkSpec(rate_mbit=50, delay_ms=5), ipaddress.IPv4Network("10.1.0.0/16"))
    assert [(o.command, o.kind, o.parent, o.handle) for o in ops] == [
        ("replace", "htb", "root", "1:"),
        ("replace-class", "htb", "1:", "1:10"),
        ("replace", "netem", "1:10", "10:"),
        ("replace-filter", "u32", "1:", ""),
    ]
    flt = ops[3].pyroute2_kwargs()
    assert (
        flt["keys"] == ["0x0a010000/0xffff0000+16"] and flt["target"] == 0x10010 and flt["parent"] == 0x10000
    )
    assert "_dst" not in flt  # tc reads "1:10" as hex minor 0x10
    assert ops[3].tc_command("eth1") == (
        "tc filter replace dev eth1 parent 1: protocol ip prio 1 u32 match ip dst 10.1.0.0/16 flowid 1:10"
    )
    assert (
        ops[1].tc_command("eth1")
        == "tc class replace dev eth1 parent 1: classid 1:10 htb rate 50000kbit ceil 50000kbit"
    )


def test_routes_go_through_the_first_hop_and_addresses_come_from_the_subnet():
    topo = Topology("pfb-", parse_network(TABLE))
    assert str(topo.address("client")) == "10.77.0.1" and str(topo.address("remote")) == "10.77.0.3"
    hops = {(r.site, r.dst_site): r.via for r in topo.routes()}
    assert hops[("client", "remote")] == "local" and hops[("remote", "client")] == "local"
    assert hops[("client", "local")] == "local"
    assert topo.unreachable() == []
    d = topo.direction("local", "remote")
    assert (d.dev, d.peer_dev, d.tun) == ("pfb-to-remote", "pfb-to-local", "pfb-rl-remote")
    assert all(len(n) <= 15 for n in (d.dev, d.peer_dev, d.tun))


def test_tcp_buffers_hold_twice_the_bandwidth_delay_product():
    table = {"sites": ["a", "b"], "links": [{"between": ["a", "b"], "rate_mbit": 1000, "delay_ms": 25}]}
    bufs = tcp_buffers(parse_network(table), "a")
    bdp = 1000e6 / 8 * 0.050  # 6.25 MB at 1 Gbit/s and 50 ms round trip
    assert bufs["net.ipv4.tcp_rmem"].split()[-1] == str(int(2 * bdp))
    small = {"sites": ["a", "b"], "links": [{"between": ["a", "b"], "rate_mbit": 10, "delay_ms": 1}]}
    assert (
        tcp_buffers(parse_network(small), "a")["net.ipv4.tcp_rmem"] == "4096 131072 6291456"
    )  # Linux default


def test_timeline_restores_and_composes_overlapping_events():
    spec = parse_network(
        {
            "sites": ["a", "b"],
            "links": [{"between": ["a", "b"], "rate_mbit": 100}],
            "events": [
                {
                    "at_s": 60,
                    "duration_s": 30,
                    "link": ["a", "b"],
                    "direction": "forward",
                    "rate_factor": 0.1,
                },
                {"at_s": 70, "duration_s": 5, "link": ["a", "b"], "direction": "forward", "down": True},
                {"at_s": 80, "link": ["a", "b"], "direction": "forward", "loss_pct": 1},
            ],
        }
    )
    base = {(s, d): ls for s, d, ls in spec.directions()}
    got = [(c.t_s, c.spec.rate_mbit, c.spec.up, c.spec.loss_pct) for c in timeline(spec.events, base)]
    assert got == [
        (60, 10, True, 0),
        (70, 10, False, 0),
        (75, 10, True, 0),
        (80, 10, True, 1),
        (90, 100, True, 1),  # the rate comes back; the open-ended loss stays
    ]


def test_worst_lag_is_the_largest_share_of_a_planned_state_lost_to_lateness():
    a, b = LinkSpec(rate_mbit=100), LinkSpec(rate_mbit=10)
    # One direction's states: [60, 70) [70, 75) [75, 80) [80, 90) [90, end); another's change at 72.
    plan = [Change(t, "a", "b", a if i % 2 else b) for i, t in enumerate((60, 70, 75, 80, 90))]
    plan.insert(2, Change(72, "b", "a", b))
    # Late 0.5 of 10, 0.8 of 5, 0 (the other direction's), 0.1 of 5, and 80 not landed by 81.5: 1.5 of 10.
    lag = worst_lag(plan, [60.5, 70.8, 72.0, 75.1], now=81.5)
    assert (lag.change.t_s, lag.late_s, lag.lasts_s) == (70, pytest.approx(0.8), 5)
    assert lag.share == pytest.approx(0.16)
    # By 83 the change due at 80 has still not landed: 3 s of its 10 s state lost.
    assert worst_lag(plan, [60.5, 70.8, 72.0, 75.1], now=83).change.t_s == 80
    # The last state of a direction lasts to the end: landing late loses none of it.
    last = worst_lag(plan, [60, 70, 72, 75, 80, 95], now=96)
    assert last.share == 0.0
    assert worst_lag(plan, [], now=59.0) is None


def test_the_scheduler_reports_a_change_that_landed_late():
    applied = []

    def slow(ch: Change) -> None:  # the first change takes 0.2 s, its state was to last 0.05 s
        if not applied:
            time.sleep(0.2)
        applied.append(ch)

    plan = [Change(0.0, "a", "b", LinkSpec(rate_mbit=10)), Change(0.05, "a", "b", LinkSpec(rate_mbit=100))]
    sched = EventScheduler(plan, slow)
    assert sched.worst_lag() is None  # not started
    sched.start()
    sched.join()
    lag = sched.worst_lag()
    assert lag.change is plan[0] and lag.late_s >= 0.2 and lag.share >= 4


def test_expected_goodput_removes_header_overhead():
    assert expected_goodput_mbit(100, 1500) == pytest.approx(100 * 1448 / 1514)
    assert expected_goodput_mbit(1000, 9000) == pytest.approx(1000 * 8948 / 9014)


def test_compare_reports_a_wrong_rate_and_a_missing_qdisc():
    ops = render_egress(LinkSpec(rate_mbit=100), "relay")
    good = [{"kind": "tbf", "handle": 0x10000, "parent": 0xFFFFFFFF, "rate_bytes_s": 12_500_000}]
    assert compare(ops, good) == []
    bad = [{**good[0], "rate_bytes_s": 1_250_000}]
    assert compare(ops, bad) == ["tbf rate 1250000 B/s, expected 12500000 B/s"]
    assert compare(ops, []) == ["expected tbf 1: at root, found nothing"]
