"""Real-time scheduling for the threads whose timing is the measurement: the relay, and the
endpoints of ``net check``'s round trips.

On a busy host a normal thread that wakes may wait for a CPU hog's time slice to end (4 ms at
HZ=250): that is what pushed relay RTT tests to 12 ms for 8 configured (issue 12). At the lowest
real-time priority (SCHED_FIFO 1) a thread that wakes runs at once; the kernel's RT throttling
(95% of each second by default) still bounds a thread that never sleeps.

On an idle host the cost moves to the CPU itself: a core that halted between packets takes a while
to wake, and in a VM that halts its vCPU (this machine's haltpoll) a wake-up goes through the host.
A relayed direction pays it when a frame arrives (which the relay cannot time) and the measuring
endpoints pay it too: an 8 ms round trip measured 9.5-10.8 ms at idle on 2026-12-03 and failed CI's
1 ms bound. ``wakeup_latency_held`` asks the kernel's PM QoS for 0 µs wake-up latency while a
measurement runs, so idle cores poll instead of halting (as cyclictest does): the same round trip
then measured 8.10-8.22 ms. It is not held for a whole run: a polling vCPU can slow the work beside
it (a one-core loop ran 6% and 32% slower, in medians of two alternating sets here), and the emulated
sites run beside the relays.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
from collections.abc import Iterator

_PR_SET_TIMERSLACK = 29
CPU_LATENCY = "/dev/cpu_dma_latency"


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


@contextlib.contextmanager
def wakeup_latency_held() -> Iterator[int | str]:
    """For the length of a ``with`` block, ask that no CPU take longer than 0 µs to wake (idle cores
    poll instead of halting). The kernel drops the request when the file is closed, on any exit,
    SIGKILL included, so nothing is left behind. Yields the open descriptor, or why not (a string)
    where the device is missing or not writable (not root); the block runs either way."""
    fd = None
    try:
        fd = os.open(CPU_LATENCY, os.O_WRONLY | os.O_CLOEXEC)
        os.write(fd, struct.pack("i", 0))  # a native s32, in µs
    except OSError as exc:
        if fd is not None:
            os.close(fd)
        yield f"{CPU_LATENCY}: {exc.strerror}"
        return
    try:
        yield fd
    finally:
        os.close(fd)
