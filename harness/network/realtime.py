"""Real-time scheduling for the threads whose timing is the measurement: the relay, and the
endpoints of ``net check``'s round trips.

On a busy host a normal thread that wakes may wait for a CPU hog's time slice to end (4 ms at
HZ=250): that is what pushed relay RTT tests to 12 ms for 8 configured (issue 12). At the lowest
real-time priority (SCHED_FIFO 1) a thread that wakes runs at once; the kernel's RT throttling
(95% of each second by default) still bounds a thread that never sleeps.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

_PR_SET_TIMERSLACK = 29


def prioritise(*, fallback_nice: int | None = None) -> str:
    """Move the calling thread (Linux schedules threads) to SCHED_FIFO 1 with 1 µs timer slack
    instead of 50 µs. Without the right to (not root), renice by ``fallback_nice`` if given.
    Returns what it got: "fifo", "nice" or "normal"."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, 1000, 0, 0, 0)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        return "fifo"
    except OSError:
        pass
    if fallback_nice is not None:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, fallback_nice)
            return "nice"
    return "normal"
