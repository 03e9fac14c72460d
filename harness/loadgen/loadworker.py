"""``LoadWorker``: one load worker inside a Ray actor (``replay --ray-address``), driven by
``harness.loadgen.rayworkers``.

The actor runs the same per-worker dispatch as a local worker process (``workers.dispatch``) on an
event loop of its own, in a thread of its own, so the driver's calls (``clock``, ``take``, ``cancel``)
are answered on Ray's thread while requests go out. Nothing here imports Ray at import time: the class
becomes an actor in the driver (``ray.remote(LoadWorker)``), and every node imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from typing import Any

from harness.loadgen.config import Endpoint
from harness.loadgen.driver import WorkerSetup
from harness.loadgen.schedule import Schedule
from harness.loadgen.workers import dispatch
from harness.records import RequestRecord
from harness.traces.frame import Trace


class LoadWorker:
    """Holds one shard at a time; ``start`` sends it on time, ``take`` hands over what has ended."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []
        self._dispatched = 0
        self._outcome: tuple[str, Any] | None = None  # ("done", stalls) | ("failed", message)
        self._job: tuple[Endpoint, Trace, Schedule] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._thread: threading.Thread | None = None

    def where(self) -> dict[str, Any]:
        """The node this actor runs on: Ray's node id, its address, the host name and the process."""
        import ray

        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
        }

    def load(
        self, endpoint: Endpoint, trace: Trace, schedule: Schedule, index: tuple[int, ...], k: int, n: int
    ) -> int:
        """Take the next run's shard, ``schedule``'s requests ``index`` as worker ``k`` of ``n`` (before
        the clock is measured: shipping a trace takes time); returns its request count."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("this worker is still running its previous shard")
        self._job = (endpoint, trace, schedule.shard(index, k, n))
        return len(index)

    def clock(self) -> float:
        """This host's ``time.monotonic()``, for the driver's offset estimate."""
        return time.monotonic()

    def start(self, setup: WorkerSetup) -> None:
        """Send the loaded shard against ``setup.t0`` (already on this host's clock), in the background."""
        if self._job is None:
            raise RuntimeError("start before load")
        job, self._job = self._job, None
        with self._lock:
            self._records, self._dispatched, self._outcome = [], 0, None
        self._loop = self._task = None
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(*job, setup, started), daemon=True)
        self._thread.start()
        started.wait()

    def _run(self, endpoint: Endpoint, trace: Trace, schedule: Schedule, setup: WorkerSetup, started) -> None:
        counters = {"dispatched": 0}

        def send(batch: list[RequestRecord], dispatched: int) -> None:
            with self._lock:
                self._records.extend(batch)
                self._dispatched = dispatched

        async def main() -> Any:
            self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
            started.set()
            return await dispatch(endpoint, trace, schedule, setup, send, counters)

        try:
            outcome: tuple[str, Any] = ("done", asyncio.run(main()))
        except Exception as exc:  # reported through take(), never lost in a thread
            outcome = ("failed", f"{type(exc).__name__}: {exc}")
        finally:
            started.set()
        with self._lock:
            self._dispatched = counters["dispatched"]
            self._outcome = outcome

    def take(self) -> tuple[list[RequestRecord], int, tuple[str, Any] | None]:
        """The records ended since the last call, the requests sent so far, and how the run ended
        (None while it runs; the records handed over with an outcome are the last)."""
        with self._lock:
            records, self._records = self._records, []
            return records, self._dispatched, self._outcome

    def cancel(self) -> None:
        """Stop sending: requests in flight end as "cancelled" records, which ``take`` still hands over."""
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the run has ended and its loop closed: nothing to stop
                loop.call_soon_threadsafe(task.cancel)
