"""Worker processes: each drives every N-th request of the shared schedule against the same t0.
``dispatch`` is one worker's loop, the same in these processes and in Ray's actors (``loadworker``).

Protocol over one pipe per worker (parent <-> worker):

    worker -> ("ready",)                       after imports
    parent -> WorkerSetup                      carries the common t0
    worker -> ("records", [RequestRecord...], dispatched)   batches, every ~50 ms
    worker -> ("done", dispatched, loop)       after the last record (also after SIGTERM); ``loop`` is
                                               its event loop's stalls (``harness.loadgen.stalls``)
    worker -> ("failed", message)              an unexpected exception in the worker

Workers ignore SIGINT: on Ctrl-C the parent sends each worker SIGTERM, which cancels its dispatch;
in-flight requests then end as "cancelled" records and are still sent back and written. In the parent,
Ctrl-C only sets a flag while records are collected: a KeyboardInterrupt raised inside ``on_record``
would drop the rest of a batch, or leave a record written but not counted.

Workers die with their parent (``lifeline.die_with_parent``): after ``kill -9`` of the parent the
kernel kills them at once, so no orphan keeps sending load that nobody records.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from harness.lifeline import die_with_parent
from harness.loadgen.config import Endpoint
from harness.loadgen.driver import WorkerSetup, drive
from harness.loadgen.schedule import Schedule
from harness.loadgen.stalls import merge, watched
from harness.records import RequestRecord
from harness.traces.frame import Trace
from harness.traces.prompts import PromptSynth

_FLUSH_S = 0.05


def _worker_main(
    conn: Connection,
    endpoint: Endpoint,
    trace: Trace,
    schedule: Schedule,
    parent_pid: int,
) -> None:
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        conn.send(("ready",))
        setup: WorkerSetup = conn.recv()
        counters = {"dispatched": 0}
        loop = asyncio.run(_until_sigterm(endpoint, trace, schedule, setup, conn, counters))
        conn.send(("done", counters["dispatched"], loop))
    except Exception as exc:  # report, never hang the parent
        with contextlib.suppress(OSError):
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


async def _until_sigterm(endpoint, trace, schedule, setup, conn, counters) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    send = lambda batch, dispatched: conn.send(("records", batch, dispatched))  # noqa: E731
    return await dispatch(endpoint, trace, schedule, setup, send, counters)


async def dispatch(
    endpoint: Endpoint,
    trace: Trace,
    schedule: Schedule,
    setup: WorkerSetup,
    send: Callable[[list[RequestRecord], int], None],
    counters: dict[str, int],
) -> dict[str, Any]:
    """One worker's run of ``schedule``: its records go to ``send(batch, dispatched so far)`` every
    50 ms and once more at the end. Cancelling the task stops the dispatch: requests in flight end as
    "cancelled" records, still sent. Returns the event loop's stalls (``harness.loadgen.stalls``)."""
    synth = PromptSynth(fits=setup.prompt_fits, block_tokens=trace.block_tokens, salt=setup.seed)
    buf: list[RequestRecord] = []

    def flush() -> None:
        if buf:
            send(buf[:], counters["dispatched"])
            buf.clear()

    async def flusher() -> None:
        while True:
            await asyncio.sleep(_FLUSH_S)
            flush()

    f = asyncio.create_task(flusher())
    with watched(setup.t0) as watch:
        try:
            await drive(endpoint, trace, schedule, setup, buf.append, synth, counters)
        except asyncio.CancelledError:
            pass  # stopped: drive already turned in-flight requests into "cancelled" records
        finally:
            f.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await f
            flush()
    return watch.summary()


def run_workers(
    n: int,
    endpoint: Endpoint,
    trace: Trace,
    schedule: Schedule,
    make_setup: Callable[[float, float], WorkerSetup],
    on_record: Callable[[RequestRecord], None],
    on_tick: Callable[[int], None],
) -> dict[str, Any]:
    """Run ``n`` worker processes over ``schedule``; ``on_record`` gets every record in the parent.
    Returns the workers' event-loop stalls, merged (``harness.loadgen.stalls``).
    The workers die with the calling thread (which this call keeps busy until they end).

    ``make_setup(t0, wall_offset_s)`` builds the shared setup once all workers are ready.
    ``on_tick(dispatched)`` is called at least every 0.25 s. Ctrl-C stops the workers, collects what
    they recorded, then re-raises KeyboardInterrupt.
    """
    ctx = mp.get_context("spawn")
    conns, procs = [], []
    try:
        for k in range(n):
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=_worker_main,
                args=(child, endpoint, trace, schedule.part(k, n), os.getpid()),
                daemon=True,
            )
            p.start()
            child.close()
            conns.append(parent)
            procs.append(p)
        for c, p in zip(conns, procs, strict=True):
            _expect_ready(c, p)
        t0 = time.monotonic() + 0.1  # a common start slightly ahead, so no worker starts late
        setup = make_setup(t0, time.time() + 0.1)
        for c in conns:
            c.send(setup)
        return merge(_collect(conns, procs, on_record, on_tick))
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        for c in conns:
            c.close()


def _expect_ready(conn: Connection, proc) -> None:
    # Poll, never block: a worker that dies before unpickling its pipe leaves the parent's duplicate of
    # the fd open (multiprocessing's resource sharer), so recv() would wait for ever.
    died = RuntimeError(
        "replay worker exited during start-up; scripts that call replay() with workers > 1 need an "
        "`if __name__ == '__main__':` guard (workers are spawned and re-import the main module)"
    )
    while not conn.poll(0.2):
        if not proc.is_alive():
            raise died
    try:
        msg = conn.recv()
    except EOFError:
        raise died from None
    if msg[0] == "failed":
        raise RuntimeError(f"replay worker failed to start: {msg[1]}")


def _collect(conns, procs, on_record, on_tick) -> list[dict[str, Any]]:
    """Every worker's records to ``on_record`` until all have ended; returns their stall summaries."""
    live = dict(zip(conns, procs, strict=True))
    loops: list[dict[str, Any]] = []
    dispatched = dict.fromkeys(conns, 0)
    failures: list[str] = []
    with ctrl_c_counter() as ctrl_c:
        stopped = 0  # Ctrl-Cs acted on: the first stops workers gracefully, a second kills them
        while live:
            if ctrl_c.count > stopped:
                stopped = ctrl_c.count
                for p in live.values():
                    if p.is_alive():
                        (p.terminate if stopped == 1 else p.kill)()  # SIGTERM: records still come back
            for c in wait(list(live), timeout=0.25):
                try:
                    msg = c.recv()
                except EOFError:
                    failures.append("a worker exited without reporting")
                    del live[c]
                    continue
                if msg[0] == "records":
                    for rec in msg[1]:
                        on_record(rec)
                    dispatched[c] = msg[2]
                else:
                    if msg[0] == "failed":
                        failures.append(msg[1])
                    elif msg[0] == "done":
                        dispatched[c] = msg[1]
                        loops.append(msg[2])
                    del live[c]
            for c, p in list(live.items()):
                if not p.is_alive() and not c.poll():
                    failures.append(f"a worker died (exit code {p.exitcode})")
                    del live[c]
            on_tick(sum(dispatched.values()))
    if ctrl_c.count:
        raise KeyboardInterrupt
    if failures:
        raise RuntimeError("replay worker failed: " + "; ".join(failures))
    return loops


@dataclass
class _CtrlC:
    count: int = 0


@contextlib.contextmanager
def ctrl_c_counter():
    """Count SIGINTs instead of raising KeyboardInterrupt, where a handler can be set (the main thread)."""
    seen = _CtrlC()
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return

    def count(_signum, _frame) -> None:
        seen.count += 1

    previous = signal.signal(signal.SIGINT, count)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)
