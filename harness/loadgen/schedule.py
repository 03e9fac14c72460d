"""The precomputed schedule: which trace row goes out when. Pure numpy, no I/O.

Every worker process and every endpoint sees the same schedule, so runs against several endpoints are
paired request for request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from harness.errors import InputError
from harness.loadgen.config import LoadSpec
from harness.traces.arrivals import ArrivalProcess, Constant, Gamma, Poisson
from harness.traces.frame import Trace

WARMUP, MEASURE, COOLDOWN = 0, 1, 2
PHASES = ("warmup", "measure", "cooldown")


@dataclass(frozen=True, eq=False)
class Schedule:
    """Open loop: ``offset_s[i]`` is the send time of request i from run start and ``row[i]`` its trace
    row; ``phase[i]`` is WARMUP/MEASURE/COOLDOWN. Closed loop (``offset_s is None``): request ``i`` uses
    row ``i % trace_len`` and goes out when a slot frees; its phase is decided at send time.

    A worker's part holds requests ``first, first + stride, ...`` below ``count``, or, given ``index``
    (a shard, ``harness.loadgen.shards``), exactly the requests it lists.
    """

    count: int
    trace_len: int
    offset_s: np.ndarray | None = None
    row: np.ndarray | None = None
    phase: np.ndarray | None = None
    concurrency: int | None = None
    duration_s: float | None = None
    warmup_s: float = 0.0
    cooldown_s: float = 0.0
    first: int = 0
    stride: int = 1
    index: tuple[int, ...] | None = None

    @property
    def closed_loop(self) -> bool:
        return self.offset_s is None

    def __len__(self) -> int:
        return len(self.indices())

    def part(self, k: int, n: int) -> Schedule:
        """Worker ``k`` of ``n``: every n-th request from k (same clock, interleaved), with a share of
        the concurrency."""
        return replace(
            self, concurrency=self._share(k, n), first=self.first + k * self.stride, stride=self.stride * n
        )

    def shard(self, index: tuple[int, ...], k: int, n: int) -> Schedule:
        """Worker ``k`` of ``n`` sending exactly the requests ``index`` (ascending), with a share of the
        concurrency. Open loop only: a closed loop's requests have no send times to hand out."""
        if self.closed_loop:
            raise ValueError("a closed-loop schedule cannot be sharded")
        return replace(self, concurrency=self._share(k, n), index=index)

    def _share(self, k: int, n: int) -> int | None:
        if self.concurrency is None:
            return None
        return max(1, self.concurrency // n + (k < self.concurrency % n))

    def indices(self) -> range | tuple[int, ...]:
        return self.index if self.index is not None else range(self.first, self.count, self.stride)


def _process(spec: LoadSpec) -> ArrivalProcess:
    """The same arrival processes ``trace synth`` draws from."""
    rate = float(spec.rate_rps or 0.0)
    if spec.arrival == "poisson":
        return Poisson(rate)
    if spec.arrival == "gamma":
        return Gamma(rate, spec.gamma_cv)
    return Constant(rate)  # i / rate exactly, no cumulative rounding


def build_schedule(trace: Trace, spec: LoadSpec) -> Schedule:
    """Turn a (windowed, sped-up) trace and a load spec into a schedule.

    Trace arrivals start at 0 at the first request. Rate arrivals take trace rows in order and cycle;
    their count is ``max_requests``, else enough to fill ``duration_s``, else one pass of the trace.
    A closed loop runs ``max_requests``, else until ``duration_s``, else one pass.
    """
    if len(trace) == 0:
        raise InputError("the trace has no requests (check --window)")
    common = dict(
        concurrency=spec.concurrency,
        duration_s=spec.duration_s,
        warmup_s=spec.warmup_s,
        cooldown_s=spec.cooldown_s,
    )
    if spec.closed_loop:
        n = spec.max_requests or (1 << 62 if spec.duration_s is not None else len(trace))
        return Schedule(count=n, trace_len=len(trace), **common)
    if spec.arrival == "trace":
        offset = trace.arrival_s - trace.arrival_s[0]
        row = np.arange(len(offset), dtype=np.int64)
    else:
        n = spec.max_requests
        if n is None:
            n = (
                len(trace)
                if spec.duration_s is None
                else math.ceil(spec.duration_s * float(spec.rate_rps or 0))
            )
        offset = _process(spec).times(max(n, 1), np.random.default_rng(spec.seed))
        row = np.arange(len(offset), dtype=np.int64) % len(trace)
    keep = np.ones(len(offset), dtype=bool)
    if spec.duration_s is not None:
        keep &= offset < spec.duration_s
    offset, row = offset[keep][: spec.max_requests], row[keep][: spec.max_requests]
    end = spec.duration_s if spec.duration_s is not None else float(offset[-1])
    phase = np.full(len(offset), MEASURE, dtype=np.int8)
    phase[offset < spec.warmup_s] = WARMUP
    if spec.cooldown_s > 0:
        phase[offset > end - spec.cooldown_s] = COOLDOWN
    return Schedule(count=len(offset), trace_len=len(trace), offset_s=offset, row=row, phase=phase, **common)


def closed_loop_phase(schedule: Schedule, now_s: float) -> int:
    """Phase of a closed-loop request sent at ``now_s`` (cool-down needs a known end: ``duration_s``)."""
    if now_s < schedule.warmup_s:
        return WARMUP
    end = schedule.duration_s
    if end is not None and schedule.cooldown_s > 0 and now_s > end - schedule.cooldown_s:
        return COOLDOWN
    return MEASURE
