"""Distributed replay's pure parts: sharding a schedule by affinity group, a worker's shard of the
schedule, and the clock offset from round trips (no Ray here; tests/test_replay_ray.py runs it)."""

from __future__ import annotations

import numpy as np
import pytest

from harness.loadgen import LoadSpec, build_schedule
from harness.loadgen.clockoffset import estimate
from harness.loadgen.rayworkers import rate_rps
from harness.loadgen.shards import shard
from harness.traces.frame import Trace, offsets_from_lengths


def _trace(prefixes: list[list[int]], sessions: list[int] | None = None) -> Trace:
    n = len(prefixes)
    return Trace(
        arrival_s=np.arange(n, dtype=float),
        input_tokens=np.full(n, 10),
        output_tokens=np.full(n, 2),
        hash_values=np.asarray([h for p in prefixes for h in p], dtype=np.int64),
        hash_offsets=offsets_from_lengths(np.asarray([len(p) for p in prefixes])),
        session_id=None if sessions is None else np.asarray(sessions, dtype=np.int64),
    )


def test_whole_prefix_groups_go_to_the_least_loaded_worker_largest_first():
    # groups by first block: {0: rows 0, 1}, {5: rows 2, 3}, {9: row 4}; row 5 has no blocks (its own group)
    trace = _trace([[0, 1], [0, 2], [5], [5, 6], [9], []])
    assert shard(trace, build_schedule(trace, LoadSpec()), 2) == [(0, 1, 4), (2, 3, 5)]
    assert shard(trace, build_schedule(trace, LoadSpec()), 1) == [(0, 1, 2, 3, 4, 5)]
    # more workers than groups: the last ones get nothing
    assert shard(trace, build_schedule(trace, LoadSpec()), 5) == [(0, 1), (2, 3), (4,), (5,), ()]


def test_a_session_keeps_its_turns_together_whatever_their_prefixes():
    # rows 0 and 3 are one session with different first blocks; rows 1 and 2 share block 7, no session
    trace = _trace([[1], [7], [7], [2]], sessions=[4, -1, -1, 4])
    parts = shard(trace, build_schedule(trace, LoadSpec()), 2)
    assert sorted(parts) == [(0, 3), (1, 2)]
    # session mode's plan (which also infers sessions) replaces the trace's own: rows 1 and 2 one session
    plan_sessions = np.asarray([-1, 3, 3, -1])
    assert shard(trace, build_schedule(trace, LoadSpec()), 2, plan_sessions) == [(1, 2), (0, 3)]


def test_a_cycled_trace_keeps_each_row_on_one_worker_and_every_request_once():
    trace = _trace([[i % 4] for i in range(10)])  # four prefix groups over ten rows
    schedule = build_schedule(trace, LoadSpec(arrival="poisson", rate_rps=100, max_requests=95))
    parts = shard(trace, schedule, 3)
    assert sorted(i for p in parts for i in p) == list(range(95))
    owner = {int(schedule.row[i]) % 4: k for k, p in enumerate(parts) for i in p}
    for k, p in enumerate(parts):
        assert all(owner[int(schedule.row[i]) % 4] == k for i in p)
        assert list(p) == sorted(p)
    # rows 0-4 go 10 times, rows 5-9 9 times: groups of 29, 28, 19 and 19; the last two share a worker
    assert [len(p) for p in parts] == [29, 28, 38]


def test_a_shard_of_the_schedule_sends_exactly_its_requests_with_a_share_of_the_concurrency():
    trace = _trace([[0]] * 5)
    schedule = build_schedule(trace, LoadSpec(concurrency=3))
    part = schedule.shard((1, 4), 0, 2)
    assert list(part.indices()) == [1, 4] and len(part) == 2 and part.concurrency == 2
    assert schedule.shard((0,), 1, 2).concurrency == 1
    closed = build_schedule(trace, LoadSpec(rate_rps=float("inf"), concurrency=2))
    with pytest.raises(ValueError, match="closed-loop"):
        closed.shard((0,), 0, 1)
    with pytest.raises(ValueError, match="closed-loop"):
        shard(trace, closed, 2)


def test_the_clock_offset_comes_from_the_shortest_round_trip_and_holds_the_truth_within_its_bound():
    true_offset = 100.0  # the remote clock reads 100 s more than the driver's
    samples = [
        (0.0, 0.9 + true_offset, 1.0),  # answered late in a 1 s round trip: estimate 100.4, bound 0.5
        (10.0, 10.0 + true_offset, 10.2),  # read at once, the answer slow back: estimate 99.9, bound 0.1
        (20.0, 20.5 + true_offset, 21.0),
    ]
    clock = estimate(samples)
    assert clock.offset_s == pytest.approx(99.9) and clock.bound_s == pytest.approx(0.1)
    assert clock.round_trips == 3
    for sample in samples:
        one = estimate([sample])
        assert abs(one.offset_s - true_offset) <= one.bound_s + 1e-12
    assert clock.to_remote(5.0) == pytest.approx(104.9)
    with pytest.raises(ValueError):
        estimate([])


def test_a_rate_counts_gaps_between_sends():
    assert rate_rps(11, 2.0, 7.0) == pytest.approx(2.0)
    assert rate_rps(1, 2.0, 2.0) is None and rate_rps(3, 2.0, 2.0) is None and rate_rps(0, 0, 0) is None
