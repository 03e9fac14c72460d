"""Sharding one schedule across load workers by affinity group, so prefix affinity and session order
hold within a worker. Pure numpy, no I/O.

A request's group is its trace row's session (``session_id`` >= 0: the trace's, or session mode's
plan, which also infers sessions), else its first prefix block id (requests sharing a prefix share its
first block), else its own trace row. Whole groups go to workers
greedily, the largest first to the worker with the fewest requests so far.
"""

from __future__ import annotations

import heapq

import numpy as np

from harness.loadgen.schedule import Schedule
from harness.traces.frame import Trace

_SESSION, _PREFIX, _ROW = 0, 1, 2


def group_keys(trace: Trace, rows: np.ndarray, session_id: np.ndarray | None = None) -> np.ndarray:
    """One ``(kind, value)`` row per request of trace ``rows``: its affinity group (module docstring);
    ``session_id`` (per trace row) replaces the trace's own."""
    rows = np.asarray(rows, dtype=np.int64)
    kind = np.full(len(rows), _ROW, dtype=np.int64)
    value = rows.copy()
    starts, ends = trace.hash_offsets[rows], trace.hash_offsets[rows + 1]
    has_prefix = ends > starts
    if len(trace.hash_values):
        first = trace.hash_values[np.minimum(starts, len(trace.hash_values) - 1)]
        kind[has_prefix], value[has_prefix] = _PREFIX, first[has_prefix]
    sessions = trace.session_id if session_id is None else session_id
    if sessions is not None:
        sid = sessions[rows]
        in_session = sid >= 0
        kind[in_session], value[in_session] = _SESSION, sid[in_session]
    return np.stack([kind, value], axis=1)


def shard(
    trace: Trace, schedule: Schedule, n: int, session_id: np.ndarray | None = None
) -> list[tuple[int, ...]]:
    """The schedule indices of each of ``n`` workers, ascending: whole affinity groups, balanced greedily
    by request count (ties: the group seen first goes first, to the lowest-numbered worker).
    ``session_id`` (per trace row, session mode's plan) replaces the trace's own sessions."""
    if schedule.row is None:
        raise ValueError("a closed-loop schedule cannot be sharded")
    if n < 1:
        raise ValueError(f"need at least one worker, got {n}")
    indices = np.fromiter(schedule.indices(), dtype=np.int64)
    keys = group_keys(trace, schedule.row[indices], session_id)
    _, first, group, counts = np.unique(
        keys, axis=0, return_index=True, return_inverse=True, return_counts=True
    )
    group = group.reshape(-1)
    owner = np.empty(len(counts), dtype=np.int64)
    load = [(0, k) for k in range(n)]  # (requests so far, worker): a heap, the least loaded on top
    for g in np.lexsort((first, -counts)):  # largest group first; ties in order of appearance
        requests, k = heapq.heappop(load)
        owner[g] = k
        heapq.heappush(load, (requests + int(counts[g]), k))
    mine = owner[group]
    return [tuple(indices[mine == k].tolist()) for k in range(n)]
