"""Who owns a prefix, decided by the kernel: an ``flock`` on ``<prefix>owner.lock`` in the state directory.

A process that builds a network takes the prefix's owner lock before it sweeps anything and holds it
for the network's lifetime (``net up`` without ``--hold`` only while it builds: that network then
belongs to no running process). The kernel drops the lock when the holder dies, however it dies, so:

- a second run with the same prefix finds the lock held and refuses, touching nothing;
- a sweep takes the lock first, so it only ever removes objects whose owner is dead, and nobody can
  become the owner between that check and the removal.

``state_lock`` serialises read-modify-write of the state file between processes (a builder and a
process that attached to its network), so two saves at once never lose a recorded process.

Lock files may be unlinked by their holder (a sweep removes everything of the prefix); a process
that opened the old file re-checks after locking that the path still names what it locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from harness.errors import CapabilityError
from harness.network.state import STATE_DIR


class FileLock:
    """An exclusive ``flock`` on ``path`` (created if missing, close-on-exec)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, *, blocking: bool) -> bool:
        """Lock; False when ``blocking`` is off and another open file holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return False
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return True
            os.close(fd)  # the holder unlinked it before we got it: lock the new file instead

    def release(self, *, unlink: bool = False) -> None:
        """Unlock (removing the file first with ``unlink``, so nothing is left behind)."""
        if self.fd is None:
            return
        if unlink:
            self.path.unlink(missing_ok=True)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def owner_lock_path(prefix: str) -> Path:
    return STATE_DIR / f"{prefix}owner.lock"


_claims: dict[str, tuple[int, FileLock]] = {}  # prefix -> (pid, lock) held by this process
_claims_guard = threading.Lock()


def claim_prefix(prefix: str, *, hint: str = "") -> FileLock:
    """Take ownership of ``prefix`` (non-blocking) and write our pid into the lock file. Raises
    ``CapabilityError`` naming the holder (and ``hint``) when another running process owns it."""
    lock = FileLock(owner_lock_path(prefix))
    if not lock.acquire(blocking=False):
        holder = _holder_pid(prefix)
        who = f"running process {holder}" if holder.isdigit() else "a running process"
        raise CapabilityError(f"prefix {prefix!r} is in use by {who}" + (f"; {hint}" if hint else ""))
    assert lock.fd is not None
    os.ftruncate(lock.fd, 0)
    os.pwrite(lock.fd, f"{os.getpid()}\n".encode(), 0)
    with _claims_guard:
        _claims[prefix] = (os.getpid(), lock)
    return lock


def _holder_pid(prefix: str, wait_s: float = 1.0) -> str:
    """The pid the owner wrote into the lock file. The owner writes it just after it locks, so a
    file still empty is one being claimed this moment: wait for the pid (seen in the 1-vCPU netem
    VM, where three runs racing for one prefix were refused naming no process)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            holder = owner_lock_path(prefix).read_text(encoding="ascii").strip()
        except OSError:
            holder = ""
        if holder.isdigit() or time.monotonic() >= deadline:
            return holder
        time.sleep(0.01)


def release_prefix(prefix: str, lock: FileLock, *, unlink: bool = False) -> None:
    """Give up ownership taken with ``claim_prefix``."""
    with _claims_guard:
        if _claims.get(prefix, (None, None))[1] is lock:
            del _claims[prefix]
    lock.release(unlink=unlink)


def holds_prefix(prefix: str) -> bool:
    """Whether this process (not a forked copy of its owner) owns ``prefix`` now."""
    with _claims_guard:
        entry = _claims.get(prefix)
    return entry is not None and entry[0] == os.getpid()


@contextlib.contextmanager
def owning(prefix: str) -> Iterator[FileLock | None]:
    """Own ``prefix`` while inside: re-entrant if this process already does (yields None then),
    else claims it (raising if another process owns it), yields the lock, and releases it after."""
    if holds_prefix(prefix):
        yield None
        return
    lock = claim_prefix(prefix, hint="stop it first")
    try:
        yield lock
    finally:
        release_prefix(prefix, lock)


@contextlib.contextmanager
def state_lock(prefix: str) -> Iterator[FileLock]:
    """Hold the prefix's state lock (blocking) around a read-modify-write of its state file. Never
    nest it in one process (a second ``flock`` would wait for the first)."""
    lock = FileLock(STATE_DIR / f"{prefix}state.lock")
    lock.acquire(blocking=True)
    try:
        yield lock
    finally:
        lock.release()
