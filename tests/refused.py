"""A loopback port that refuses connections for as long as a test needs it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def refused_port() -> Iterator[int]:
    """A port bound and never listening while the block runs: connections to it are refused.

    Closing a ``bind(0)`` socket before use would leave the port free for another test's server to
    take between the choice and the connection; holding it bound rules that out."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]
