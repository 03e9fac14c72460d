"""Session mode's one dependency rule, on whichever clock runs it (virtual for simulate, real for replay).

A session's first turn goes out at its scheduled time; every later turn goes out when its predecessor
has ended plus its think time (``harness.traces.sessions.SessionPlan``). Both ``simulate``'s driver and
replay's driver ask this gate, so the two cannot drift apart.
"""

from __future__ import annotations

import asyncio

from harness.serving.clock import sleep_until
from harness.traces.sessions import SessionPlan


class SessionGate:
    """Holds each turn back until its predecessor ``ended``; times are on the run clock, whose zero
    is ``loop.time() == zero`` (0 in virtual time, the run's ``t0`` in replay)."""

    def __init__(self, plan: SessionPlan, zero: float = 0.0) -> None:
        self.plan, self.zero = plan, zero
        self._ends: dict[int, asyncio.Future[float]] = {}
        self._successors = set(plan.predecessor[plan.predecessor >= 0].tolist())

    def _end(self, row: int) -> asyncio.Future[float]:
        fut = self._ends.get(row)
        if fut is None:
            fut = self._ends[row] = asyncio.get_running_loop().create_future()
        return fut

    def predecessor(self, row: int) -> int:
        return int(self.plan.predecessor[row])

    async def predecessor_end(self, row: int) -> float | None:
        """Wait for the end of ``row``'s previous turn and return it (run clock); None for a first turn."""
        pred = self.predecessor(row)
        return None if pred < 0 else await self._end(pred)

    def send_time(self, row: int, at_s: float, pred_end: float | None) -> float:
        """When ``row`` goes out: a first turn at its scheduled ``at_s``, a later turn at its
        predecessor's end plus its think time."""
        return at_s if pred_end is None else pred_end + float(self.plan.think_s[row])

    async def release(self, row: int, at_s: float) -> tuple[float, float | None]:
        """Wait until trace row ``row`` may be sent (``send_time``); returns (that time, the
        predecessor's end or None). A caller with work to do in between uses the two steps itself."""
        pred_end = await self.predecessor_end(row)
        at_s = self.send_time(row, at_s, pred_end)
        await sleep_until(self.zero + at_s)
        return at_s, pred_end

    def has_successor(self, row: int) -> bool:
        return row in self._successors

    def ended(self, row: int, end_s: float) -> None:
        """Trace row ``row`` ended (ok or failed) at ``end_s``: its successor's think time starts."""
        fut = self._end(row)
        if not fut.done():
            fut.set_result(end_s)
        if self.predecessor(row) >= 0:  # nobody waits on a predecessor's end any more
            self._ends.pop(self.predecessor(row), None)

    def describe(self, row: int) -> tuple[int | None, int | None]:
        """(session id, turn) of ``row`` for its record; None where it belongs to no session."""
        s, t = int(self.plan.session_id[row]), int(self.plan.turn[row])
        return (s, t) if s >= 0 else (None, None)
