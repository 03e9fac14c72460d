"""Scheduling lag of a site process's event loop: how late a timer fires, in wall seconds.

A probe sleeps ``interval_s`` wall seconds over and over and records how much later than due it
woke; a loop busy serving (SSE writes, decode steps, KV frames) wakes late. The last ``keep``
samples (10 minutes at the 5 ms interval) give the quantiles ``/metrics`` reports and ``benchmarks/bench_serve.py`` bounds.
"""

from __future__ import annotations

import asyncio
from collections import deque

import numpy as np


class LagProbe:
    """Samples timer lateness on the running loop; ``speedup`` converts loop seconds to wall seconds."""

    def __init__(self, *, speedup: float = 1.0, interval_s: float = 0.005, keep: int = 120_000) -> None:
        self.speedup, self.interval_s = speedup, interval_s
        self.samples: deque[float] = deque(maxlen=keep)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="lag-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def reset(self) -> None:
        self.samples.clear()

    def quantiles(self, qs: tuple[float, ...] = (0.5, 0.99, 1.0)) -> dict[float, float]:
        """Lag quantiles in wall seconds (NaN before the first sample)."""
        if not self.samples:
            return {q: float("nan") for q in qs}
        values = np.quantile(np.fromiter(self.samples, float), qs)
        return dict(zip(qs, values.tolist(), strict=True))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        step = self.interval_s * self.speedup  # loop seconds
        while True:
            due = loop.time() + step
            await asyncio.sleep(step)
            self.samples.append(max(0.0, loop.time() - due) / self.speedup)
