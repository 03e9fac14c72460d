"""Pure renderer: a ``LinkSpec`` and a backend become a list of qdisc operations for one egress.

The operations are plain values, so they can be unit-tested without root, printed as the equivalent
``tc`` commands (``--dry-run``) and applied by ``kernel.apply_ops`` — the only code that talks to the
kernel. Rates go on TBF/HTB; netem gets a rate only to keep jittered packets in order
(``NETEM_ORDER_RATE_BYTES_S``). netem delay and jitter are integers in µs.

Order on a netem host: netem at the root (delay, jitter, loss), TBF as its child (the rate), the
layout of the netem documentation's "delay plus rate" example. netem's queue holds every packet for
its whole delay, so its limit covers the bandwidth-delay product too (``netem_limit``). On the relay
backend the relay adds the impairment before the packet reaches the veth, so the veth carries the
TBF alone: the same order.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import Any

from harness.network.spec import LinkSpec
from harness.network.topology import UNLIMITED_MBIT_FOR_BUFFERS

ETH_HEADER = 14
ETH_P_IP = 0x0800


@dataclass(frozen=True)
class QdiscOp:
    """One ``tc`` operation on one interface. ``params`` are in pyroute2's units."""

    command: str  # "replace" | "replace-class" | "replace-filter"
    kind: str
    parent: str  # "root" or "major:minor"
    handle: str  # "major:" for a qdisc, "major:minor" for a class, "" for a filter
    params: tuple[tuple[str, Any], ...] = ()

    def pyroute2_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {k: v for k, v in self.params if not k.startswith("_")}  # _x: text only
        if self.parent != "root":
            kw["parent"] = _handle(self.parent)
        if self.handle:
            kw["handle"] = _handle(self.handle)
        return kw

    def tc_command(self, dev: str) -> str:
        """The equivalent ``tc`` command line (for --dry-run and docs; never executed)."""
        obj = {"replace": "qdisc", "replace-class": "class", "replace-filter": "filter"}[self.command]
        where = "root" if self.parent == "root" else f"parent {self.parent}"
        words = ["tc", obj, "replace", "dev", dev, where]
        if self.handle and obj != "filter":
            words += ["classid" if obj == "class" else "handle", self.handle]
        if obj != "filter":  # a filter's kind comes after its protocol and prio
            words.append(self.kind)
        words += _tc_params(self)
        return " ".join(words)


def _handle(text: str) -> int:
    major, _, minor = text.partition(":")
    return (int(major, 16) << 16) | (int(minor, 16) if minor else 0)


def _tc_params(op: QdiscOp) -> list[str]:
    p = dict(op.params)
    if op.kind == "netem":
        out = ["limit", str(p["limit"]), "delay", f"{p['delay']}us"]
        if p.get("jitter"):
            out += [f"{p['jitter']}us"]
        if p.get("loss"):
            out += ["loss", f"{p['loss']:g}%"]
        if p.get("rate"):
            out += ["rate", f"{p['rate'] * 8}bit"]
        return out
    if op.kind == "tbf":
        return ["rate", p["rate"], "burst", f"{p['burst']}b", "limit", f"{p['limit']}b"]
    if op.kind == "htb" and op.command == "replace-class":
        return ["rate", p["rate"], "ceil", p["ceil"]]
    if op.kind == "htb":
        return ["default", f"{p['default']:x}"]
    if op.kind == "u32":
        net = p["_dst"]
        return [
            "protocol",
            "ip",
            "prio",
            str(p["prio"]),
            "u32",
            "match",
            "ip",
            "dst",
            net,
            "flowid",
            p["_flowid"],
        ]
    return [k if v is True else f"{k} {v}" for k, v in p.items()]


def frame_bytes(mtu: int) -> int:
    """Bytes a full-size packet occupies in the qdisc (the Ethernet header is already on at egress)."""
    return mtu + ETH_HEADER


MIN_BURST = (64 + 4) << 10
"""The bucket is never smaller than the largest GSO packet a veth queues (64 KiB plus headers).
TBF only segments packets larger than its bucket at enqueue, so after a live change to a smaller
bucket a packet queued under the old one could never earn enough tokens and the queue would stall
for good (seen on this kernel with TBF and with HTB). The cost: bursts of up to 68 KiB at line rate,
e.g. 5.6 ms at 100 Mbit/s; the long-run rate is unaffected."""


def tbf_params(spec: LinkSpec) -> tuple[tuple[str, Any], ...]:
    """TBF for ``spec.rate_mbit``: a 2 ms bucket (at least ``MIN_BURST``), a ``limit_packets`` queue."""
    assert spec.rate_mbit is not None
    rate_bytes_s = spec.rate_mbit * 1e6 / 8
    burst = max(MIN_BURST, 2 * frame_bytes(spec.mtu), int(rate_bytes_s * 0.002))
    return (
        ("rate", f"{round(spec.rate_mbit * 1000)}kbit"),
        ("burst", burst),
        ("limit", spec.limit_packets * frame_bytes(spec.mtu)),
    )


def netem_limit(spec: LinkSpec) -> int:
    """netem's queue in packets: the spec's own queue plus every full frame in flight over the delay
    (delay + jitter) at the direction's rate, its bandwidth-delay product. netem holds each packet in
    its queue for the whole delay, so a limit of only ``limit_packets`` would drop a long fat link's
    window at netem instead of queueing it where the spec says (an unlimited direction counts as
    ``UNLIMITED_MBIT_FOR_BUFFERS``, as for the TCP buffers)."""
    rate = spec.rate_mbit if spec.rate_mbit is not None else UNLIMITED_MBIT_FOR_BUFFERS
    in_flight = rate * 1e6 / 8 * (spec.delay_ms + spec.jitter_ms) / 1e3 / frame_bytes(spec.mtu)
    return spec.limit_packets + math.ceil(in_flight)


NETEM_ORDER_RATE_BYTES_S = 2**32 - 1
"""netem's top rate (its 32-bit field, in bytes/s: 34.36 Gbit/s), set on every direction with jitter
only to keep packets in order. With a rate, netem times each packet from the one queued before it
(never earlier), so jitter cannot reorder them, as the relay's release times never go backwards;
without one it sorts its queue by each packet's own jittered time and reorders whatever is sent
closer together than the jitter (``tests/netem_in_vm.py`` measures both). At this rate a full frame
costs 0.35 µs; the direction's own rate stays on TBF beneath."""


def netem_params(spec: LinkSpec) -> tuple[tuple[str, Any], ...]:
    """netem for delay, jitter (integers in µs), loss (percent) and its queue; a ``rate`` only to
    keep jittered packets in order (``NETEM_ORDER_RATE_BYTES_S``, an integer: bytes/s to pyroute2)."""
    params: tuple[tuple[str, Any], ...] = (
        ("delay", round(spec.delay_ms * 1000)),
        ("jitter", round(spec.jitter_ms * 1000)),
        ("loss", spec.loss_pct),
        ("limit", netem_limit(spec)),
    )
    return (*params, ("rate", NETEM_ORDER_RATE_BYTES_S)) if spec.jitter_ms > 0 else params


BLACKHOLE = QdiscOp("replace", "pfifo", "root", "1:", (("limit", 0),))
"""A link that is down: a FIFO that holds nothing drops every packet (works without netem)."""


def render_egress(spec: LinkSpec, backend: str) -> list[QdiscOp]:
    """The qdisc chain for one direction's egress on its veth.

    ``backend``: "netem" puts delay/jitter/loss in the kernel; "relay" leaves them to the relay
    process (only the rate is in the kernel); "app-delay" has no kernel side at all.
    """
    if backend == "app-delay":
        return []
    if not spec.up:
        return [BLACKHOLE]
    ops = []
    parent = "root"
    if backend == "netem" and spec.impaired:
        ops.append(QdiscOp("replace", "netem", "root", "1:", netem_params(spec)))
        parent = "1:1"
    if spec.rate_mbit is not None:
        ops.append(QdiscOp("replace", "tbf", parent, "1:" if parent == "root" else "10:", tbf_params(spec)))
    elif parent == "root":  # unshaped: still one root qdisc we own, so status and live changes are uniform
        ops.append(QdiscOp("replace", "pfifo", "root", "1:", (("limit", spec.limit_packets),)))
    return ops


def render_interface(spec: LinkSpec, dst: ipaddress.IPv4Network) -> list[QdiscOp]:
    """Shape a real host interface's egress toward ``dst`` only: HTB root (unclassified traffic is
    not shaped), one class at the rate, a netem leaf for delay/jitter/loss, a u32 filter on the
    destination subnet."""
    rate = f"{round(spec.rate_mbit * 1000)}kbit" if spec.rate_mbit is not None else "100gbit"
    ops = [
        QdiscOp("replace", "htb", "root", "1:", (("default", 0),)),
        QdiscOp("replace-class", "htb", "1:", "1:10", (("rate", rate), ("ceil", rate))),
    ]
    if spec.impaired:
        ops.append(QdiscOp("replace", "netem", "1:10", "10:", netem_params(spec)))
    else:
        ops.append(QdiscOp("replace", "pfifo", "1:10", "10:", (("limit", spec.limit_packets),)))
    value, mask = int(dst.network_address), int(dst.netmask)
    ops.append(
        QdiscOp(
            "replace-filter",
            "u32",
            "1:",
            "",
            (
                ("protocol", ETH_P_IP),
                ("prio", 1),
                ("target", _handle("1:10")),
                ("keys", [f"0x{value:08x}/0x{mask:08x}+16"]),
                ("_dst", str(dst)),
                ("_flowid", "1:10"),
            ),
        )
    )
    return ops
