"""KVCache transport: the small interface the serving stack needs, and a fluid link model for simulation.

``KVTransport.transfer`` is called when a prefill *starts*: KV is produced layer by layer while the
prefill runs (at ``nbytes / prefill_duration`` bytes/s), so the transfer can start at once but never
run ahead of production; only the tail after the prefill ends is exposed. It returns when the last
byte has arrived, with ``(start, end)`` on the loop's clock. ``serve`` plugs in a real-TCP transport
with the same method.

``FluidLink`` shares a link's bandwidth max-min fairly between concurrent transfers, each capped by its
production rate while it is caught up with production, and adds a one-way propagation delay.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any, Protocol

from harness.config.links import ModelledLink


def _tol(nbytes: int) -> float:
    """Bytes of float rounding (rate x time) below which a flow counts as complete or caught up."""
    return max(1e-3, 1e-9 * nbytes)


class KVTransport(Protocol):
    """Moves one request's KVCache from the prefill site to the decode site."""

    async def transfer(
        self,
        request: Any,
        src_site: str,
        dst_site: str,
        nbytes: int,
        prefill_start: float,
        prefill_duration: float,
    ) -> tuple[float, float]: ...


class _Flow:
    __slots__ = ("backlogged", "done", "nbytes", "p_end", "p_rate", "rate", "sent", "start")

    def __init__(self, nbytes: int, start: float, p_end: float, p_rate: float, done: asyncio.Future) -> None:
        self.nbytes, self.start, self.p_end, self.p_rate, self.done = nbytes, start, p_end, p_rate, done
        self.sent = 0.0
        self.rate = 0.0
        self.backlogged = False  # sent < produced: may go faster than production until caught up


class FluidLink:
    """One direction of a link: ``bandwidth_gbps`` shared max-min fairly, ``delay_ms`` one way.

    Counters: ``bytes_total`` (int, KV bytes of completed transfers), ``transfers``; and
    ``bytes_moved()`` (bytes on the wire so far, including transfers in flight) for utilisation.
    """

    def __init__(self, name: str, bandwidth_gbps: float, delay_ms: float = 0.0) -> None:
        if not bandwidth_gbps > 0:
            raise ValueError(f"link {name}: bandwidth must be positive")
        self.name = name
        self.bandwidth_gbps = float(bandwidth_gbps)
        self.capacity = bandwidth_gbps * 1e9 / 8  # bytes/s
        self.delay_s = delay_ms / 1e3
        self.bytes_total = 0
        self.transfers = 0
        self._moved_done = 0.0
        self._flows: list[_Flow] = []
        self._updated = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<FluidLink {self.name} {self.bandwidth_gbps:g}Gbps {len(self._flows)} active>"

    # ------------------------------------------------------------------ read-only views (router, sampler)
    def utilisation(self) -> float:
        """Fraction of the bandwidth in use right now."""
        return sum(f.rate for f in self._flows) / self.capacity

    def backlog_bytes(self, now: float) -> float:
        """Bytes produced but not yet sent (the link's queue)."""
        return sum(
            max(0.0, self._produced(f, now) - f.sent - f.rate * (now - self._updated)) for f in self._flows
        )

    def bytes_moved(self, now: float) -> float:
        """Bytes put on the wire up to ``now``."""
        return self._moved_done + sum(
            min(f.nbytes, f.sent + f.rate * (now - self._updated)) for f in self._flows
        )

    # ------------------------------------------------------------------ the model
    async def send(self, nbytes: int, prefill_start: float, prefill_duration: float) -> tuple[float, float]:
        """Send ``nbytes`` produced uniformly over the prefill; return (first byte sent, last byte arrived)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        p_end = prefill_start + max(prefill_duration, 0.0)
        p_rate = nbytes / prefill_duration if prefill_duration > 0 else math.inf
        if nbytes <= 0:
            return now, now + self.delay_s
        done = loop.create_future()
        self._advance(now)
        flow = _Flow(int(nbytes), now, p_end, p_rate, done)
        # Starting late (queued behind the call), the bytes produced so far are already waiting.
        flow.backlogged = now > prefill_start
        self._flows.append(flow)
        self._reschedule(loop)
        return await done

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
        """Max-min fair rates (water-filling) under per-flow caps."""
        order = sorted(range(len(caps)), key=lambda i: (caps[i], i))
        left, n = self.capacity, len(order)
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
        request: Any,
        src_site: str,
        dst_site: str,
        nbytes: int,
        prefill_start: float,
        prefill_duration: float,
    ) -> tuple[float, float]:
        return await self.link(src_site, dst_site).send(nbytes, prefill_start, prefill_duration)
