"""Request-length distributions: seeded samplers plus the analytic statistics the planner needs.

Every distribution answers the same five questions, so the analytic planner can split a workload at a
threshold ``t`` without sampling:

    sample(n, rng)   n integer token counts (int64), drawn from a ``numpy.random.Generator``
    mean()           E[L]
    tail_prob(t)     p = P(L > t)
    mean_above(t)    E[L | L > t]   (l_long in the paper)
    mean_below(t)    E[L | L <= t]  (l_short)

Where a conditional mean is undefined (no mass on that side of ``t``), it returns the limit at the
boundary (``hi`` above, ``lo`` below) so a grid search over ``t`` never meets a NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Protocol, runtime_checkable

import numpy as np

from harness.errors import InputError

_STD_NORMAL = NormalDist()
# Below this acceptance rate, rejection sampling wastes too many draws; use the inverse CDF instead.
_MIN_REJECTION_ACCEPTANCE = 0.05


def _phi(z: float) -> float:
    """Standard normal CDF (via math.erf; exact to double precision, no scipy needed)."""
    if z == math.inf:
        return 1.0
    if z == -math.inf:
        return 0.0
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


@runtime_checkable
class LengthDistribution(Protocol):
    """What the generators and the analytic planner need from a length distribution."""

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray: ...
    def mean(self) -> float: ...
    def tail_prob(self, t: float) -> float: ...
    def mean_above(self, t: float) -> float: ...
    def mean_below(self, t: float) -> float: ...


@dataclass(frozen=True)
class TruncatedLogNormal:
    """ln L ~ Normal(mu, sigma), conditioned on lo <= L <= hi (the PrfaaS paper's input lengths).

    The paper's case study is ``TruncatedLogNormal(9.90, 1.00, 128, 131072)``: mean ≈ 27.5K tokens,
    P(L > 19.4K) ≈ 0.496, E[L | L > 19.4K] ≈ 45K, E[L | L <= 19.4K] ≈ 10.2K.
    """

    mu: float
    sigma: float
    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not (self.sigma > 0 and math.isfinite(self.sigma)):
            raise InputError(f"lognormal sigma must be a positive number, got {self.sigma}")
        if not math.isfinite(self.mu):
            raise InputError(f"lognormal mu must be finite, got {self.mu}")
        if not (0 < self.lo < self.hi):
            raise InputError(f"lognormal bounds must satisfy 0 < lo < hi, got lo={self.lo} hi={self.hi}")
        if self._mass() <= 0.0:
            raise InputError(
                f"lognormal(mu={self.mu}, sigma={self.sigma}) has no probability mass in [{self.lo}, {self.hi}]"
            )

    def _z(self, x: float, shift: float = 0.0) -> float:
        """Standardised log of ``x``; ``shift=sigma**2`` gives the size-biased (partial-mean) variable."""
        if x <= 0:
            return -math.inf
        return (math.log(x) - self.mu - shift) / self.sigma

    def _cdf_untruncated(self, x: float) -> float:
        return _phi(self._z(x))

    def _mass(self) -> float:
        return self._cdf_untruncated(self.hi) - self._cdf_untruncated(self.lo)

    def _mass_between(self, a: float, b: float) -> float:
        """P(a < L <= b) of the truncated distribution."""
        a, b = max(a, self.lo), min(b, self.hi)
        if b <= a:
            return 0.0
        return (self._cdf_untruncated(b) - self._cdf_untruncated(a)) / self._mass()

    def _partial_mean(self, a: float, b: float) -> float:
        """E[L; a < L <= b] of the truncated distribution (the lognormal partial expectation)."""
        a, b = max(a, self.lo), min(b, self.hi)
        if b <= a:
            return 0.0
        s2 = self.sigma**2
        scale = math.exp(self.mu + s2 / 2.0)
        return scale * (_phi(self._z(b, s2)) - _phi(self._z(a, s2))) / self._mass()

    def mean(self) -> float:
        """E[L]."""
        return self._partial_mean(self.lo, self.hi)

    def tail_prob(self, t: float) -> float:
        """P(L > t)."""
        return self._mass_between(t, self.hi)

    def mean_above(self, t: float) -> float:
        """E[L | L > t]; ``hi`` when no mass lies above ``t``."""
        p = self.tail_prob(t)
        return self._partial_mean(t, self.hi) / p if p > 0 else float(self.hi)

    def mean_below(self, t: float) -> float:
        """E[L | L <= t]; ``lo`` when no mass lies at or below ``t``."""
        q = self._mass_between(self.lo, t)
        return self._partial_mean(self.lo, t) / q if q > 0 else float(self.lo)

    def quantile(self, q: float) -> float:
        """The length below which a fraction ``q`` (0 < q < 1) of requests fall."""
        if not 0.0 < q < 1.0:
            raise InputError(f"quantile must be in (0, 1), got {q}")
        c_lo, c_hi = self._cdf_untruncated(self.lo), self._cdf_untruncated(self.hi)
        u = c_lo + q * (c_hi - c_lo)
        return math.exp(self.mu + self.sigma * _STD_NORMAL.inv_cdf(u))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` token counts, rounded to integers and kept within [lo, hi]."""
        mass = self._mass()
        if mass >= _MIN_REJECTION_ACCEPTANCE:
            values = self._sample_rejection(n, rng, mass)
        else:
            c_lo, c_hi = self._cdf_untruncated(self.lo), self._cdf_untruncated(self.hi)
            u = rng.uniform(c_lo, c_hi, size=n)
            z = np.fromiter((_STD_NORMAL.inv_cdf(min(max(x, 1e-300), 1 - 1e-16)) for x in u), float, n)
            values = np.exp(self.mu + self.sigma * z)
        return _round_within(values, self.lo, self.hi)

    def _sample_rejection(self, n: int, rng: np.random.Generator, mass: float) -> np.ndarray:
        out = np.empty(0)
        while len(out) < n:
            need = n - len(out)
            draw = rng.lognormal(self.mu, self.sigma, size=int(need / mass * 1.1) + 16)
            out = np.concatenate([out, draw[(draw >= self.lo) & (draw <= self.hi)]])
        return out[:n]


@dataclass(frozen=True)
class Fixed:
    """Every request has exactly ``tokens`` tokens."""

    tokens: int

    def __post_init__(self) -> None:
        if self.tokens <= 0:
            raise InputError(f"fixed length must be a positive number of tokens, got {self.tokens}")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(n, self.tokens, dtype=np.int64)

    def mean(self) -> float:
        return float(self.tokens)

    def tail_prob(self, t: float) -> float:
        return 1.0 if self.tokens > t else 0.0

    def mean_above(self, t: float) -> float:
        return float(self.tokens)

    def mean_below(self, t: float) -> float:
        return float(self.tokens)


@dataclass(frozen=True)
class Uniform:
    """Integer token counts uniform on [lo, hi], both included."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        if not (0 < self.lo <= self.hi):
            raise InputError(f"uniform bounds must satisfy 0 < lo <= hi, got lo={self.lo} hi={self.hi}")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(self.lo, self.hi, size=n, endpoint=True, dtype=np.int64)

    def mean(self) -> float:
        return (self.lo + self.hi) / 2.0

    def _first_above(self, t: float) -> int:
        """Smallest support value > t, clamped to [lo, hi + 1]."""
        return min(max(math.floor(t) + 1, self.lo), self.hi + 1)

    def tail_prob(self, t: float) -> float:
        return (self.hi + 1 - self._first_above(t)) / (self.hi - self.lo + 1)

    def mean_above(self, t: float) -> float:
        k = self._first_above(t)
        return (k + self.hi) / 2.0 if k <= self.hi else float(self.hi)

    def mean_below(self, t: float) -> float:
        k = self._first_above(t)
        return (self.lo + k - 1) / 2.0 if k > self.lo else float(self.lo)


@dataclass(frozen=True, eq=False)
class Empirical:
    """Resample (with replacement) from observed lengths, e.g. a real trace's input lengths."""

    values: np.ndarray

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.int64)
        if values.ndim != 1 or len(values) == 0:
            raise InputError("empirical distribution needs at least one observed length")
        if (values <= 0).any():
            raise InputError("empirical lengths must all be positive")
        object.__setattr__(self, "values", np.sort(values))

    def __repr__(self) -> str:
        return f"Empirical(n={len(self.values)}, mean={self.mean():.1f})"

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(self.values, size=n, replace=True)

    def mean(self) -> float:
        return float(self.values.mean())

    def _split(self, t: float) -> int:
        """Index of the first value > t (values are sorted)."""
        return int(np.searchsorted(self.values, t, side="right"))

    def tail_prob(self, t: float) -> float:
        return (len(self.values) - self._split(t)) / len(self.values)

    def mean_above(self, t: float) -> float:
        above = self.values[self._split(t) :]
        return float(above.mean()) if len(above) else float(self.values[-1])

    def mean_below(self, t: float) -> float:
        below = self.values[: self._split(t)]
        return float(below.mean()) if len(below) else float(self.values[0])


def _round_within(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Round continuous lengths to whole tokens without leaving [lo, hi] (and never below 1)."""
    lo_int, hi_int = max(1, math.ceil(lo)), max(1, math.floor(hi))
    return np.clip(np.rint(values), lo_int, hi_int).astype(np.int64)
