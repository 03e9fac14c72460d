"""A real-time asyncio loop whose clock runs ``speedup`` times faster than the wall clock.

The serving stack reads only ``loop.time()`` and sleeps only through the loop, so the same objects
that ``simulate`` runs on a virtual clock run here on ``time.monotonic() * speedup``: a one-second
prefill takes 1/s wall seconds, and timestamps stay in the modelled deployment's seconds. Every process
of one emulated cluster uses the same ``speedup``, so their clocks (CLOCK_MONOTONIC scaled alike)
agree with each other.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _ScaledSelector(selectors.DefaultSelector):
    """Turns a wait of ``timeout`` loop seconds into ``timeout / speedup`` wall seconds."""

    def __init__(self, speedup: float) -> None:
        super().__init__()
        self.speedup = speedup

    def select(self, timeout: float | None = None):  # type: ignore[override]
        return super().select(None if timeout is None else timeout / self.speedup)


class ScaledTimeLoop(asyncio.SelectorEventLoop):
    """Selector loop on ``time.monotonic() * speedup`` (speedup 1 is an ordinary loop)."""

    def __init__(self, speedup: float = 1.0) -> None:
        if not speedup > 0:
            raise ValueError("speedup must be > 0")
        super().__init__(_ScaledSelector(speedup))
        self.speedup = float(speedup)

    def time(self) -> float:
        return time.monotonic() * self.speedup


def run_scaled(main: Coroutine[Any, Any, T], *, speedup: float = 1.0) -> T:
    """Like ``asyncio.run(main)``, on a ``ScaledTimeLoop``."""
    with asyncio.Runner(loop_factory=lambda: ScaledTimeLoop(speedup)) as runner:
        return runner.run(main)
