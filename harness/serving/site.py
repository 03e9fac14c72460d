"""A site: the instances in one datacenter, their shared prefix cache, and the two things it computes.

``Site.prefill`` runs a request's prefill on its least-loaded prefill instance and pushes the KVCache to
the decode site through a ``KVTransport`` while the prefill runs; ``Site.decode`` hands a request whose
KV has arrived to its least-loaded decode instance and returns the token stream. The request lifecycle
(``harness/serving/cluster.py``) reaches a site through a ``SitePort`` (``harness/serving/ports.py``):
in the same process, or in ``serve`` in another site process over HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.serving.cache import PrefixCache
from harness.serving.instances import DecodeInstance, PrefillInstance, PrefillTimes, TokenStream
from harness.serving.transport import KVTransport


@dataclass(frozen=True, slots=True)
class ServeRequest:
    """One request as the serving stack sees it (times on the loop's clock)."""

    request_id: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    hash_ids: Sequence[int] = ()
    trace_row: int = -1
    # The request as it arrived, for a site port that forwards it to another process (serve: the
    # OpenAI path and body); None in simulate.
    payload: Any = field(default=None, compare=False, repr=False)
    # Session mode (``harness.serving.sessions``): the session, the turn, and when the previous turn ended.
    session_id: int | None = None
    turn: int | None = None
    predecessor_end_s: float | None = None


@dataclass(frozen=True, slots=True)
class PrefillResult:
    """A finished prefill and the KV transfer it fed: phase times for the record."""

    site: str
    times: PrefillTimes
    kv_bytes: int
    transfer_start_s: float
    transfer_end_s: float


class Site:
    """Prefill and decode instances of one datacenter, sharing one prefix cache."""

    def __init__(
        self,
        name: str,
        prefill: Sequence[PrefillInstance] = (),
        decode: Sequence[DecodeInstance] = (),
        cache: PrefixCache | None = None,
    ) -> None:
        self.name = name
        self.prefill_instances = list(prefill)
        self.decode_instances = list(decode)
        self.cache = cache

    def __repr__(self) -> str:
        return f"<Site {self.name} P={len(self.prefill_instances)} D={len(self.decode_instances)}>"

    # ------------------------------------------------------------------ read-only views for the router
    def cached_prefix(self, req: ServeRequest) -> int:
        """Tokens of ``req``'s prompt this site's cache holds now (no side effects)."""
        return self.cache.peek(req.hash_ids, req.prompt_tokens) if self.cache is not None else 0

    def prefill_load_s(self, now: float) -> float:
        """Least estimated backlog (seconds) over this site's prefill instances."""
        return min((p.load_s(now) for p in self.prefill_instances), default=float("inf"))

    def pick_prefill(self, now: float) -> PrefillInstance:
        """Least estimated backlog; ties go to the lowest index (deterministic)."""
        if not self.prefill_instances:
            raise RuntimeError(f"site {self.name} has no prefill instances")
        return min(self.prefill_instances, key=lambda p: p.load_s(now))

    def pick_decode(self) -> DecodeInstance:
        """Fewest running plus waiting sequences; ties go to the lowest index."""
        if not self.decode_instances:
            raise RuntimeError(f"site {self.name} has no decode instances")
        return min(self.decode_instances, key=lambda d: d.load)

    # ------------------------------------------------------------------ the two served coroutines
    async def prefill(
        self,
        req: ServeRequest,
        dst_site: str,
        transport: KVTransport | None,
        kv_bytes: int,
        *,
        fetched_tokens: int = 0,
    ) -> PrefillResult:
        """Prefill ``req`` here and push ``kv_bytes`` of KV to ``dst_site`` as it is produced.

        With ``transport=None`` (colocated: decode on the same GPUs) nothing moves.
        """
        loop = asyncio.get_running_loop()
        instance = self.pick_prefill(loop.time())
        transfer: asyncio.Task[tuple[float, float]] | None = None

        def on_start(start: float, duration: float, _cached: int) -> None:
            nonlocal transfer
            if transport is not None:
                coro = transport.transfer(req.request_id, self.name, dst_site, kv_bytes, start, duration)
                transfer = loop.create_task(coro)

        try:
            times = await instance.prefill(
                req.prompt_tokens, req.hash_ids, on_start, fetched_tokens=fetched_tokens
            )
            if transfer is None:
                return PrefillResult(self.name, times, 0, times.end_s, times.end_s)
            start, end = await transfer
        except BaseException:
            # Cancelled or failed work takes its KV transfer with it: nothing may keep using the
            # link (or wait for an ack) for a request that has ended.
            if transfer is not None:
                transfer.cancel()  # a no-op once it has ended; gather then collects its outcome
                await asyncio.gather(transfer, return_exceptions=True)
            raise
        return PrefillResult(self.name, times, kv_bytes, start, end)

    def decode(
        self, req: ServeRequest, instance: str | None = None, *, first_token_s: float | None = None
    ) -> tuple[DecodeInstance, TokenStream]:
        """Start decoding ``req`` (its KV is here) on ``instance`` or the least-loaded one; returns the
        instance and the token stream. ``first_token_s``: the prefill already sampled the first token
        then (colocated; ``DecodeInstance.submit``)."""
        if instance is None:
            chosen = self.pick_decode()
        else:
            chosen = next((d for d in self.decode_instances if d.name == instance), None)
            if chosen is None:
                raise RuntimeError(f"site {self.name} has no decode instance {instance!r}")
        return chosen, chosen.submit(req.prompt_tokens, req.output_tokens, first_token_s=first_token_s)
