"""The scaling that fits a real link into this machine (the ``[emulation]`` table, ``EmulationSpec``, is
typed in ``harness/config/runs.py``).

A paper-scale deployment moves hundreds of MiB of KVCache per request over a 100 Gbps link; this
machine shapes ~1 Gbps and should finish a scenario in minutes. design.md's rule keeps transfer times
in proportion to compute times under a time speed-up ``s``::

    B_emu = B_real · (R_emu / R_real) / s        d_emu = d_real / s

so a transfer that took ``T`` on the real link takes ``T / s`` on the emulated one, exactly like the
compute times, which the emulator divides by ``s`` as well.
"""

from __future__ import annotations

from harness.config.runs import EmulationSpec

__all__ = ["EmulationSpec", "byte_scale", "emulated_delay_ms"]


def byte_scale(*, real_rate_gbps: float, emu_rate_mbit: float, speedup: float) -> float:
    """Factor from real KV bytes to emulated bytes: ``(R_emu / R_real) / s``."""
    if real_rate_gbps <= 0 or emu_rate_mbit <= 0 or speedup <= 0:
        raise ValueError("rates and speedup must be > 0")
    return (emu_rate_mbit * 1e6) / (real_rate_gbps * 1e9) / speedup


def emulated_delay_ms(real_delay_ms: float, speedup: float) -> float:
    """One-way delay to configure on the emulated link: ``d_real / s``."""
    return real_delay_ms / speedup
