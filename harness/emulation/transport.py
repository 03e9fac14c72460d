"""KV between site processes: the transport that sends it across the link, and the meter that watches it arrive.

* ``EmulatedTransport`` is the serving ``KVTransport`` of a site process: KV for another site really
  crosses the (shaped) link over TCP, scaled by design.md's byte factor and paced layer by layer;
  KV that stays inside the site (PD-P to PD-D over the RDMA fabric) uses the serving stack's own
  ``FluidLink`` model on the real clock, as the link is not emulated inside a site.
* ``ReceivedLinkMeter`` is the ``LinkView`` (``harness.serving.transport``) of the link whose KV
  arrives in this process, built from the receiver's frame arrivals: the router's bandwidth-aware mode
  and ``/metrics`` read it, and reading it changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

from harness.emulation.kvlink import KvReceiver, KvSender, layer_ready_times
from harness.serving.transport import (
    UTILISATION_WINDOW_S,
    DeliveredBytes,
    FluidTransport,
    trailing_utilisation,
)


class EmulatedTransport:
    """``KVTransport``: real TCP between sites, the fluid model inside one.

    ``kv_addrs`` maps a site to its KV receiver address; ``byte_scale`` is B_emu / B_real. The
    transfer id (32 hex digits) is what the receiving site waits on.
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
        transfer_id: str,
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
                transfer_id, src_site, dst_site, nbytes, prefill_start, prefill_duration
            )
        try:
            dest = self.kv_addrs[dst_site]
        except KeyError:
            raise RuntimeError(f"no KV receiver known for site {dst_site!r}") from None
        ready = layer_ready_times(prefill_start, prefill_duration, self.layers)
        obs = await self.sender.send(transfer_id, dest, self.emulated_bytes(nbytes), ready_times_s=ready)
        self.real_bytes_sent += nbytes
        return obs.first_byte_s, obs.last_byte_s


class ReceivedLinkMeter:
    """``LinkView`` of the link into this process, from the KV frames ``receiver`` takes in.

    It subscribes to the receiver's frame arrivals (one meter per receiver). Figures are in modelled
    (unscaled) bytes: ``capacity`` is the real link's bytes per second, and emulated bytes are divided
    by ``byte_scale``. The backlog is the bytes of transfers whose first frame has arrived and whose
    last has not.
    """

    def __init__(
        self,
        receiver: KvReceiver,
        *,
        capacity_bytes_s: float,
        byte_scale: float,
        window_s: float = UTILISATION_WINDOW_S,
    ) -> None:
        if receiver.on_bytes is not None:
            raise ValueError("the KV receiver already has a link meter")
        self.receiver = receiver
        self.capacity = capacity_bytes_s
        self.byte_scale = byte_scale
        self.window_s = window_s
        self._total = 0.0
        self._delivered = DeliveredBytes(keep_s=window_s)
        receiver.on_bytes = self.arrived

    def arrived(self, t: float, emulated_bytes: int) -> None:
        """A frame of ``emulated_bytes`` landed at loop time ``t``: a jump in the bytes delivered."""
        self._delivered.add(t, self._total)
        self._total += emulated_bytes / self.byte_scale
        self._delivered.add(t, self._total)

    def utilisation(self, now: float) -> float:
        return trailing_utilisation(self._delivered.at, now, self.window_s, self.capacity)

    def backlog_bytes(self, now: float) -> float:
        return self.receiver.bytes_pending / self.byte_scale
