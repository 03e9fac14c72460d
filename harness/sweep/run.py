"""``prfaas-bench sweep`` as a library call: the points not yet done, through an executor, each row
stored the moment it comes back; ``sweep.parquet`` rewritten at the end however the run ends."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.sweep.executors import Executor
from harness.sweep.spec import Point, Sweep
from harness.sweep.store import SweepStore


@dataclass
class Progress:
    """Where a sweep stands: ``total`` points, ``skipped`` found done on disk, ``done`` and ``failed``
    this run (``done`` counts failures too)."""

    total: int
    skipped: int
    done: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def rate(self) -> float:
        """Points per second finished by this run."""
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        left = self.total - self.skipped - self.done
        return left / self.rate if self.rate > 0 else None

    def line(self) -> str:
        """``12/40 points (3 done before), 1 failed, 0.82 points/s, ETA 35 s``."""
        eta = "-" if self.eta_s is None else f"{self.eta_s:.0f} s"
        before = f" ({self.skipped} done before)" if self.skipped else ""
        return (
            f"{self.skipped + self.done}/{self.total} points{before}, {self.failed} failed, "
            f"{self.rate:.3g} points/s, ETA {eta}"
        )


@dataclass(frozen=True)
class SweepResult:
    progress: Progress
    table: Path  # sweep.parquet


def pending_points(sweep: Sweep, store: SweepStore, *, retry_failed: bool = False) -> list[Point]:
    """The sweep's points without a row on disk (and the failed ones, with ``retry_failed``)."""
    status = store.status()
    redo = ("failed",) if retry_failed else ()
    return [p for p in sweep.points if p.key not in status or status[p.key] in redo]


def run_sweep(
    sweep: Sweep,
    executor: Executor,
    out: Path,
    *,
    batch_size: int = 1,
    retry_failed: bool = False,
    on_progress: Callable[[Progress], None] = lambda _: None,
) -> SweepResult:
    """Run every point of ``sweep`` not yet done in ``out``; an interrupt (or any error) stops the
    points in flight and still writes ``sweep.parquet`` from every row finished so far."""
    store = SweepStore(out)
    todo = pending_points(sweep, store, retry_failed=retry_failed)
    progress = Progress(total=len(sweep.points), skipped=len(sweep.points) - len(todo))
    on_progress(progress)
    try:
        if todo:
            with executor:
                _drive(executor, store, _batches(todo, batch_size), progress, on_progress)
    finally:
        table = store.consolidate(p.key for p in sweep.points)
        store.close()
    return SweepResult(progress, table)


def _drive(
    executor: Executor,
    store: SweepStore,
    batches: Iterator[Sequence[Point]],
    progress: Progress,
    on_progress: Callable[[Progress], None],
) -> None:
    """Keep ``executor.slots`` batches in flight (so a dispatched point is a running point), store
    each row as its batch comes back."""
    in_flight: set = set()
    while True:
        for batch in itertools.islice(batches, max(0, executor.slots - len(in_flight))):
            store.dispatched(p.key for p in batch)
            in_flight.add(executor.submit(batch))
        if not in_flight:
            return
        for handle, rows in executor.wait(in_flight):
            in_flight.discard(handle)
            for row in rows:
                store.write(row)
                progress.done += 1
                progress.failed += row["status"] == "failed"
            on_progress(progress)


def _batches(points: Sequence[Point], size: int) -> Iterator[Sequence[Point]]:
    for i in range(0, len(points), size):
        yield points[i : i + size]
