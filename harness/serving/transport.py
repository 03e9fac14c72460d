"""KVCache transport and links: the interfaces the serving stack needs, and a fluid link model for simulation.

``KVTransport.transfer`` is called when a prefill *starts*: KV is produced layer by layer while the
prefill runs (at ``nbytes / prefill_duration`` bytes/s), so the transfer can start at once but never
run ahead of production; only the tail after the prefill ends is exposed. It returns when the last
byte has arrived, with ``(start, end)`` on the loop's clock. ``serve`` plugs in a real-TCP transport
with the same method.

``LinkView`` is what a router may read of one direction of a link. It has one meaning wherever it is
implemented — by ``FluidLink`` here (simulate) and by the link meter of ``serve``, which watches KV
bytes arrive — and reading it changes nothing:

    utilisation(now)   bytes delivered (arrived at the far end) in the trailing ``window_s`` before
                       ``now``, divided by ``capacity × window_s``
    backlog_bytes(now) bytes of transfers under way that have not been delivered yet, including bytes
                       a running prefill has not produced yet (both ends can see those)

``FluidLink`` shares a link's bandwidth max-min fairly between concurrent transfers, each capped by its
production rate while it is caught up with production, and adds a one-way propagation delay. Its rate,
delay and state (up or down) can change while transfers run (``set_state``: a scenario's
``[[network.events]]``); ``capacity`` stays the configured rate, so a router reads utilisation against
the same figure as ``serve``'s meter does. A down link moves nothing: transfers and messages wait and
resume when it comes back, or fail with ``LinkDown`` if it never does.
"""

from __future__ import annotations

import asyncio
import math
from bisect import bisect_left, bisect_right
from collections.abc import Mapping
from typing import Any, Protocol

from harness.config.links import ModelledLink

UTILISATION_WINDOW_S = 1.0  # the trailing window of ``LinkView.utilisation`` (loop seconds)


def _tol(nbytes: int) -> float:
    """Bytes of float rounding (rate x time) below which a flow counts as complete or caught up."""
    return max(1e-3, 1e-9 * nbytes)


class KVTransport(Protocol):
    """Moves KVCache between sites: a request's KV to its decode site, or a cached prefix to a prefill site.

    ``transfer_id`` names the transfer (the request id; ``serve``'s receiver waits on it).
    """

    async def transfer(
        self,
        transfer_id: str,
        src_site: str,
        dst_site: str,
        nbytes: int,
        prefill_start: float,
        prefill_duration: float,
    ) -> tuple[float, float]: ...


class LinkView(Protocol):
    """One direction of a link as a router reads it (module docstring: the meaning of each figure).

    Model bytes and loop seconds; ``capacity`` in bytes per second. Reading has no side effects.
    """

    capacity: float
    window_s: float

    def utilisation(self, now: float) -> float: ...

    def backlog_bytes(self, now: float) -> float: ...


class DeliveredBytes:
    """Bytes a link has delivered so far, as a function of time, kept for a trailing span.

    Breakpoints ``(t, total)`` joined by straight lines (a fluid flow) or, two at one time, a jump (a
    frame arriving). ``at(t)`` reads it; only ``add`` changes it, and it forgets breakpoints more than
    ``keep_s`` older than the newest one.
    """

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self._t: list[float] = []
        self._b: list[float] = []
        self._head = 0  # index of the oldest breakpoint still needed

    def add(self, t: float, total: float) -> None:
        self._t.append(t)
        self._b.append(total)
        # Keep the last breakpoint before the span too: it anchors the line into it.
        head = bisect_left(self._t, t - self.keep_s, self._head) - 1
        if head > self._head:
            self._head = head
        if self._head > 1024 and self._head * 2 > len(self._t):  # compact now and then (amortised O(1))
            del self._t[: self._head], self._b[: self._head]
            self._head = 0

    @property
    def last_t(self) -> float:
        return self._t[-1] if self._t else -math.inf

    def at(self, t: float) -> float:
        """Bytes delivered by time ``t`` (right-continuous at a jump)."""
        i = bisect_right(self._t, t, self._head)
        if i == self._head:
            return self._b[self._head] if self._t else 0.0
        if i == len(self._t):
            return self._b[-1]
        t0, t1, b0, b1 = self._t[i - 1], self._t[i], self._b[i - 1], self._b[i]
        return b0 + (b1 - b0) * (t - t0) / (t1 - t0)


def trailing_utilisation(delivered_at: Any, now: float, window_s: float, capacity: float) -> float:
    """``LinkView.utilisation``: bytes delivered in (now - window_s, now] over capacity × window_s."""
    return (delivered_at(now) - delivered_at(now - window_s)) / (capacity * window_s)


class LinkDown(ConnectionError):
    """A transfer or message on a link that went down and will not come back."""


class _Flow:
    __slots__ = ("backlogged", "done", "nbytes", "p_end", "p_rate", "rate", "sent", "start")

    def __init__(self, nbytes: int, start: float, p_end: float, p_rate: float, done: asyncio.Future) -> None:
        self.nbytes, self.start, self.p_end, self.p_rate, self.done = nbytes, start, p_end, p_rate, done
        self.sent = 0.0
        self.rate = 0.0
        self.backlogged = False  # sent < produced: may go faster than production until caught up


class FluidLink:
    """One direction of a link: ``bandwidth_gbps`` shared max-min fairly, ``delay_ms`` one way.

    A ``LinkView``. Counters: ``bytes_total`` (int, KV bytes of completed transfers), ``transfers``;
    ``bytes_moved(now)`` is the bytes put on the wire by ``now``, which arrive ``delay_s`` later.
    """

    def __init__(
        self,
        name: str,
        bandwidth_gbps: float,
        delay_ms: float = 0.0,
        *,
        window_s: float = UTILISATION_WINDOW_S,
    ) -> None:
        if not bandwidth_gbps > 0:
            raise ValueError(f"link {name}: bandwidth must be positive")
        self.name = name
        self.bandwidth_gbps = float(bandwidth_gbps)
        self.capacity = bandwidth_gbps * 1e9 / 8  # bytes/s, as configured (the LinkView figure)
        self.delay_s = delay_ms / 1e3
        self.window_s = window_s
        self.rate = self.capacity  # bytes/s the link carries now (a rate cut lowers it)
        self.up = True
        self._gone = False  # down for good: nothing will ever cross again
        self._up_again: asyncio.Future[None] | None = None  # set when a down link comes back
        self.bytes_total = 0
        self.transfers = 0
        self._moved_done = 0.0
        self._started = 0  # bytes of every transfer begun so far
        # Bytes moved at each event, on the arrival clock (event time + delay): rates are constant in between.
        self._delivered = DeliveredBytes(keep_s=window_s + self.delay_s)
        self._flows: list[_Flow] = []
        self._updated = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        state = "" if self.up else " DOWN"
        return f"<FluidLink {self.name} {self.rate * 8 / 1e9:g}Gbps{state} {len(self._flows)} active>"

    # ------------------------------------------------------------------ read-only views (router, sampler)
    def utilisation(self, now: float) -> float:
        """``LinkView.utilisation``: delivered over the trailing ``window_s``, over capacity."""
        return trailing_utilisation(self.delivered, now, self.window_s, self.capacity)

    def backlog_bytes(self, now: float) -> float:
        """``LinkView.backlog_bytes``: bytes of transfers begun and not yet delivered."""
        return self._started - self.delivered(now)

    def delivered(self, t: float) -> float:
        """Bytes arrived at the far end by ``t`` (at most the bytes moved by ``now - delay_s``)."""
        sent_by = t - self.delay_s
        if sent_by >= self._updated:  # the current rates still hold: extrapolate from the flows
            return self.bytes_moved(sent_by)
        return self._delivered.at(t)

    def bytes_moved(self, now: float) -> float:
        """Bytes put on the wire up to ``now`` (``now`` no earlier than the last event)."""
        return self._moved_done + sum(
            min(f.nbytes, f.sent + f.rate * (now - self._updated)) for f in self._flows
        )

    # ------------------------------------------------------------------ the model
    async def send(self, nbytes: int, prefill_start: float, prefill_duration: float) -> tuple[float, float]:
        """Send ``nbytes`` produced uniformly over the prefill; return (first byte sent, last byte arrived).

        Cancelled, the transfer leaves the link at once: its bytes not yet sent are never sent.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._check_gone()
        p_end = prefill_start + max(prefill_duration, 0.0)
        p_rate = nbytes / prefill_duration if prefill_duration > 0 else math.inf
        if nbytes <= 0:
            return now, now + self.delay_s
        done = loop.create_future()
        self._advance(now)
        self._started += int(nbytes)
        flow = _Flow(int(nbytes), now, p_end, p_rate, done)
        # Starting late (queued behind the call), the bytes produced so far are already waiting.
        flow.backlogged = now > prefill_start
        self._flows.append(flow)
        self._reschedule(loop)
        try:
            return await done
        except asyncio.CancelledError:
            self._drop(flow, loop)
            raise

    async def carry_message(self) -> None:
        """A small message (a prompt, a request for KV) crosses: it waits while the link is down,
        then takes the one-way delay; bandwidth is not modelled for it."""
        while not self.up:
            self._check_gone()
            if self._up_again is None:
                self._up_again = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._up_again)
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)

    def set_state(self, bandwidth_gbps: float, delay_ms: float, up: bool, *, returns: bool = True) -> None:
        """Change the link now: its rate, one-way delay (for bytes sent from now on) and whether it is
        up. Transfers under way keep their progress; a link that comes back resumes them.
        ``returns=False`` with ``up=False``: the link stays down for good, and everything waiting on it
        fails with ``LinkDown``."""
        if not bandwidth_gbps > 0:
            raise ValueError(f"link {self.name}: bandwidth must be positive")
        loop = asyncio.get_running_loop()
        self._advance(loop.time())
        self.rate = bandwidth_gbps * 1e9 / 8
        self.delay_s = delay_ms / 1e3
        self.up = up
        if not up and not returns:
            self._gone = True
            for f in list(self._flows):
                self._drop(f, loop)
                if not f.done.done():
                    f.done.set_exception(LinkDown(f"link {self.name} went down for good"))
        if (up or self._gone) and self._up_again is not None:
            _resolve(self._up_again, None)  # waiting messages go (or, gone, fail)
            self._up_again = None
        self._reschedule(loop)

    def _check_gone(self) -> None:
        if self._gone:
            raise LinkDown(f"link {self.name} is down for good")

    def _drop(self, flow: _Flow, loop: asyncio.AbstractEventLoop) -> None:
        """Take an unfinished transfer off the link; what it sent stays sent."""
        if flow not in self._flows:
            return  # finished already (its last byte is on its way)
        self._advance(loop.time())
        self._flows.remove(flow)
        self._moved_done += flow.sent
        self._started -= flow.nbytes - flow.sent
        self._reschedule(loop)

    @staticmethod
    def _produced(f: _Flow, now: float) -> float:
        if now >= f.p_end or math.isinf(f.p_rate):
            return float(f.nbytes)
        return f.nbytes - f.p_rate * (f.p_end - now)

    def _advance(self, now: float) -> None:
        dt = now - self._updated
        if dt > 0:
            for f in self._flows:
                f.sent = min(float(f.nbytes), f.sent + f.rate * dt)
        self._updated = now
        if dt > 0 or self._delivered.last_t == -math.inf:  # a breakpoint before the rates change
            # max: after the delay shrinks, bytes sent now still arrive no earlier than those before.
            self._delivered.add(max(now + self.delay_s, self._delivered.last_t), self.bytes_moved(now))

    def _caps(self, now: float) -> list[float]:
        # A caught-up flow cannot outrun production; a backlogged one, or one whose prefill ended, can.
        return [f.p_rate if (now < f.p_end and not f.backlogged) else math.inf for f in self._flows]

    def _reschedule(self, loop: asyncio.AbstractEventLoop) -> None:
        now = self._updated
        finished = [f for f in self._flows if f.nbytes - f.sent <= _tol(f.nbytes) and now >= f.p_end]
        for f in finished:
            self._flows.remove(f)
            self._moved_done += f.nbytes
            self.bytes_total += f.nbytes
            self.transfers += 1
            loop.call_at(now + self.delay_s, _resolve, f.done, (f.start, now + self.delay_s))
        for f in self._flows:  # a backlogged flow that has caught up with production is capped again
            if f.backlogged and now < f.p_end and self._produced(f, now) - f.sent <= _tol(f.nbytes):
                f.backlogged = False
        self._fair_share(self._caps(now))
        for f in self._flows:
            if not f.backlogged and now < f.p_end and f.rate < f.p_rate:
                f.backlogged = True  # falling behind production
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        nxt = self._next_event(now)
        if nxt < math.inf:
            nxt = max(nxt, math.nextafter(now, math.inf))  # rounding must never stall the clock
            self._timer = loop.call_at(nxt, self._on_timer, loop)

    def _fair_share(self, caps: list[float]) -> None:
        """Max-min fair rates (water-filling) under per-flow caps; nothing moves on a down link."""
        order = sorted(range(len(caps)), key=lambda i: (caps[i], i))
        left, n = (self.rate if self.up else 0.0), len(order)
        for k, i in enumerate(order):
            share = left / (n - k)
            rate = min(caps[i], share)
            self._flows[i].rate = rate
            left -= rate

    def _next_event(self, now: float) -> float:
        nxt = math.inf
        for f in self._flows:
            if now < f.p_end:
                nxt = min(nxt, f.p_end)  # production ends: the cap lifts
                if f.backlogged and f.rate > f.p_rate:  # catches up with production
                    gap = self._produced(f, now) - f.sent
                    nxt = min(nxt, now + gap / (f.rate - f.p_rate))
            elif f.rate > 0:
                nxt = min(nxt, now + (f.nbytes - f.sent) / f.rate)
        return nxt

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._advance(loop.time())
        self._reschedule(loop)


def _resolve(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


class FluidTransport:
    """``KVTransport`` over ``FluidLink`` objects: one per ordered site pair, plus one per site inside it."""

    def __init__(self, links: Mapping[tuple[str, str], ModelledLink]) -> None:
        self.links = {
            pair: FluidLink(f"{pair[0]}->{pair[1]}", s.bandwidth_gbps, s.delay_ms)
            for pair, s in links.items()
        }

    def link(self, src_site: str, dst_site: str) -> FluidLink:
        try:
            return self.links[(src_site, dst_site)]
        except KeyError:
            raise KeyError(f"no link from site {src_site!r} to {dst_site!r}") from None

    async def transfer(
        self,
        transfer_id: str,
        src_site: str,
        dst_site: str,
        nbytes: int,
        prefill_start: float,
        prefill_duration: float,
    ) -> tuple[float, float]:
        return await self.link(src_site, dst_site).send(nbytes, prefill_start, prefill_duration)
