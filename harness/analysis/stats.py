"""Percentiles and seeded bootstrap confidence intervals for metrics and for ratios of metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# A statistic over the last axis of a 2-D array of resamples (vectorised), e.g. mean or a quantile.
Statistic = Callable[[np.ndarray], np.ndarray]

_CHUNK_FLOATS = 2_000_000  # resampled values per vectorised batch (16 MB), whatever the sample size


@dataclass(frozen=True, slots=True)
class Estimate:
    """A point estimate with a bootstrap confidence interval (NaN bounds when not computable)."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float | None]:
        return {k: (None if not np.isfinite(v) else float(v)) for k, v in
                (("value", self.value), ("low", self.low), ("high", self.high))}  # fmt: skip


def mean_stat(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=-1)


@dataclass(frozen=True, slots=True)
class Quantile:
    """The q-quantile (0..1) along the last axis, linear interpolation (numpy's default)."""

    q: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.quantile(x, self.q, axis=-1)


def quantile_stat(q: float) -> Quantile:
    return Quantile(q)


def percentile(values: np.ndarray, q: float) -> float:
    """NaN-ignoring percentile (q in 0..100); NaN when nothing was observed."""
    v = values[~np.isnan(values)]
    return float(np.percentile(v, q)) if len(v) else float("nan")


def rate_windows(times: np.ndarray, start: float, end: float, n_windows: int) -> np.ndarray:
    """Event rates (1/s) in ``n_windows`` equal windows over [start, end]; their mean is n/(end − start).

    Rates are block-bootstrapped: resampling requests would keep the count fixed and give a
    throughput interval of zero width.
    """
    t = times[~np.isnan(times)]
    width = (end - start) / n_windows
    if width <= 0:
        return np.full(n_windows, np.nan)
    idx = np.clip(((t - start) // width).astype(int), 0, n_windows - 1)
    return np.bincount(idx, minlength=n_windows) / width


# Above this many samples a quantile is resampled through its rank (below), not by redrawing values.
RANK_BOOTSTRAP_MIN = 5000


def _resampled_quantile(x: np.ndarray, q: float, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    # In a resample of n values, the count at or below the j-th smallest is Binomial(n, j/n), so the
    # resample's q-quantile sits at rank ≈ nq + z·sqrt(nq(1−q)), z ~ N(0, 1) (normal limit of the
    # binomial; good for large n). O(n log n + n_boot) instead of O(n · n_boot).
    xs = np.sort(x)
    n = len(xs)
    rank = (n - 1) * q + rng.standard_normal(n_boot) * np.sqrt(n * q * (1 - q))
    return np.interp(np.clip(rank, 0, n - 1), np.arange(n), xs)


def _resampled(x: np.ndarray, stat: Statistic, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    if isinstance(stat, Quantile) and len(x) >= RANK_BOOTSTRAP_MIN:
        return _resampled_quantile(x, stat.q, n_boot, rng)
    out = np.empty(n_boot)
    chunk = max(1, _CHUNK_FLOATS // len(x))
    for lo in range(0, n_boot, chunk):
        n = min(chunk, n_boot - lo)
        out[lo : lo + n] = stat(x[rng.integers(0, len(x), size=(n, len(x)))])
    return out


def bootstrap(
    x: np.ndarray, stat: Statistic, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> Estimate:
    """``stat(x)`` with a percentile-bootstrap interval at ``level`` (seeded, so reproducible)."""
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"))
    boots = _resampled(x, stat, n_boot, np.random.default_rng(seed))
    a = (1 - level) / 2
    return Estimate(float(stat(x[None, :])[0]), *map(float, np.quantile(boots, [a, 1 - a])))


def bootstrap_ratio(
    a: np.ndarray, b: np.ndarray, stat: Statistic, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> Estimate:
    """``stat(a) / stat(b)`` with an interval from resampling ``a`` and ``b`` independently."""
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) == 0 or len(b) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        boots = _resampled(a, stat, n_boot, rng) / _resampled(b, stat, n_boot, rng)
        value = float(stat(a[None, :])[0] / stat(b[None, :])[0])
    lv = (1 - level) / 2
    finite = boots[np.isfinite(boots)]
    if len(finite) < n_boot:  # a resample with zero in the denominator: no honest interval
        return Estimate(value, float("nan"), float("nan"))
    return Estimate(value, *map(float, np.quantile(finite, [lv, 1 - lv])))
