"""Sweep points as Ray tasks (``sweep --executor ray``): one task per batch of points, one CPU each.

Without an address a local Ray is started for the run (``--workers`` CPUs) and shut down after it;
with one (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``) the sweep joins that cluster as a driver and
leaves it running. Every node needs the same version of prfaas-bench, installed: a task imports
``harness.sweep.point`` there. Ray is imported only here, only when this executor is chosen.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from harness.errors import CapabilityError
from harness.sweep.point import failed_row, run_batch
from harness.sweep.spec import Point

Rows = list[dict[str, Any]]
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20  # rows are small; Ray's default would claim 30% of memory
_MISSING = "--executor ray needs Ray, which is not installed: pip install -e '.[ray]'"


def check_ray() -> None:
    """A one-line ``CapabilityError`` saying how to install Ray when it is missing (without importing it)."""
    if importlib.util.find_spec("ray") is None:
        raise CapabilityError(_MISSING)


def import_ray():
    """The ``ray`` module, or the same one-line error as ``check_ray``."""
    try:
        import ray
    except ImportError:
        raise CapabilityError(_MISSING) from None
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
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray would report usage over the internet
        if self.address is None and "RAY_AUTH_MODE" not in os.environ and "ray" not in sys.modules:
            # A local Ray authenticates with a token of the run's own, rather than generating one into
            # ~/.ray; Ray reads the mode when imported, hence before the import.
            os.environ |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        if self.address is None:
            # Ray's single-host switch (named for the platforms where it is the default): every Ray
            # process then talks to the others on 127.0.0.1, never on this host's network address.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray = self._ray = import_ray()
        options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
        if self.address is None:  # on loopback only: a local Ray has no business on other addresses
            options |= {
                "num_cpus": self.workers,
                "include_dashboard": False,
                "object_store_memory": LOCAL_OBJECT_STORE_BYTES,
                "_node_ip_address": "127.0.0.1",
            }
        try:  # "local": a new Ray even when `ray start` left one running on this host
            ray.init(address=self.address or "local", **options)
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
            # a task whose worker died or was lost, after Ray's retries: its points failed, the sweep goes on
            try:
                out.append((ref, ray.get(ref)))
            except Exception as exc:
                why = f"Ray task failed ({type(exc).__name__}: {_first_line(exc)})"
                out.append((ref, [failed_row(p, why) for p in batch]))
        return out


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
