"""A remote host's clock against the driver's, from a few round trips (pure; no I/O).

Each round trip is ``(t_send, t_remote, t_recv)``: the driver's clock when it asked, the remote clock's
answer, the driver's clock when the answer came back. The remote clock was read somewhere inside
``[t_send, t_recv]``, so ``offset = t_remote - (t_send + t_recv) / 2`` is wrong by at most half that
round trip, whatever the split between the two directions. The shortest round trip gives the tightest
bound (NTP's rule): its estimate is the one kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ClockOffset:
    """The remote clock minus the driver's (seconds), wrong by at most ``bound_s``."""

    offset_s: float
    bound_s: float
    round_trips: int

    def to_remote(self, t: float) -> float:
        """A time on the driver's clock, on the remote one."""
        return t + self.offset_s

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def estimate(samples: Sequence[tuple[float, float, float]]) -> ClockOffset:
    """The offset from round trips ``(t_send, t_remote, t_recv)``, by the shortest one."""
    if not samples:
        raise ValueError("need at least one round trip")
    t_send, t_remote, t_recv = min(samples, key=lambda s: s[2] - s[0])
    if t_recv < t_send:
        raise ValueError("a round trip ended before it started")
    return ClockOffset(t_remote - (t_send + t_recv) / 2, (t_recv - t_send) / 2, len(samples))
