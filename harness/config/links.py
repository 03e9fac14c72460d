"""The link vocabulary. Units are in every field name; each concept has its own class.

``ModelledLink``   a link of the deployment being modelled: the ``[link]`` between the sites, or a
                   site's RDMA fabric. Gbit/s; read by the planner and the fluid simulation.
``LinkSpec``       one shaped direction of a link on *this* machine (``[network]``): Mbit/s, delay,
                   jitter, loss, queue, MTU. Read by the tc renderer and the relay.

``serve`` turns the first into the second by the scaling rule in ``harness/emulation/spec.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from pydantic import Field, model_validator

from harness.config.base import Bool, FieldError, Float, Int, Positive, table

RateMbit = Annotated[Float, Field(ge=0.001, le=34_000)]  # TBF's ceiling on a 64-bit kernel
DelayMs = Annotated[Float, Field(ge=0, le=10_000)]
LossPct = Annotated[Float, Field(ge=0, le=100)]
LimitPackets = Annotated[Int, Field(ge=1, le=1_000_000)]
Mtu = Annotated[Int, Field(ge=576, le=65_000)]


@table
class ModelledLink:
    """Bandwidth and one-way delay of a modelled link (between two sites, or inside one)."""

    bandwidth_gbps: Positive
    delay_ms: DelayMs = 0.0


@table
class LinkSpec:
    """One direction of a shaped link. ``rate_mbit=None`` means no rate limit; ``up=False`` drops
    everything."""

    rate_mbit: RateMbit | None = None
    delay_ms: DelayMs = 0.0
    jitter_ms: DelayMs = 0.0
    loss_pct: LossPct = 0.0
    limit_packets: LimitPackets = 1000
    mtu: Mtu = 1500
    up: Bool = True

    @model_validator(mode="after")
    def _jitter_within_delay(self) -> LinkSpec:
        if self.jitter_ms > self.delay_ms:
            raise FieldError("jitter_ms", f"must be <= delay_ms ({self.delay_ms:g}), got {self.jitter_ms:g}")
        return self

    @property
    def impaired(self) -> bool:
        """Whether delay, jitter or loss is set (netem or the relay is needed)."""
        return self.delay_ms > 0 or self.jitter_ms > 0 or self.loss_pct > 0

    def with_changes(self, **changes: Any) -> LinkSpec:
        """A copy with ``changes``, validated like the original."""
        return dataclasses.replace(self, **changes)

    def __str__(self) -> str:
        rate = "unlimited" if self.rate_mbit is None else f"{self.rate_mbit:g}Mbit"
        parts = [rate, f"{self.delay_ms:g}ms"]
        if self.jitter_ms:
            parts.append(f"±{self.jitter_ms:g}ms")
        if self.loss_pct:
            parts.append(f"loss {self.loss_pct:g}%")
        if not self.up:
            parts.append("DOWN")
        return " ".join(parts)
