"""Where sweep points run. Every executor has the same small shape, so the sweep loop never knows which:

    with executor:                       # start (a pool, a Ray connection); stop on every exit path
        executor.slots                   # batches that run at once: the loop keeps that many in flight
        handle = executor.submit(batch)  # run a batch of points (``harness.sweep.point.run_batch``)
        executor.wait(handles)           # block until one finishes: [(handle, rows)], a row per point

A batch that dies with its worker comes back as failed rows, never as an exception. ``LocalPool`` is
a process pool on this host (no Ray imported); ``harness.sweep.rayexec.RayExecutor`` runs batches as
Ray tasks, on a local Ray or an existing cluster.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

from harness.lifeline import die_with_parent
from harness.sweep.point import failed_row, run_batch
from harness.sweep.spec import Point

Rows = list[dict[str, Any]]


class Executor(Protocol):
    slots: int

    def __enter__(self) -> Executor: ...
    def __exit__(self, *exc: object) -> None: ...
    def submit(self, batch: Sequence[Point]) -> Any: ...
    def wait(self, handles: Iterable[Any]) -> list[tuple[Any, Rows]]: ...


def _worker_init(driver_pid: int) -> None:
    """In each pool process: die with the sweep (even a SIGKILLed one), and leave Ctrl-C to it."""
    die_with_parent(driver_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class LocalPool:
    """``workers`` processes on this host, started fresh (``spawn``: never a fork of the busy driver)
    from the driver's main thread, which outlives them (the kernel's parent-death signal needs that)."""

    def __init__(self, workers: int | None = None, *, runs_dir: str | None = None) -> None:
        self.slots = workers or os.cpu_count() or 1
        self.runs_dir = runs_dir
        self._pool: ProcessPoolExecutor | None = None
        self._batches: dict[Future, Sequence[Point]] = {}

    def __enter__(self) -> LocalPool:
        self._pool = ProcessPoolExecutor(
            self.slots,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(os.getpid(),),
        )
        return self

    def __exit__(self, *exc: object) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if exc[0] is not None:  # interrupted or failed: stop the points still running, now
            _kill_workers(pool)
        pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, batch: Sequence[Point]) -> Future:
        assert self._pool is not None, "LocalPool is used inside `with`"
        try:
            future = self._pool.submit(run_batch, list(batch), self.runs_dir)
        except BrokenProcessPool:  # a worker died while idle: nothing was lost, start another pool
            self._replace_broken()
            future = self._pool.submit(run_batch, list(batch), self.runs_dir)
        self._batches[future] = batch
        return future

    def wait(self, handles: Iterable[Future]) -> list[tuple[Future, Rows]]:
        done, _ = wait_futures(list(handles), return_when=FIRST_COMPLETED)
        out = []
        for future in done:
            batch = self._batches.pop(future)
            error = future.exception()
            if error is None:
                out.append((future, future.result()))
            else:  # the worker process died (killed, out of memory): the pool is broken, start another
                why = f"worker process died ({type(error).__name__}: {error})"
                out.append((future, [failed_row(p, why) for p in batch]))
                self._replace_broken()
        return out

    def _replace_broken(self) -> None:
        pool = self._pool
        if pool is not None and getattr(pool, "_broken", False):
            pool.shutdown(wait=False, cancel_futures=True)
            self.__enter__()


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """SIGKILL the pool's processes: shutdown() alone would wait for every running point to end.
    (Python 3.14 has ``pool.kill_workers()``; before it, the process table is private.)"""
    kill = getattr(pool, "kill_workers", None)
    if kill is not None:
        kill()
        return
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        if proc.is_alive():
            proc.kill()
