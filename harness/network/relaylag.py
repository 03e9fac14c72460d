"""How late the relay releases what it holds: a histogram the relay keeps and publishes, and readers.

Each frame the relay holds has a due time (read time + delay ± jitter); the relay records how much
later than due it actually handed the frame to the veth. That lateness is the relay's error on the
added delay (the achieved delay is the configured one plus it). The relay writes the cumulative
histogram (10 µs bins) to a small JSON status file beside its control file about once a second, so
``net status`` and a run's metadata can read it, and a reader can subtract an earlier snapshot to
get the lateness of just one run (``LagHistogram.since``).

What the relay cannot see is how long a frame waited in the TAP queue before it was read; on an
idle relay that is one wake-up, of the same order as the timer wake-ups it does measure.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.network.state import write_atomic

BIN_S = 10e-6
BINS_PER_S = 1 / BIN_S


@dataclass
class LagHistogram:
    """Counts of lateness in ``BIN_S`` bins (bin b holds [b, b+1) × 10 µs), plus drop counters."""

    counts: dict[int, int] = field(default_factory=dict)
    dropped_loss: int = 0  # dropped on purpose (loss_pct)
    dropped_full: int = 0  # the veth's queue was full (ENOBUFS): a tail drop
    seq: int = 0  # how many times the relay has published it (a reader waits for this to move)
    delay_us: int = 0  # the configured delay and jitter in force when published
    jitter_us: int = 0

    def add(self, late_s: float) -> None:
        b = int(late_s * BINS_PER_S) if late_s > 0 else 0
        self.counts[b] = self.counts.get(b, 0) + 1

    @property
    def frames(self) -> int:
        return sum(self.counts.values())

    def quantile(self, q: float) -> float | None:
        """Lateness in seconds at quantile ``q`` (upper edge of its bin; ``q=1``: the largest); None
        with no frames."""
        n = self.frames
        if n == 0:
            return None
        rank, seen = q * n, 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return (b + 1) * BIN_S
        return (max(self.counts) + 1) * BIN_S

    def since(self, earlier: LagHistogram) -> LagHistogram:
        """What was added after ``earlier`` (an older snapshot of the same relay)."""
        counts = {b: c - earlier.counts.get(b, 0) for b, c in self.counts.items()}
        return dataclasses.replace(
            self,
            counts={b: c for b, c in counts.items() if c > 0},
            dropped_loss=self.dropped_loss - earlier.dropped_loss,
            dropped_full=self.dropped_full - earlier.dropped_full,
        )

    def summary(self) -> dict[str, Any]:
        """Frames, drops, lateness p50/p99/max and the achieved added delay p50/p99, in ms."""
        p50, p99, top = self.quantile(0.5), self.quantile(0.99), self.quantile(1.0)
        delay_ms = self.delay_us / 1e3
        out: dict[str, Any] = {
            "frames": self.frames,
            "dropped_loss": self.dropped_loss,
            "dropped_full": self.dropped_full,
            "late_ms_p50": None if p50 is None else round(p50 * 1e3, 3),
            "late_ms_p99": None if p99 is None else round(p99 * 1e3, 3),
            "late_ms_max": None if top is None else round(top * 1e3, 3),
        }
        out["delay_ms"] = delay_ms
        out["achieved_ms_p50"] = None if p50 is None else round(delay_ms + p50 * 1e3, 3)
        out["achieved_ms_p99"] = None if p99 is None else round(delay_ms + p99 * 1e3, 3)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": {str(b): c for b, c in sorted(self.counts.items())},
            "dropped_loss": self.dropped_loss,
            "dropped_full": self.dropped_full,
            "seq": self.seq,
            "delay_us": self.delay_us,
            "jitter_us": self.jitter_us,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LagHistogram:
        return cls(
            {int(b): int(c) for b, c in data.get("counts", {}).items()},
            int(data.get("dropped_loss", 0)),
            int(data.get("dropped_full", 0)),
            int(data.get("seq", 0)),
            int(data.get("delay_us", 0)),
            int(data.get("jitter_us", 0)),
        )


def lag_path(control: Path) -> Path:
    """The relay's status file, beside its control file (``…a-b.ctl.json`` -> ``…a-b.lag.json``)."""
    return control.with_name(control.name.removesuffix(".ctl.json") + ".lag.json")


def write_lag(path: Path, hist: LagHistogram) -> None:
    """Publish atomically (a reader never sees half a file)."""
    write_atomic(path, json.dumps(hist.to_json()))


def read_lag(path: Path) -> LagHistogram | None:
    """A relay's last published histogram; None before its first publication."""
    try:
        return LagHistogram.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
