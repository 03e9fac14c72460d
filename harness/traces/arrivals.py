"""Arrival processes for synthetic traces. ``times(n, rng)`` gives ``n`` sorted arrival times from 0 s."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from harness.errors import InputError


class ArrivalProcess(Protocol):
    rate_rps: float

    def times(self, n: int, rng: np.random.Generator) -> np.ndarray: ...


def _check_rate(rate: float) -> None:
    if not (rate > 0 and math.isfinite(rate)):
        raise InputError(f"arrival rate must be a positive number of requests/s, got {rate}")


def _from_gaps(gaps: np.ndarray) -> np.ndarray:
    out = np.zeros(len(gaps) + 1)
    np.cumsum(gaps, out=out[1:])
    return out


@dataclass(frozen=True)
class Poisson:
    """Exponential gaps with mean ``1 / rate_rps`` (memoryless, CV 1)."""

    rate_rps: float

    def __post_init__(self) -> None:
        _check_rate(self.rate_rps)

    def times(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return _from_gaps(rng.exponential(1.0 / self.rate_rps, size=max(n - 1, 0)))[:n]


@dataclass(frozen=True)
class Gamma:
    """Gamma gaps with mean ``1 / rate_rps`` and coefficient of variation ``cv`` (>1 is burstier than Poisson)."""

    rate_rps: float
    cv: float

    def __post_init__(self) -> None:
        _check_rate(self.rate_rps)
        if not (self.cv > 0 and math.isfinite(self.cv)):
            raise InputError(f"gamma arrival CV must be a positive number, got {self.cv}")

    def times(self, n: int, rng: np.random.Generator) -> np.ndarray:
        shape = 1.0 / self.cv**2
        return _from_gaps(rng.gamma(shape, 1.0 / (self.rate_rps * shape), size=max(n - 1, 0)))[:n]


@dataclass(frozen=True)
class Constant:
    """Evenly spaced arrivals, exactly ``rate_rps`` per second."""

    rate_rps: float

    def __post_init__(self) -> None:
        _check_rate(self.rate_rps)

    def times(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.arange(n, dtype=np.float64) / self.rate_rps
