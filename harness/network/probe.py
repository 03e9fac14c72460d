"""Which shaping backend works on this machine, and why the others do not.

1. ``netem``     delay/jitter/loss by netem, rate by TBF (a normal Linux host, as root);
2. ``relay``     rate by TBF, delay/jitter/loss by a userspace relay between TUN and veth (no netem);
3. ``app-delay`` rootless: no namespaces and no shaping; the harness only reports each link's
                 configured one-way delay for applications to sleep on. Labelled as such in results.

The probe builds a throwaway namespace ``prfaas-probe-<pid>-<start ticks>`` and tries the real qdiscs
in it, so it never touches an interface the harness did not create. The name is outside every sweep
prefix (those start with ``pfb``), so no sweep of a network can remove it mid-probe, and it names its
owner exactly: a later probe removes only those whose process is gone. A probe that fails for any
reason other than a missing kernel feature raises ``CapabilityError``; it never reports a working
backend as missing (which would downgrade a run to loopback).
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import struct
from dataclasses import dataclass

from harness.errors import CapabilityError

BACKENDS = ("netem", "relay", "app-delay")


@dataclass(frozen=True)
class BackendCheck:
    name: str
    works: bool
    reason: str


@dataclass(frozen=True)
class ProbeReport:
    checks: tuple[BackendCheck, ...]

    @property
    def chosen(self) -> str:
        return next(c.name for c in self.checks if c.works)

    def check(self, name: str) -> BackendCheck:
        return next(c for c in self.checks if c.name == name)


PROBE_NS = "prfaas-probe-"


def _tun_works(ns: str) -> str | None:
    from harness.network import kernel
    from harness.network.relay import open_tun

    def attempt() -> str | None:
        try:
            fd = open_tun()
        except OSError as exc:
            return f"TUN unavailable: {exc.strerror or exc}"
        try:
            fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", b"pfb-probe", 0x1001))
        except OSError as exc:
            return f"TUN unavailable: {exc.strerror or exc}"
        finally:
            os.close(fd)
        return None

    return kernel._in_namespace(ns, attempt)  # failing to enter the namespace is not a TUN answer


def _qdisc_error(ns: str, dev: str, kind: str, **kw) -> str | None:
    """Install a ``kind`` root qdisc on ``dev``: None if the kernel took it, else its answer. Each
    kind gets an interface of its own: the kernel will not change a root qdisc's kind in place
    (EINVAL), which once made netem look absent on every kernel (found in the netem VM)."""
    from pyroute2 import NetlinkError

    from harness.network import kernel

    with kernel.rtnl(ns) as ipr:
        idx = kernel.ifindex(ipr, dev)
        try:
            ipr.tc("replace", kind, idx, handle=0x10000, **kw)
        except NetlinkError as exc:  # the kernel's answer; anything else is a failed probe
            why = "not in this kernel" if exc.code == errno.ENOENT else f"refused by the kernel: {exc}"
            return f"{kind} qdisc {why}"
    return None


def _remove_stale_probes() -> None:
    """Remove probe namespaces whose probing process is gone (killed mid-probe)."""
    from harness.network import kernel
    from harness.network.state import is_alive

    for name in kernel.list_namespaces(PROBE_NS):
        pid, _, ticks = name[len(PROBE_NS) :].partition("-")
        if pid.isdigit() and ticks.isdigit() and not is_alive(int(pid), int(ticks)):
            kernel.remove_namespace(name)


@functools.cache
def probe() -> ProbeReport:
    """Probe once per process (cached): try each backend's kernel features for real. Raises
    ``CapabilityError`` (not cached) when the probe itself fails."""
    app = BackendCheck("app-delay", True, "always available: application-level delay only, no shaping")
    if os.geteuid() != 0:
        why = f"needs root (network namespaces, veth, tc); running as uid {os.geteuid()}"
        return ProbeReport((BackendCheck("netem", False, why), BackendCheck("relay", False, why), app))
    from harness.network import kernel
    from harness.network.state import start_ticks

    _remove_stale_probes()
    ns = f"{PROBE_NS}{os.getpid()}-{start_ticks(os.getpid())}"
    try:
        kernel.create_namespace(ns)
    except OSError as exc:
        why = f"cannot create a network namespace: {exc}"
        return ProbeReport((BackendCheck("netem", False, why), BackendCheck("relay", False, why), app))
    try:
        with kernel.rtnl(ns) as ipr:
            ipr.link("add", ifname="pfb-p0", kind="veth", peer={"ifname": "pfb-p1"})
        tbf = _qdisc_error(ns, "pfb-p0", "tbf", rate="10mbit", burst=3028, limit=30280)
        netem = _qdisc_error(ns, "pfb-p1", "netem", delay=1000, jitter=0, loss=0, limit=100)
        tun = _tun_works(ns)
    except Exception as exc:
        raise CapabilityError(
            f"probing the shaping backends in namespace {ns} failed: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        kernel.remove_namespace(ns)
    netem_check = BackendCheck(
        "netem", netem is None and tbf is None, netem or tbf or "netem and TBF qdiscs accepted by the kernel"
    )
    relay_why = tbf or tun
    relay_check = BackendCheck(
        "relay", relay_why is None, relay_why or "TBF accepted; TUN devices available for the userspace relay"
    )
    return ProbeReport((netem_check, relay_check, app))


def backend_name() -> str:
    """The backend this machine uses ("netem", "relay" or "app-delay"), for results' metadata."""
    return probe().chosen
