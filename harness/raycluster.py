"""Joining or starting Ray for one command (``sweep --executor ray``, ``replay --ray-address``).

Without an address a local Ray is started for the run on 127.0.0.1 and shut down after it; with one
(``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``) the command joins that cluster as a driver and leaves it
running. Ray is imported only here, only when a command asks for it: the single-host paths never need it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import secrets
import socket
import sys
from collections.abc import Iterator
from typing import Any

from harness.errors import CapabilityError

LOCAL_OBJECT_STORE_BYTES = 256 * 2**20  # what crosses is small; Ray's default would claim 30% of memory
_CONNECT_S = 5.0  # ray.init retries an address that does not answer for minutes: ask once, this long


def _missing(flag: str) -> str:
    return f"{flag} needs Ray, which is not installed: pip install -e '.[ray]'"


def check_ray(flag: str) -> None:
    """A one-line ``CapabilityError`` naming ``flag`` and how to install Ray when it is missing
    (without importing it)."""
    if importlib.util.find_spec("ray") is None:
        raise CapabilityError(_missing(flag))


def import_ray(flag: str) -> Any:
    """The ``ray`` module, or the same one-line error as ``check_ray``."""
    try:
        import ray
    except ImportError:
        raise CapabilityError(_missing(flag)) from None
    return ray


@contextlib.contextmanager
def connected(address: str | None, *, flag: str, cpus: int | None = None) -> Iterator[Any]:
    """Ray, initialised in this process: joined to the cluster at ``address``, or (None) a local Ray of
    ``cpus`` CPUs on 127.0.0.1 for the block. Shut down on leaving: a local Ray stops, a joined cluster
    only loses this driver. A cluster that cannot be started or reached is a one-line ``CapabilityError``."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray would report usage over the internet
    if address is None and "RAY_AUTH_MODE" not in os.environ and "ray" not in sys.modules:
        # A local Ray authenticates with a token of the run's own, rather than generating one into
        # ~/.ray; Ray reads the mode when imported, hence before the import.
        os.environ |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    if address is None:
        # Ray's single-host switch (named for the platforms where it is the default): every Ray
        # process then talks to the others on 127.0.0.1, never on this host's network address.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = import_ray(flag)
    if address not in (None, "auto"):
        _check_reachable(address)
    options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address is None:  # on loopback only: a local Ray has no business on other addresses
        options |= {
            "num_cpus": cpus,
            "include_dashboard": False,
            "object_store_memory": LOCAL_OBJECT_STORE_BYTES,
            "_node_ip_address": "127.0.0.1",
        }
    try:  # "local": a new Ray even when `ray start` left one running on this host
        ray.init(address=address or "local", **options)
    except Exception as exc:  # Ray raises bare Exception too (a raylet that did not register in 30 s)
        where = address or "a local Ray"
        raise CapabilityError(f"cannot start or reach Ray ({where}): {first_line(exc)}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """One TCP connection to ``[ray://]HOST:PORT``: a one-line error now, rather than Ray's retries."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise CapabilityError(f"Ray address {address!r} is not auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=_CONNECT_S).close()
    except OSError as exc:
        raise CapabilityError(f"cannot reach Ray at {address}: {exc.strerror or exc}") from None


def first_line(exc: BaseException) -> str:
    """An exception's first line (Ray's messages run to many)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
