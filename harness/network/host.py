"""Shaping a real host interface for multi-host runs (``net up --interface IFACE --to SUBNET``).

Only an interface the user names is touched: its root qdisc is replaced by an HTB whose one class
(rate, netem leaf for delay/jitter/loss) takes traffic toward the destination subnet; everything
else stays unshaped. ``unshape_interface`` removes only an HTB root with our handle.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from harness.errors import CapabilityError, ScenarioError
from harness.network import kernel
from harness.network.render import QdiscOp, render_interface
from harness.network.spec import LinkSpec

_ROOT = 0x10000  # handle 1:


def interface_ops(spec: LinkSpec, to: str) -> list[QdiscOp]:
    try:
        dst = ipaddress.IPv4Network(to, strict=False)
    except ValueError as exc:
        raise ScenarioError(f"--to {to!r}: {exc}") from None
    return render_interface(spec, dst)


def shape_interface(iface: str, ops: Sequence[QdiscOp], *, netns: str | None = None) -> None:
    """Apply rendered HTB/filter/leaf operations to ``iface`` (host namespace unless ``netns``)."""
    if any(op.kind == "netem" for op in ops):
        from harness.network.probe import probe

        if not probe().check("netem").works:
            raise CapabilityError(
                "this kernel has no netem, so delay/jitter/loss cannot be shaped on a real interface; "
                "use --dry-run to print the tc commands for a host that has it"
            )
    with kernel.rtnl(netns) as ipr:
        found = ipr.link_lookup(ifname=iface)
        if not found:
            raise ScenarioError(f"no interface {iface!r}")
        kernel.apply_ops(ipr, found[0], ops)


def unshape_interface(iface: str, *, netns: str | None = None) -> bool:
    """Remove our HTB root from ``iface``; returns False when the root is not ours (left alone)."""
    with kernel.rtnl(netns) as ipr:
        found = ipr.link_lookup(ifname=iface)
        if not found:
            return False
        roots = [q for q in kernel.read_qdiscs(ipr, found[0]) if q["parent"] == 0xFFFFFFFF]
        if not (roots and roots[0]["kind"] == "htb" and roots[0]["handle"] == _ROOT):
            return False
        ipr.tc("del", index=found[0], handle=_ROOT, parent=0xFFFFFFFF)
        return True


def record_interface(prefix: str, iface: str, backend: str, table: dict) -> None:
    """Note a shaped host interface in the prefix's state file, so ``net down`` restores it."""
    from harness.network.locks import state_lock
    from harness.network.state import State

    with state_lock(prefix):
        st = State.load(prefix) or State(prefix, backend, table)
        if iface not in st.interfaces:
            st.interfaces.append(iface)
        st.save()
