"""Sweep points as Ray tasks (``sweep --executor ray``): one task per batch of points, one CPU each.

Without an address a local Ray is started for the run (``--workers`` CPUs) and shut down after it;
with one (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``) the sweep joins that cluster as a driver and
leaves it running. Every node needs prfaas-bench installed (the same version): a task imports
``harness.sweep.point`` there. Ray is imported only here, only when this executor is chosen.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

from harness.errors import CapabilityError
from harness.sweep.point import failed_row, run_batch
from harness.sweep.spec import Point

Rows = list[dict[str, Any]]
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20  # rows are small; Ray's default would claim 30% of memory


def import_ray():
    """The ``ray`` module, or a one-line ``CapabilityError`` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise CapabilityError(
            "--executor ray needs Ray, which is not installed: pip install -e '.[ray]'"
        ) from None
    return ray


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

    def __enter__(self) -> RayExecutor:
        ray = self._ray = import_ray()
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray would report usage over the internet
        options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
        if self.address is None:  # on loopback only: a local Ray has no business on other addresses
            options |= {
                "num_cpus": self.workers,
                "include_dashboard": False,
                "object_store_memory": LOCAL_OBJECT_STORE_BYTES,
                "_node_ip_address": "127.0.0.1",
            }
        try:
            ray.init(address=self.address, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.address or "a local Ray"
            raise CapabilityError(f"cannot start or reach Ray ({where}): {_first_line(exc)}") from None
        self.slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._task = ray.remote(num_cpus=1)(run_batch)
        return self

    def __exit__(self, *exc: object) -> None:
        ray, self._ray = self._ray, None
        if ray is None:
            return
        try:
            if exc[0] is not None:  # interrupted or failed: stop the batches still running
                for ref in self._batches:
                    ray.cancel(ref, force=True)
        finally:
            ray.shutdown()  # a local Ray stops; a cluster we joined only loses this driver

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
            try:
                out.append((ref, ray.get(ref)))
            except (
                Exception
            ) as exc:  # the task's worker died or was lost: its points failed, the sweep goes on
                why = f"Ray task failed ({type(exc).__name__}: {_first_line(exc)})"
                out.append((ref, [failed_row(p, why) for p in batch]))
        return out


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
