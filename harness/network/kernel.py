"""The one place that talks to the kernel: namespaces, links, qdisc operations, sysctls, processes.

Everything goes through pyroute2 (netlink, setns); nothing here shells out to ``ip`` or ``tc``.
Callers hand in pure descriptions (``QdiscOp`` lists, names, addresses) made elsewhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, netns
from pyroute2.netlink import NETLINK_ROUTE
from pyroute2.netlink.rtnl.tcmsg import sched_netem

from harness.network.render import QdiscOp

NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000
_TC_H_ROOT = 0xFFFFFFFF
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_setns = _libc.setns


def _netem_rate_stays_in_netem(request: dict[str, Any]) -> None:
    """pyroute2 reads netem's ``rate`` into TCA_NETEM_RATE but leaves it in the request too, where it
    becomes the top-level TCA_RATE (a rate estimator's parameters); TBF's plugin drops it the same way."""
    request.pop("rate", None)


sched_netem.fix_request = _netem_rate_stays_in_netem


def list_namespaces(prefix: str) -> list[str]:
    """Namespaces whose name starts with exactly ``prefix`` (only ours: the caller owns the prefix)."""
    return sorted(n for n in netns.listnetns() if n.startswith(prefix))


def create_namespace(name: str) -> None:
    """Create a named namespace (bind-mounted at /run/netns/<name>, as ``ip netns add`` does).

    Done on a short-lived thread (unshare is per thread for netns) rather than pyroute2's forked
    helper, so nothing races with the caller and no child process is involved."""

    def make() -> None:
        if _libc.unshare(_CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")
        netns._create(name, _libc, pid=f"self/task/{threading.get_native_id()}")

    _on_thread(make)


def remove_namespace(name: str) -> None:
    """Remove a namespace; its veths, TUNs and qdiscs go with it once no process holds it."""
    with contextlib.suppress(FileNotFoundError):
        netns.remove(name)


@contextlib.contextmanager
def rtnl(ns: str | None) -> Iterator[IPRoute]:
    """An IPRoute socket inside ``ns`` (which must exist), or in the caller's namespace.

    The netlink socket is made on a short-lived thread that entered ``ns``, not by pyroute2's
    ``netns=``, which forks the whole process for every socket and gives the child 2 s to answer
    (retrying for 10 s): in the netem VM under TCG each fork took seconds, and a probe 76 s."""
    if ns:
        sock = _in_namespace(ns, socket.socket, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
        ipr = IPRoute(use_socket=sock)
    else:
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def ifindex(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise LookupError(f"no interface {name}")
    return found[0]


def apply_ops(ipr: IPRoute, index: int, ops: Sequence[QdiscOp]) -> None:
    """Apply rendered operations to one interface, in order (``replace`` semantics, so re-applying a
    changed spec updates the live qdiscs)."""
    roots = [q for q in ipr.get_qdiscs(index=index) if q["parent"] == _TC_H_ROOT]
    first = ops[0] if ops else None
    if roots and first is not None and first.parent == "root":
        kw = first.pyroute2_kwargs()
        if roots[0]["handle"] == kw.get("handle") and roots[0].get("kind") != first.kind:
            # the kernel will not change a qdisc's kind in place (EINVAL): remove it first
            ipr.tc("del", index=index, handle=roots[0]["handle"], parent=_TC_H_ROOT)
    for op in ops:
        ipr.tc(op.command, op.kind, index, **op.pyroute2_kwargs())


def read_qdiscs(ipr: IPRoute, index: int) -> list[dict[str, Any]]:
    """The qdiscs on one interface as plain dicts (kind, handle, parent, drops, decoded options)."""
    out = []
    for msg in ipr.get_qdiscs(index=index):
        opts = msg.get("options") or {}
        entry: dict[str, Any] = {"kind": msg.get("kind"), "handle": msg["handle"], "parent": msg["parent"]}
        entry["drops"] = (msg.get_attr("TCA_STATS") or {}).get("drop")  # packets it dropped so far
        if entry["kind"] == "tbf":
            parms = opts.get("TCA_TBF_PARMS") or {}
            entry["rate_bytes_s"] = parms.get("rate")
            entry["limit_bytes"] = parms.get("limit")
        elif entry["kind"] == "netem":
            entry["delay_us"] = _tick_us(opts.get("delay"))
            entry["jitter_us"] = _tick_us(opts.get("jitter"))
            entry["limit"] = opts.get("limit")
            entry["rate_bytes_s"] = (opts.get_attr("TCA_NETEM_RATE") or {}).get("rate") or None  # 0: none
        elif entry["kind"] in ("pfifo", "bfifo"):
            entry["limit"] = opts.get("limit")
        out.append(entry)
    return out


def _tick_us(ticks: int | None) -> int | None:
    """netem's delay and jitter come back in the kernel's scheduler ticks (64 ns here: 5 ms reads
    78125); microseconds, by the factor pyroute2 used to write them (from /proc/net/psched)."""
    from pyroute2.netlink.rtnl.tcmsg.common import tick_in_usec

    return None if ticks is None else round(ticks / tick_in_usec)


SEGMENTATION_OFFLOADS = ("tx-tcp-segmentation", "tx-generic-segmentation")  # TSO, GSO
OFFLOADS = (*SEGMENTATION_OFFLOADS, "rx-gro")


def read_offloads(ns: str, dev: str) -> dict[str, bool]:
    """TSO, GSO and GRO of ``dev`` in ``ns`` as the kernel has them (ethtool's feature names)."""
    from pyroute2.ethtool.ioctl import IoctlEthtool

    def read() -> dict[str, bool]:
        eth = IoctlEthtool(dev)
        try:
            feats = eth.get_features()
            return {name: bool(feats[name]) for name in OFFLOADS if name in feats}
        finally:
            eth.close()

    return _in_namespace(ns, read)


def set_segmentation_offloads(ns: str, dev: str, *, on: bool) -> None:
    """Turn TSO and GSO of ``dev`` in ``ns`` on or off. Off, TCP hands the qdiscs single packets
    instead of segments of up to 64 KiB, so that netem's loss drops one packet at a time."""
    from pyroute2.ethtool.ioctl import IoctlEthtool

    def write() -> None:
        eth = IoctlEthtool(dev)
        try:
            feats = eth.get_features()
            for name in SEGMENTATION_OFFLOADS:
                if name in feats:
                    feats[name] = on
            eth.set_features(feats)
        finally:
            eth.close()

    _in_namespace(ns, write)


def _on_thread(fn, *args) -> Any:
    """Run ``fn`` on a fresh thread and return its result (namespace changes die with the thread)."""
    result: dict[str, Any] = {}

    def body() -> None:
        try:
            result["value"] = fn(*args)
        except BaseException as exc:
            result["error"] = exc

    t = threading.Thread(target=body, name="pfb-netns")
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


def _in_namespace(ns: str, fn, *args) -> Any:
    """Run ``fn`` on a short-lived thread that has entered ``ns`` (setns is per thread for netns).
    Sockets it creates stay in ``ns`` wherever they are used afterwards."""

    def enter_and_run() -> Any:
        fd = os.open(NETNS_DIR / ns, os.O_RDONLY)
        try:
            if _setns(fd, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {ns} failed")
        finally:
            os.close(fd)
        return fn(*args)

    return _on_thread(enter_and_run)


def write_sysctls(ns: str, values: dict[str, str]) -> None:
    """Write ``net.*`` sysctls inside ``ns`` (e.g. ``net.ipv4.tcp_rmem``)."""

    def write() -> None:
        for key, value in values.items():
            Path("/proc/sys", *key.split(".")).write_text(value, encoding="ascii")

    _in_namespace(ns, write)


def read_sysctl(ns: str, key: str) -> str:
    return _in_namespace(ns, lambda: Path("/proc/sys", *key.split(".")).read_text(encoding="ascii").strip())


_CLONE_NEWNS = 0x00020000
_MS_REC, _MS_PRIVATE, _MNT_DETACH = 0x4000, 1 << 18, 2


def set_rps_cpus(ns: str, dev: str, mask: int) -> None:
    """Steer all of ``dev``'s received packets (in ``ns``) to the CPUs of ``mask`` (RPS; 0: off, each
    packet handled on the CPU that received it). A device's sysfs files are visible only in a sysfs
    mounted from inside its namespace: the thread enters the namespace and a mount namespace of its
    own, mounts sysfs there, writes, and takes both with it when it ends (as ``ip netns exec``)."""

    def write() -> None:
        if _libc.unshare(_CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS) failed")
        if _libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:  # nothing leaks back out
            raise OSError(ctypes.get_errno(), "making the thread's mounts private failed")
        with tempfile.TemporaryDirectory(prefix="pfb-sysfs-") as where:
            if _libc.mount(b"sysfs", where.encode(), b"sysfs", 0, None) != 0:
                raise OSError(ctypes.get_errno(), f"mounting sysfs for {ns} failed")
            try:
                Path(where, "class/net", dev, "queues/rx-0/rps_cpus").write_text(f"{mask:x}\n")
            finally:
                _libc.umount2(where.encode(), _MNT_DETACH)

    _in_namespace(ns, write)


def socket_in(ns: str, family: int, kind: int):
    """A socket created inside ``ns``; it stays bound to that namespace wherever it is used."""
    return _in_namespace(ns, socket.socket, family, kind)


def spawn_in(ns: str | None, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
    """Start ``argv`` inside namespace ``ns`` (setns in the child before exec)."""
    if ns is None:
        return subprocess.Popen(list(argv), **popen_kwargs)
    fd = os.open(NETNS_DIR / ns, os.O_RDONLY)

    def enter() -> None:  # runs in the forked child: one foreign call, nothing that may take a lock
        if _setns(fd, _CLONE_NEWNET) != 0:
            os._exit(126)
        os.close(fd)

    try:
        return subprocess.Popen(list(argv), preexec_fn=enter, pass_fds=(fd,), **popen_kwargs)
    finally:
        os.close(fd)
