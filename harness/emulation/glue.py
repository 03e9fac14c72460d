"""Adapters that let the serving stack's objects run in one site process of an emulated cluster.

* ``EmulatedTransport`` is the serving ``KVTransport`` of a prefill site: KV for another site really
  crosses the (shaped) link over TCP, scaled by design.md's byte factor and paced layer by layer;
  KV that stays inside the site (PD-P to PD-D over the RDMA fabric) uses the serving stack's own
  ``FluidLink`` model on the real clock, as the link is not emulated inside a site.
* ``RemoteSiteView`` and ``ReceivedLinkMeter`` stand in, in the router's ``ClusterView``, for a site
  that lives in another process and for the link whose bytes arrive here.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from typing import Any

from harness.emulation.kvlink import KvReceiver, KvSender, layer_ready_times
from harness.serving.site import ServeRequest, Site
from harness.serving.transport import FluidTransport


class EmulatedTransport:
    """``KVTransport``: real TCP between sites, the fluid model inside one.

    ``kv_addrs`` maps a site to its KV receiver address; ``byte_scale`` is B_emu / B_real. The
    transfer id is the request id (32 hex digits), which the decode site waits on.
    """

    def __init__(
        self,
        sender: KvSender,
        kv_addrs: Mapping[str, tuple[str, int]],
        *,
        byte_scale: float,
        layers: int,
        intra: FluidTransport | None = None,
    ) -> None:
        self.sender, self.kv_addrs, self.byte_scale, self.layers, self.intra = (
            sender,
            dict(kv_addrs),
            byte_scale,
            layers,
            intra,
        )
        self.real_bytes_sent = 0

    def emulated_bytes(self, nbytes: int) -> int:
        return max(1, round(nbytes * self.byte_scale))

    async def transfer(
        self,
        request: Any,
        src_site: str,
        dst_site: str,
        nbytes: int,
        prefill_start: float,
        prefill_duration: float,
    ) -> tuple[float, float]:
        if src_site == dst_site:
            if self.intra is None:
                raise RuntimeError(f"no intra-site link model for site {src_site!r}")
            return await self.intra.transfer(
                request, src_site, dst_site, nbytes, prefill_start, prefill_duration
            )
        try:
            dest = self.kv_addrs[dst_site]
        except KeyError:
            raise RuntimeError(f"no KV receiver known for site {dst_site!r}") from None
        ready = layer_ready_times(prefill_start, prefill_duration, self.layers)
        obs = await self.sender.send(
            request.request_id, dest, self.emulated_bytes(nbytes), ready_times_s=ready
        )
        self.real_bytes_sent += nbytes
        return obs.first_byte_s, obs.last_byte_s


class RemoteSiteView:
    """A site in another process, as the router sees it.

    ``shadow`` is a locally built copy of that site (same cache capacity): its prefix cache mirrors the
    remote one, fed with every prompt the proxy sends there (``note_prefill``). The prefill backlog is
    the last figure the remote site reported, aged by the time since.
    """

    def __init__(self, shadow: Site) -> None:
        self.name = shadow.name
        self.cache = shadow.cache
        self._shadow = shadow
        self._load_s = 0.0
        self._load_at = 0.0

    def cached_prefix(self, req: ServeRequest) -> int:
        return self._shadow.cached_prefix(req)  # the shadow's cache is the mirror

    def prefill_load_s(self, now: float) -> float:
        return max(0.0, self._load_s - (now - self._load_at))

    def note_prefill(self, req: ServeRequest, load_s: float | None, now: float) -> None:
        """Record a prefill the remote site finished, and the backlog it reported then."""
        if self.cache is not None:
            self.cache.lookup(req.hash_ids, req.prompt_tokens)
            self.cache.insert(req.hash_ids)
        if load_s is not None:
            self._load_s, self._load_at = load_s, now


class ReceivedLinkMeter:
    """The remote-to-here link, as the router's bandwidth-aware mode reads it, from received KV bytes.

    Utilisation is the received rate over the last ``window_s`` (loop seconds) divided by the
    link's capacity; ``capacity`` and ``backlog_bytes`` are in real (unscaled) bytes.
    """

    def __init__(
        self, receiver: KvReceiver, *, real_capacity_bytes_s: float, byte_scale: float, window_s: float = 1.0
    ):
        self.receiver = receiver
        self.capacity = real_capacity_bytes_s
        self.byte_scale = byte_scale
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def utilisation(self) -> float:
        now = asyncio.get_running_loop().time()
        samples = self._samples
        samples.append((now, self.receiver.bytes_received))
        while len(samples) > 2 and now - samples[1][0] >= self.window_s:
            samples.popleft()
        (t0, b0), (t1, b1) = samples[0], samples[-1]
        if t1 - t0 <= 0:
            return 0.0
        return (b1 - b0) / self.byte_scale / (t1 - t0) / self.capacity

    def backlog_bytes(self, now: float) -> float:
        return self.receiver.bytes_pending / self.byte_scale
