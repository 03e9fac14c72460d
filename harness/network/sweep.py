"""Finding and removing what a network with one prefix left behind: relays, processes, namespaces.

Only exact matches are touched: namespaces named prefix + a site name, relays whose command line
carries ``--tag <prefix>``, and processes recorded in the prefix's state file by pid *and* start
time (a reused pid is never killed).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from harness.network import kernel
from harness.network.host import unshape_interface
from harness.network.spec import SITE_NAME
from harness.network.state import STATE_DIR, State, is_alive, start_ticks


def _is_ours(name: str, prefix: str) -> bool:
    """A namespace is ours only if it is exactly prefix + a valid site name (so "pfb-" never sweeps
    another instance's "pfb-t1-local" or the probe's "pfb-probe-123")."""
    return name.startswith(prefix) and bool(SITE_NAME.match(name[len(prefix) :]))


def _is_ours_control(name: str, prefix: str) -> bool:
    """A relay control file is ours only if it is exactly prefix + ``<site>-<site>.ctl.json`` (the
    glob ``pfb-*`` alone would also match ``pfb-t1-a-b.ctl.json`` of a running "pfb-t1-" network)."""
    src, sep, dst = name[len(prefix) : -len(".ctl.json")].partition("-")
    return bool(sep and SITE_NAME.match(src) and SITE_NAME.match(dst))


def kill_process(pid: int, ticks: int, *, group: bool) -> None:
    """SIGTERM, then SIGKILL after 2 s, one process (or its whole session) identified by pid+start."""
    if not is_alive(pid, ticks):
        return
    send = os.killpg if group else os.kill
    with contextlib.suppress(ProcessLookupError, PermissionError):
        send(pid, signal.SIGTERM)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap if it is our child, so it does not linger as a zombie
        if not is_alive(pid, ticks):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        send(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def relay_pids(prefix: str) -> list[tuple[int, int]]:
    """Relay processes started for exactly this prefix (found by their command line)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"harness.network.relay" in argv and b"--tag" in argv:
            i = argv.index(b"--tag")
            if i + 1 < len(argv) and argv[i + 1] == prefix.encode():
                ticks = start_ticks(int(entry.name))
                if ticks is not None:
                    out.append((int(entry.name), ticks))
    return out


def owned_namespaces(prefix: str) -> list[str]:
    """Namespaces that belong to exactly this prefix."""
    return [ns for ns in kernel.list_namespaces(prefix) if _is_ours(ns, prefix)]


def sweep(prefix: str) -> list[str]:
    """Remove everything a previous run with this exact prefix left: processes, relays, namespaces,
    the state file. Returns what was removed (for messages)."""
    removed = []
    old = State.load(prefix)
    if old is not None:
        for pid, ticks in old.spawned:
            kill_process(pid, ticks, group=True)
        for pid, ticks in old.relays.values():
            if is_alive(pid, ticks):
                removed.append(f"relay pid {pid}")
            kill_process(pid, ticks, group=False)
        for iface in old.interfaces:
            with contextlib.suppress(OSError, LookupError):
                if unshape_interface(iface):  # False: gone, or its root is no longer ours
                    removed.append(f"qdisc on {iface}")
    for pid, ticks in relay_pids(prefix):
        kill_process(pid, ticks, group=False)
        removed.append(f"relay pid {pid}")
    for ns in owned_namespaces(prefix):
        kernel.remove_namespace(ns)
        removed.append(f"netns {ns}")
    for f in STATE_DIR.glob(f"{prefix}*.ctl.json"):
        if _is_ours_control(f.name, prefix):
            f.unlink(missing_ok=True)
    if old is not None:
        old.delete()
    return removed


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
