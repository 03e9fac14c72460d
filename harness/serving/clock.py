"""Virtual time for asyncio: the same coroutines that serve HTTP in real time run a simulation here.

``VirtualTimeLoop`` is a selector event loop whose ``time()`` is a number it owns. When nothing is
ready to run it does not block: it jumps the clock to the earliest scheduled timer. So
``asyncio.sleep``, ``loop.call_at``, futures, events and queues behave exactly as on a real loop, only
as fast as the CPU allows. The model never reads the wall clock; it asks ``loop.time()``.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class VirtualTimeDeadlock(RuntimeError):
    """Every coroutine waits on something no timer will ever set: the simulation cannot progress."""


class _JumpingSelector(selectors.DefaultSelector):
    """Polls without blocking; a wait of ``timeout`` seconds becomes a jump of the virtual clock."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None):  # type: ignore[override]
        loop = self.loop
        if loop is not None and timeout is None and not loop._ready:
            raise VirtualTimeDeadlock("no ready callbacks and no timers: every task waits forever")
        if loop is not None and timeout and loop._scheduled:
            # Jump exactly to the earliest timer's deadline (not clock + timeout: no rounding drift).
            loop._now = max(loop._now, loop._scheduled[0]._when)
        return super().select(0)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on a virtual clock starting at ``start`` seconds."""

    def __init__(self, start: float = 0.0) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self._now = float(start)
        # Timers due within this much of "now" run together; tiny, so order follows deadlines.
        self._clock_resolution = 1e-9

    def time(self) -> float:
        return self._now


async def sleep_until(when: float) -> None:
    """Sleep until the loop clock reads ``when`` (a deadline, not ``when - now`` seconds: no float drift)."""
    loop = asyncio.get_running_loop()
    if loop.time() < when:
        fut = loop.create_future()
        handle = loop.call_at(when, wake, fut)
        try:
            await fut
        finally:
            handle.cancel()


def wake(fut: asyncio.Future) -> None:
    """Resolve ``fut`` unless it already is (a timer and an early wake-up can both reach it)."""
    if not fut.done():
        fut.set_result(None)


def run_virtual(main: Coroutine[Any, Any, T], *, start: float = 0.0) -> T:
    """Run ``main`` to completion on a fresh virtual-time loop and close it: ``asyncio.run`` on virtual time.

    ``asyncio.Runner`` does the rest, as for ``asyncio.run``: Ctrl-C cancels ``main`` and then raises
    KeyboardInterrupt, so every task unwinds quietly instead of one of them dying with the interrupt and
    being logged as a traceback; tasks still pending at the end are cancelled and awaited.
    """
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(start)) as runner:
        return runner.run(main)
