"""The relay's control file: the impairment one relay applies, re-read on SIGUSR1 for live changes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from harness.network.spec import LinkSpec
from harness.network.state import write_atomic


@dataclass(frozen=True)
class Impairment:
    """What the relay does to each packet: one-way delay and jitter in µs, loss in percent."""

    delay_us: int = 0
    jitter_us: int = 0
    loss_pct: float = 0.0

    @classmethod
    def of(cls, spec: LinkSpec) -> Impairment:
        """What a relay must do for a direction's spec (ms and % in the spec, µs here)."""
        return cls(round(spec.delay_ms * 1000), round(spec.jitter_ms * 1000), spec.loss_pct)

    @classmethod
    def read(cls, path: Path) -> Impairment:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(int(data["delay_us"]), int(data["jitter_us"]), float(data["loss_pct"]))

    def write(self, path: Path) -> None:
        """Write atomically, so a relay re-reading on SIGUSR1 never sees half a file."""
        write_atomic(path, json.dumps(self.__dict__))
