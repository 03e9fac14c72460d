"""Lifelines between processes: cleanup on SIGTERM in the right process only, and children that die
with their parent.

``exit_on_signals()`` turns SIGTERM and SIGHUP into ``SystemExit`` so ``finally`` blocks (teardown of
namespaces, site processes) run for them as for Ctrl-C. A forked child inherits Python signal
handlers and a copy of the parent's stack; pyroute2 forks short-lived helpers and stops them with
SIGTERM, and such a helper running the parent's ``finally`` removed the namespaces under its parent
(issue 12). So a handler installed here unwinds only in the process that installed it, and every
``os.fork()`` child resets it to the default action before running any other Python code (a signal
that arrives even earlier still only ends the child, with ``os._exit``).

``die_with_parent()`` asks the kernel to kill the calling process when its parent dies
(``PR_SET_PDEATHSIG``), for workers that must stop sending load at once after ``kill -9`` of their parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

_PR_SET_PDEATHSIG = 1
_ours: set[Any] = set()  # handlers installed by exit_on_signals, reset in forked children


class _Handler:
    def __init__(self, owner_pid: int) -> None:
        self.owner_pid = owner_pid

    def __call__(self, signum: int, _frame: Any) -> None:
        if os.getpid() != self.owner_pid:  # a forked copy: never run the owner's cleanup here
            os._exit(128 + signum)
        raise SystemExit(128 + signum)


def _reset_in_child() -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in _ours:
            signal.signal(sig, signal.SIG_DFL)


os.register_at_fork(after_in_child=_reset_in_child)


@contextlib.contextmanager
def exit_on_signals(*signals: signal.Signals) -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP (or ``signals``) raise ``SystemExit(128 + signum)`` in this
    process; forked children get the default action back. A no-op off the main thread (Python
    delivers signals there only). Restores the previous handlers on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = _Handler(os.getpid())
    _ours.add(handler)
    restore = {sig: signal.signal(sig, handler) for sig in signals or (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, previous in restore.items():
            signal.signal(sig, previous)
        _ours.discard(handler)


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def die_with_parent(parent_pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies, and exit now if the parent
    (``parent_pid``) is already gone. Linux ties this to the parent *thread* that started us: start
    such children from a thread that outlives them."""
    _prctl(_PR_SET_PDEATHSIG, int(sig))
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)
