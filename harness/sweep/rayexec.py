"""Sweep points as Ray tasks (``sweep --executor ray``): one task per batch of points, one CPU each.

Without an address a local Ray is started for the run (``--workers`` CPUs) and shut down after it;
with one (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``) the sweep joins that cluster as a driver and
leaves it running (``harness.raycluster``). Every node needs the same version of prfaas-bench,
installed: a task imports ``harness.sweep.point`` there. Ray is imported only when this executor is chosen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

from harness.raycluster import connected, first_line
from harness.sweep.point import failed_row, run_batch
from harness.sweep.spec import Point

Rows = list[dict[str, Any]]
FLAG = "--executor ray"


class RayExecutor:
    """Batches as Ray tasks on the cluster at ``address`` (None: a local Ray of ``workers`` CPUs)."""

    def __init__(
        self, address: str | None = None, *, workers: int | None = None, runs_dir: str | None = None
    ) -> None:
        self.address, self.workers, self.runs_dir = address, workers, runs_dir
        self.slots = 0
        self._ray: Any = None
        self._task: Any = None
        self._batches: dict[Any, Sequence[Point]] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> RayExecutor:
        ray = self._ray = self._stack.enter_context(connected(self.address, flag=FLAG, cpus=self.workers))
        self.slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._task = ray.remote(num_cpus=1)(run_batch)
        return self

    def __exit__(self, *exc: object) -> None:
        ray, self._ray = self._ray, None
        if ray is None:
            return
        with self._stack:  # shuts Ray down last, however the cancelling goes
            if exc[0] is not None:  # interrupted or failed: stop the batches still running
                for ref in self._batches:
                    ray.cancel(ref, force=True)

    def submit(self, batch: Sequence[Point]) -> Any:
        ref = self._task.remote(list(batch), self.runs_dir)
        self._batches[ref] = batch
        return ref

    def wait(self, handles: Iterable[Any]) -> list[tuple[Any, Rows]]:
        ray = self._ray
        ready, _ = ray.wait(list(handles), num_returns=1)
        out = []
        for ref in ready:
            batch = self._batches.pop(ref)
            # a task whose worker died or was lost, after Ray's retries: its points failed, the sweep goes on
            try:
                out.append((ref, ray.get(ref)))
            except Exception as exc:
                why = f"Ray task failed ({type(exc).__name__}: {first_line(exc)})"
                out.append((ref, [failed_row(p, why) for p in batch]))
        return out
