"""Where the client's event loop lost time, so a late send can be explained instead of only counted.

A heartbeat task stamps the loop every ``BEAT_S``; a watchdog thread notices when the stamps stop for
more than ``STALL_S``. For each such stall it keeps the main thread's innermost frames (what held the
loop, or ``select`` when the loop was idle but not woken) and splits the stall's length with the main
thread's ``/proc/self/task/<tid>/schedstat`` into

- **ran**: the main thread was on a CPU: code on the loop (ours or a library's) held it;
- **waited**: it was runnable but waited for a CPU: the machine was busy;
- **blocked**: neither: a blocking system call (a disk flush, a lock), or a late timer.

Only the stall summary leaves the process (``LoopWatch.summary``; ``merge`` joins several workers').
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.loadgen.conditions import schedstat_ns

BEAT_S = 0.01
STALL_S = 0.05
KEEP = 5  # the longest stalls kept with their frames
# The watchdog thread could not look either: the process was off the CPU, or native code held the GIL.
_UNSEEN = "not seen: the watchdog thread did not run either"


def _schedstat(tid: int) -> tuple[float, float] | None:
    """(on-CPU s, runnable-waiting s) of one thread of this process, or None without schedstats."""
    figures = schedstat_ns(Path(f"/proc/self/task/{tid}/schedstat"))
    return None if figures is None else (figures[0] / 1e9, figures[1] / 1e9)


def _where(frame: Any) -> str:
    """The main thread's innermost three frames, innermost last (``file:line function``)."""
    if frame is None:
        return "?"
    stack = traceback.extract_stack(frame)[-3:]
    return " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(stack))


class LoopWatch:
    """Watch the running loop of this thread (start inside it, ``stop`` before it closes).

    The heartbeat measures each stall itself (the gap between two beats, and the main thread's
    schedstat across it), so a stall of the whole process, which the thread cannot see either, still
    counts; the thread only records what the main thread was running while a beat was overdue."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0  # run clock zero (time.monotonic)
        self._main = threading.get_ident()
        self._tid = threading.get_native_id()
        self._beat = time.monotonic()
        self._seen: dict[float, str] = {}  # beat -> the main thread's frames while the next was overdue
        self._done = threading.Event()
        self._stalls: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._watch, name="loop-watch", daemon=True)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._heartbeat(), name="loop-heartbeat")
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (no await: a run being cancelled ends here without a second cancellation)."""
        self._done.set()
        if self._task is not None:
            self._task.cancel()
        self._thread.join()  # within one BEAT_S

    async def _heartbeat(self) -> None:
        last, figures = time.monotonic(), _schedstat(self._tid)
        while True:
            self._beat = last
            await asyncio.sleep(BEAT_S)
            now, after = time.monotonic(), _schedstat(self._tid)
            if now - last > BEAT_S + STALL_S:
                where = self._seen.pop(last, _UNSEEN)
                self._stalls.append(_stall(last - self.t0, now - last, where, figures, after))
            self._seen.clear()
            last, figures = now, after

    def _watch(self) -> None:
        while not self._done.wait(BEAT_S):
            beat = self._beat
            if time.monotonic() - beat > BEAT_S + STALL_S and beat not in self._seen:
                self._seen[beat] = _where(sys._current_frames().get(self._main))

    def summary(self) -> dict[str, Any]:
        """Counts and seconds of the stalls seen, and the ``KEEP`` longest with their frames."""
        return {**merge([_alone(s) for s in self._stalls]), "processes": 1}


def _stall(start_s: float, length_s: float, where: str, before, after) -> dict[str, Any]:
    ran = waited = None
    if before is not None and after is not None:
        ran, waited = (min(max(a - b, 0.0), length_s) for a, b in zip(after, before, strict=True))
        waited = min(waited, length_s - ran)
    return {"start_s": start_s, "length_s": length_s, "where": where, "ran_s": ran, "waited_s": waited}


def _alone(stall: dict[str, Any]) -> dict[str, Any]:
    """The summary of one stall (``merge`` adds them up)."""
    split = stall["ran_s"] is not None
    return {
        "count": 1,
        "stalled_s": stall["length_s"],
        "max_s": stall["length_s"],
        "ran_s": stall["ran_s"],
        "waited_s": stall["waited_s"],
        "blocked_s": stall["length_s"] - stall["ran_s"] - stall["waited_s"] if split else None,
        "worst": [stall],
    }


def merge(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary of several processes' (``--workers``): counts and seconds add, the longest stay."""

    def total(key: str) -> float | None:
        values = [s[key] for s in summaries if s[key] is not None]
        return sum(values) if values else None

    return {
        "threshold_s": STALL_S,
        "processes": sum(s.get("processes", 0) for s in summaries),  # each watched one loop
        "count": sum(s["count"] for s in summaries),
        "stalled_s": total("stalled_s") or 0.0,
        "max_s": max((s["max_s"] for s in summaries), default=0.0),
        "ran_s": total("ran_s"),
        "waited_s": total("waited_s"),
        "blocked_s": total("blocked_s"),
        "worst": sorted((w for s in summaries for w in s["worst"]), key=lambda w: -w["length_s"])[:KEEP],
    }


@contextlib.contextmanager
def watched(t0: float) -> Iterator[LoopWatch]:
    """``with watched(t0) as w`` inside a coroutine: its loop watched for the block; ``w.summary()`` after."""
    watch = LoopWatch(t0)
    watch.start()
    try:
        yield watch
    finally:
        watch.stop()
