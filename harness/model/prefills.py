"""What each prefill pool computes, as the planner prices it.

A topology's prefill pools serve classes of requests: all of them (homogeneous PD locally, naive
remotely) or, for PrfaaS at threshold t, those whose routing length is at most t (local) and the rest
(remote). The planner needs, per class: its share of requests, the mean tokens it computes
(``uncached``, the paper's l), the mean cached prefix it attends over, the mean whole prompt (whose KV
goes to decode and, if remote, across the link), and the class's prefill time on an instance.

Two sources:

``LengthPrefills``  a length distribution (the paper's log-normal): nothing is cached, and a class's
                    prefill time is T at its mean length, T(E[L]) — the paper's §3.4, which the
                    presets are calibrated against.
``TracePrefills``   a trace replayed through the site caches in arrival order (``reuse.replay_cache``,
                    the simulator's ``PrefixCache``): lengths are what each request still has to prefill,
                    and a class's prefill time is the mean of T(uncached_i, cached_i) over its requests,
                    E[T] — what the simulator pays, request by request (T is linear in the request's
                    uncached tokens and attention pairs, so E[T] needs only their means).

PrfaaS routing changes what each site's cache holds, so ``TracePrefills.split(t)`` replays the trace at
that t (memoised). A threshold search scans a grid of such replays (``thresholds``) and refines between
them on ``estimate``, which interpolates the replays at the neighbouring grid points.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from harness.model.cost import InstanceCost
from harness.model.reuse import CacheReplay, replay_cache
from harness.serving.cache import CacheShape
from harness.traces.distributions import LengthDistribution
from harness.traces.frame import Trace

# Coarse threshold grid of a length distribution (tokens), as the paper's search.
COARSE_STEP_TOKENS = 100
# A trace's coarse threshold grid: quantiles of its one-site uncached lengths (where the requests are),
# finer in the top few percent (a thin link offloads only the longest, and a trace may pile up at its
# maximum), and doublings from 512 tokens (so no gap in t is wider than 2x where the tail is thin).
TRACE_GRID_QUANTILES = 17
TAIL_HALVINGS = np.arange(5, 11)  # the top 1/32, 1/64, ... 1/1024 of the requests
GRID_FIRST_TOKENS = 512


@dataclass(frozen=True)
class PrefillClass:
    """The requests one prefill pool serves: ``share`` of all requests, and per request on average the
    tokens computed, the cached prefix, the whole prompt and (``pairs``) the attention query-key pairs
    n·c + n²/2; ``pairs=None`` prices the class at its mean request, T(uncached, cached)."""

    share: float
    uncached: float
    cached: float
    prompt: float
    pairs: float | None = None

    def prefill_time_s(self, cost: InstanceCost) -> float:
        """Seconds one instance spends per request of this class."""
        if self.pairs is None:
            return cost.prefill_time_s(round(self.uncached), round(self.cached))
        return cost.mean_prefill_time_s(self.uncached, self.pairs)


Split = tuple[PrefillClass, PrefillClass]  # (local: routing length <= t, remote: > t)


@dataclass(frozen=True)
class Reuse:
    """Prefix-cache hits over the sites' caches: cached over looked-up prompt tokens, and leading blocks
    found over blocks looked up (the simulator's ``cache_hit_rate`` and ``cache_block_hit_rate``)."""

    token_hit_ratio: float
    block_hit_ratio: float


class Prefills(Protocol):
    """The planner's view of a workload's prefills (see the module docstring)."""

    def whole(self) -> PrefillClass:
        """Every request, prefilled at one site."""
        ...

    def split(self, t: float) -> Split:
        """PrfaaS at threshold ``t``."""
        ...

    def estimate(self, t: float) -> Split:
        """A cheap stand-in for ``split`` while searching (the same for a distribution)."""
        ...

    def thresholds(self) -> np.ndarray:
        """The coarse grid a threshold search scans, ascending, from 'all remote' to 'none'."""
        ...

    def reuse(self, t: float | None = None) -> Reuse | None:
        """Cache hits with one site (``t=None``) or PrfaaS at ``t``; None when nothing is cached."""
        ...

    def describe(self) -> dict:
        """Which distribution this is and what reuse it found, for output and metadata."""
        ...


# ---------------------------------------------------------------------------------------------- distribution


@dataclass(frozen=True)
class LengthPrefills:
    """A length distribution, nothing cached: every prompt is prefilled whole, priced at class means."""

    lengths: LengthDistribution

    def whole(self) -> PrefillClass:
        mean = self.lengths.mean()
        return PrefillClass(1.0, mean, 0.0, mean)

    def split(self, t: float) -> Split:
        w = self.lengths
        p, above, below = w.tail_prob(t), w.mean_above(t), w.mean_below(t)
        return PrefillClass(1.0 - p, below, 0.0, below), PrefillClass(p, above, 0.0, above)

    def estimate(self, t: float) -> Split:
        return self.split(t)

    def thresholds(self) -> np.ndarray:
        w = self.lengths
        if hasattr(w, "values"):  # empirical lengths
            lo, hi = float(w.values[0]), float(w.values[-1])
        else:
            lo, hi = float(getattr(w, "lo", 0) or 0), float(getattr(w, "hi", 0) or 0)
        if hi <= lo:  # e.g. one fixed length: only "all" or "none" can differ
            lo, hi = w.mean(), w.mean()
        lo -= 1  # just below the shortest request: every request offloaded
        return np.unique(np.append(np.arange(lo, hi, COARSE_STEP_TOKENS), hi))

    def reuse(self, t: float | None = None) -> Reuse | None:
        return None

    def describe(self) -> dict:
        return {
            "distribution": "raw",
            "why": "a length distribution: synthetic prompts share no prefix",
            "prefill_time": "T at its mean length, T(E[L]) (the paper's)",
            "mean_input_tokens": self.lengths.mean(),
            "mean_uncached_tokens": self.lengths.mean(),
        }


# ---------------------------------------------------------------------------------------------- trace


def _classes(replay: CacheReplay, prompts: np.ndarray) -> Split:
    """(local, remote) classes of one replay, priced by their requests' mean time (``pairs`` set)."""
    n, c = replay.uncached.astype(np.float64), replay.cached.astype(np.float64)
    pairs = n * c + n * n / 2.0
    out = []
    for mask in (~replay.remote, replay.remote):
        k = int(mask.sum())
        if k == 0:
            out.append(PrefillClass(0.0, 0.0, 0.0, 0.0, 0.0))
            continue
        out.append(
            PrefillClass(
                k / len(mask),
                float(n[mask].mean()),
                float(c[mask].mean()),
                float(prompts[mask].mean()),
                float(pairs[mask].mean()),
            )
        )
    return out[0], out[1]


def _totals(cls: PrefillClass) -> np.ndarray:
    """Per-request-of-the-workload totals, which mix linearly (unlike class means)."""
    return cls.share * np.array([1.0, cls.uncached, cls.cached, cls.prompt, cls.pairs or 0.0])


def _from_totals(v: np.ndarray) -> PrefillClass:
    share = float(v[0])
    if share <= 0:
        return PrefillClass(0.0, 0.0, 0.0, 0.0, 0.0)
    return PrefillClass(share, *(float(x) / share for x in v[1:]))


class TracePrefills:
    """A trace's prompts after the sites' prefix caches (see the module docstring). ``capacity_bytes``
    per site (None: unbounded; 0: no cache, so lengths are raw), ``shape`` its entries (the model's KV
    per trace block and linear-state checkpoints: ``cache_shape``), ``global_cache`` PrfaaS routing by
    the longest prefix either site holds."""

    def __init__(
        self, trace: Trace, *, capacity_bytes: float | None, shape: CacheShape, global_cache: bool = False
    ) -> None:
        self.trace = trace
        self.prompts = trace.input_tokens
        self.capacity_bytes = capacity_bytes
        self.shape = shape
        self.global_cache = global_cache
        self._replays: dict[float, CacheReplay] = {}
        self._splits: dict[float, Split] = {}
        self._known: list[float] = []  # the thresholds of _splits, sorted
        self._grid: np.ndarray | None = None

    def __repr__(self) -> str:
        cap = "unbounded" if self.capacity_bytes is None else f"{self.capacity_bytes / 2**30:g} GiB"
        return f"<TracePrefills {len(self.prompts)} requests, {cap} cache per site>"

    @property
    def replays(self) -> int:
        """How many distinct replays have run so far (each is one pass over the trace)."""
        return len(self._replays)

    def replay(self, t: float = math.inf) -> CacheReplay:
        """The replay with one site (``t=inf``) or PrfaaS at threshold ``t`` (memoised)."""
        t = float(t)
        if t not in self._replays:
            trace = self.trace
            self._replays[t] = replay_cache(
                trace.input_tokens,
                trace.hash_values,
                trace.hash_offsets,
                capacity_bytes=self.capacity_bytes,
                shape=self.shape,
                threshold=t,
                global_cache=self.global_cache,
            )
        return self._replays[t]

    def whole(self) -> PrefillClass:
        return _classes(self.replay(), self.prompts)[0]

    def split(self, t: float) -> Split:
        t = float(t)
        if t not in self._splits:
            self._splits[t] = _classes(self.replay(t), self.prompts)
            bisect.insort(self._known, t)
        return self._splits[t]

    def thresholds(self) -> np.ndarray:
        if self._grid is None:
            top = float(self.prompts.max())
            shares = np.concatenate([np.linspace(0, 1, TRACE_GRID_QUANTILES), 1 - 0.5**TAIL_HALVINGS])
            quantiles = np.quantile(self.replay().uncached, shares)
            doublings = GRID_FIRST_TOKENS * 2.0 ** np.arange(
                max(0, int(np.log2(top / GRID_FIRST_TOKENS))) + 1
            )
            grid = np.unique(np.concatenate([[0.0], np.round(quantiles), doublings[doublings < top], [top]]))
            for t in grid:  # replay every grid point now, so estimates interpolate between them
                self.split(t)
            self._grid = grid
        return self._grid

    def estimate(self, t: float) -> Split:
        """Linear between the nearest thresholds replayed so far (the grid and every exact split since),
        in the classes' totals per request of the workload; exact at those thresholds and outside them."""
        self.thresholds()
        known, t = self._known, float(t)
        j = bisect.bisect_left(known, t)
        if t in self._splits or j == 0 or j == len(known):
            return self.split(t)
        a, b = known[j - 1], known[j]
        w = (t - a) / (b - a)
        lo, hi = self._splits[a], self._splits[b]
        local, remote = ((1 - w) * _totals(x) + w * _totals(y) for x, y in zip(lo, hi, strict=True))
        return _from_totals(local), _from_totals(remote)

    def reuse(self, t: float | None = None) -> Reuse:
        r = self.replay(math.inf if t is None else t)
        return Reuse(r.token_hit_ratio, r.block_hit_ratio)

    def describe(self) -> dict:
        one = self.replay()
        cached = self.capacity_bytes is None or self.capacity_bytes > 0
        cap = None if self.capacity_bytes is None else self.capacity_bytes / 2**30
        shape = self.shape
        blocks = None if self.capacity_bytes is None else int(self.capacity_bytes // shape.block_bytes)
        return {
            "distribution": "incremental" if cached else "raw",
            "why": (
                "what each request still prefills after its site's prefix cache, replayed in arrival order"
                if cached
                else "the prefix cache is off ([simulate] cache_capacity_gib = 0)"
            ),
            "prefill_time": "the mean of T(uncached, cached) over its requests, E[T]",
            "cache_capacity_gib": cap,
            "cache_blocks": blocks,
            "block_tokens": self.trace.block_tokens,
            "prfaas_cache": "global" if self.global_cache else "local",
            # A hybrid model's hits end at linear-state checkpoints, each state_bytes of the capacity.
            "prefix_cache": "hybrid" if shape.hybrid else "blocks",
            "state_bytes": shape.state_bytes,
            "state_checkpoint_every_blocks": shape.checkpoint_every_blocks,
            "mean_input_tokens": float(self.prompts.mean()),
            "mean_uncached_tokens": float(one.uncached.mean()),
            # One site seeing every request (homogeneous, naive); PrfaaS's are per topology.
            "token_hit_ratio": one.token_hit_ratio,
            "block_hit_ratio": one.block_hit_ratio,
        }
