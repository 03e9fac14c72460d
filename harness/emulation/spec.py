"""The ``[emulation]`` table of a scenario, and the scaling that fits a real link into this machine.

A paper-scale deployment moves hundreds of MiB of KVCache per request over a 100 Gbps link; this
machine shapes ~1 Gbps and should finish a scenario in minutes. design.md's rule keeps transfer times
in proportion to compute times under a time speed-up ``s``::

    B_emu = B_real · (R_emu / R_real) / s        d_emu = d_real / s

so a transfer that took ``T`` on the real link takes ``T / s`` on the emulated one, exactly like the
compute times, which the emulator divides by ``s`` as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from harness.errors import ScenarioError


@dataclass(frozen=True, kw_only=True)
class EmulationSpec:
    """How ``serve`` runs a scenario. Units are in the field names."""

    speedup: float = 1.0  # s: emulated time runs s× faster than the modelled deployment
    kv_rate_mbit: float = 800.0  # R_emu of the inter-site link (a [network] table's link rate wins)
    layers: int = 8  # KV chunks per transfer, each leaving as its share of prefill completes
    connections: int = 1  # TCP connections per site pair for KV (multi-connection mode when > 1)
    max_waiting: int = 1024  # requests waiting in one site before it answers 429
    retry_after_s: int = 1
    context_tokens: int = 131072  # longest prompt + max_tokens accepted (400 beyond)
    block_tokens: int = 512  # prefix-cache block size, in tokens
    model_name: str = ""  # served model name; "" means the scenario's [model] preset

    def __post_init__(self) -> None:
        if not self.speedup > 0:
            raise ValueError("speedup must be > 0")
        if not self.kv_rate_mbit > 0:
            raise ValueError("kv_rate_mbit must be > 0")
        for name in ("layers", "connections", "max_waiting", "context_tokens", "block_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    @classmethod
    def from_table(
        cls, table: Mapping[str, Any], *, where: str = "[emulation]", **overrides: Any
    ) -> EmulationSpec:
        """Parse the scenario's ``[emulation]`` table; ``overrides`` (CLI flags) win when not None."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in known:
                raise ScenarioError(f"unknown key {key!r} (known: {', '.join(sorted(known))})", where=where)
            values[key] = value
        values.update({k: v for k, v in overrides.items() if v is not None})
        for key, value in values.items():
            want = known[key].type
            ok = (
                isinstance(value, str)
                if want == "str"
                else isinstance(value, int | float) and not isinstance(value, bool)
                if "float" in want
                else isinstance(value, int) and not isinstance(value, bool)
            )
            if not ok:
                raise ScenarioError(f"{key} = {value!r}: expected {want}", where=where)
        try:
            return cls(**values)
        except ValueError as exc:
            raise ScenarioError(str(exc), where=where) from None


def byte_scale(*, real_rate_gbps: float, emu_rate_mbit: float, speedup: float) -> float:
    """Factor from real KV bytes to emulated bytes: ``(R_emu / R_real) / s``."""
    if real_rate_gbps <= 0 or emu_rate_mbit <= 0 or speedup <= 0:
        raise ValueError("rates and speedup must be > 0")
    return (emu_rate_mbit * 1e6) / (real_rate_gbps * 1e9) / speedup


def emulated_delay_ms(real_delay_ms: float, speedup: float) -> float:
    """One-way delay to configure on the emulated link: ``d_real / s``."""
    return real_delay_ms / speedup
