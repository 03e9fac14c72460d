"""Finding and removing what a network with one prefix left behind: relays, processes, namespaces.

Only exact matches are touched: namespaces named prefix + a site name, relays whose command line
carries ``--tag <prefix>``, processes recorded in the prefix's state file by pid *and* start
time (a reused pid is never killed), and the prefix's own files in the state directory.

A sweep runs only as the prefix's owner (``locks.owning``): it refuses while another running
process owns the prefix, and holds the ownership from its check to the last removal, so it only
ever removes what a dead (or finished) process left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from harness.network import kernel
from harness.network.host import unshape_interface
from harness.network.locks import owning, release_prefix, state_lock
from harness.network.spec import SITE_NAME
from harness.network.state import STATE_DIR, State, is_alive, start_ticks


def _is_ours(name: str, prefix: str) -> bool:
    """A namespace is ours only if it is exactly prefix + a valid site name (so "pfb-" never sweeps
    another instance's "pfb-t1-local" or a probe namespace)."""
    return name.startswith(prefix) and bool(SITE_NAME.match(name[len(prefix) :]))


_FILES = ("state.json", "state.lock", "owner.lock")
_RELAY_FILES = (".ctl.json", ".lag.json", ".relay.log")  # <src>-<dst> + these: a relay's files


def _is_ours_file(name: str, prefix: str) -> bool:
    """A state-directory file of exactly this prefix (the glob ``pfb-*`` alone would also match
    ``pfb-t1-a-b.ctl.json`` of a running "pfb-t1-" network), or a temporary file of one."""
    if not name.startswith(prefix):
        return False
    rest = name[len(prefix) :]
    base, dot, tail = rest.partition(".json.")
    if dot and tail.endswith(".tmp"):  # write_atomic's <name>.<pid>-<tid>.tmp
        rest = base + ".json"
    if rest in _FILES:
        return True
    for suffix in _RELAY_FILES:
        if rest.endswith(suffix):
            src, sep, dst = rest.removesuffix(suffix).partition("-")
            return bool(sep and SITE_NAME.match(src) and SITE_NAME.match(dst))
    return False


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
    its files. Returns what was removed (for messages). Raises ``CapabilityError`` when another
    running process owns the prefix; within the owner (a build, a teardown) it runs as part of it."""
    with owning(prefix) as claimed:
        removed = _remove_all(prefix)
        if claimed is not None:  # nobody owns the prefix now: its lock file goes too
            release_prefix(prefix, claimed, unlink=True)
    return removed


def _remove_all(prefix: str) -> list[str]:
    removed = []
    with state_lock(prefix) as lock:
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
        if STATE_DIR.is_dir():
            for f in STATE_DIR.iterdir():
                if _is_ours_file(f.name, prefix) and f.name not in (
                    f"{prefix}state.lock",
                    f"{prefix}owner.lock",
                ):
                    f.unlink(missing_ok=True)
        lock.release(unlink=True)
    return removed
