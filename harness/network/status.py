"""Read the kernel back and compare it with the spec (``net status``), like Mininet's ``dump``.

``compare`` is pure: rendered operations versus qdiscs as read, returning the differences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.network import kernel
from harness.network.control import Impairment
from harness.network.relay import log_path
from harness.network.render import QdiscOp, _handle, render_egress


@dataclass(frozen=True)
class DirectionStatus:
    direction: str
    spec: str
    kernel: str  # what the kernel has, in words
    relay: str  # "-" (none), "pid N ok", or a problem
    problems: tuple[str, ...]
    relay_lag: dict[str, Any] | None = None  # the relay's LagHistogram.summary(): achieved delay p50/p99
    offloads: dict[str, bool] | None = None  # the veth's TSO/GSO/GRO (kernel.OFFLOADS), as read back

    @property
    def ok(self) -> bool:
        return not self.problems


def _rate_bytes(text: str) -> int:
    assert text.endswith("kbit")
    return int(text[:-4]) * 1000 // 8


def compare(expected: list[QdiscOp], actual: list[dict[str, Any]]) -> list[str]:
    """Differences between rendered qdisc operations and the qdiscs read from one interface."""
    problems = []
    by_handle = {q["handle"]: q for q in actual}
    for op in expected:
        if op.command != "replace":
            continue
        q = by_handle.get(_handle(op.handle))
        if q is None or q["kind"] != op.kind:
            found = q["kind"] if q else "nothing"
            problems.append(f"expected {op.kind} {op.handle} at {op.parent}, found {found}")
            continue
        p = dict(op.params)
        if op.kind == "tbf" and q.get("rate_bytes_s") != _rate_bytes(p["rate"]):
            problems.append(f"tbf rate {q.get('rate_bytes_s')} B/s, expected {_rate_bytes(p['rate'])} B/s")
        if op.kind == "pfifo" and q.get("limit") != p["limit"]:
            problems.append(f"pfifo limit {q.get('limit')}, expected {p['limit']}")
        if op.kind == "netem" and q.get("limit") != p["limit"]:
            problems.append(f"netem limit {q.get('limit')}, expected {p['limit']}")
        if op.kind == "netem" and q.get("rate_bytes_s") != p.get("rate"):  # set only to keep order
            problems.append(f"netem rate {q.get('rate_bytes_s')} B/s, expected {p.get('rate')} B/s")
    if not expected and actual:
        problems.append(f"expected no qdisc, found {[q['kind'] for q in actual]}")
    return problems


def _describe(actual: list[dict[str, Any]]) -> str:
    words = []
    for q in actual:
        if q["kind"] == "tbf":
            words.append(f"tbf {q['rate_bytes_s'] * 8 / 1e6:g}Mbit")
        elif q["kind"] == "pfifo":
            words.append(f"pfifo limit {q['limit']}")
        else:
            words.append(str(q["kind"]))
    return " / ".join(words) or "none"


def read_status(net) -> list[DirectionStatus]:
    """One row per shaped direction: spec in force, what the kernel has, and the relay's state."""
    out = []
    lags = net.relay_lag()
    for d in net.topology.directions():
        spec = net.link_spec(d.src, d.dst)
        lag = lags[d.name].summary() if d.name in lags else None
        expected = render_egress(spec, net.backend)
        problems: list[str] = []
        try:
            with kernel.rtnl(net.topology.namespace(d.src)) as ipr:
                actual = kernel.read_qdiscs(ipr, kernel.ifindex(ipr, d.dev))
            actual = [q for q in actual if q["kind"] not in ("noqueue",)]
            problems += compare(expected, actual)
            described = _describe(actual)
            offloads = kernel.read_offloads(net.topology.namespace(d.src), d.dev)
        except (LookupError, OSError) as exc:
            problems.append(f"cannot read {d.dev} in {net.topology.namespace(d.src)}: {exc}")
            described, offloads = "missing", None
        if net.backend == "netem" and offloads is not None:  # off while netem drops packets
            want = spec.loss_pct == 0
            wrong = [n for n in kernel.SEGMENTATION_OFFLOADS if offloads.get(n, want) != want]
            if wrong:
                problems.append(
                    f"{', '.join(wrong)} {'off' if want else 'on'}, expected {'on' if want else 'off'}"
                )
        relay = "-"
        alive = net.relay_alive(d.src, d.dst)
        if alive is not None:
            if not alive:
                log = log_path(net.control_path(d.src, d.dst))
                problems.append(f"relay process is not running (its errors: {log})")
                relay = "DEAD"
            else:
                want = Impairment.of(spec)
                try:
                    imp = Impairment.read(net.control_path(d.src, d.dst))
                except (OSError, ValueError, KeyError) as exc:
                    problems.append(f"relay control file unreadable: {exc}")
                    imp = None
                if imp is not None and imp != want:
                    problems.append(f"relay runs {imp}, expected {want}")
                shown = imp or want
                relay = f"pid {net.relay_pid(d.src, d.dst)}: {shown.delay_us}us ±{shown.jitter_us}us loss {shown.loss_pct:g}%"
                if lag is not None and lag["frames"]:
                    relay += f"; late p50/p99 {lag['late_ms_p50']:g}/{lag['late_ms_p99']:g} ms ({lag['frames']} frames)"
        elif net.backend == "relay" and spec.impaired:
            problems.append("impaired direction has no relay")
        out.append(DirectionStatus(d.name, str(spec), described, relay, tuple(problems), lag, offloads))
    return out
