"""Transforms and statistics on small hand-built traces, with hand-computed expectations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.errors import InputError
from harness.traces import (
    Trace,
    clip_lengths,
    mean_rate,
    offsets_from_lists,
    prefix_reuse,
    read_trace,
    rescale_rate,
    sample,
    speedup,
    trace_stats,
    window,
)


def _trace(arrivals, inputs, outputs, ids, block=4) -> Trace:
    values, offsets = offsets_from_lists(ids)
    return Trace(
        arrival_s=np.asarray(arrivals, dtype=float),
        input_tokens=np.asarray(inputs, dtype=np.int64),
        output_tokens=np.asarray(outputs, dtype=np.int64),
        hash_values=values,
        hash_offsets=offsets,
        block_tokens=block,
        source="hand",
    )


# Block size 4: request 0 has 10 tokens -> 3 blocks; request 1 shares its first two blocks.
T = _trace(
    arrivals=[0.0, 1.0, 3.0, 6.0, 10.0],
    inputs=[10, 12, 4, 9, 1],
    outputs=[5, 6, 7, 8, 9],
    ids=[[1, 2, 3], [1, 2, 4], [5], [1, 6, 7], [8]],
)


def test_window_keeps_half_open_interval_and_rebases():
    w = window(T, 1.0, 5.0)  # [1, 6): requests 1 and 2
    assert list(w.arrival_s) == [0.0, 2.0]
    assert list(w.input_tokens) == [12, 4]
    assert list(w.hash_ids(0)) == [1, 2, 4]


def test_speedup_and_rate():
    assert mean_rate(T) == pytest.approx(4 / 10)  # (n - 1) / span
    fast = speedup(T, 2.0)
    assert list(fast.arrival_s) == [0.0, 0.5, 1.5, 3.0, 5.0]
    r = rescale_rate(T, 2.0)  # 5x faster
    assert list(r.arrival_s) == pytest.approx([0.0, 0.2, 0.6, 1.2, 2.0])
    assert mean_rate(r) == pytest.approx(2.0)
    with pytest.raises(InputError):
        speedup(T, 0)
    with pytest.raises(InputError):
        rescale_rate(T.take(np.array([0])), 1.0)


def test_clip_truncates_lengths_and_block_ids_consistently():
    clipped, n = clip_lengths(T, 5, max_output=7)
    assert list(clipped.input_tokens) == [5, 5, 4, 5, 1]
    assert list(clipped.output_tokens) == [5, 6, 7, 7, 7]
    assert n == 4  # requests 0, 1, 3 (input) and 4 (output)
    # ceil(5 / 4) = 2 leading ids kept; the shared prefix [1, 2] survives.
    assert [list(clipped.hash_ids(i)) for i in range(5)] == [[1, 2], [1, 2], [5], [1, 6], [8]]


def test_clip_real_trace_keeps_ceil_invariant(mooncake_slice):
    trace = read_trace(mooncake_slice)
    clipped, n = clip_lengths(trace, 8192)
    assert n == int((trace.input_tokens > 8192).sum())
    assert clipped.input_tokens.max() == 8192
    assert np.array_equal(np.diff(clipped.hash_offsets), -(-clipped.input_tokens // 512))


def test_sample_is_seeded_and_ordered():
    a = sample(T, n=3, seed=4)
    b = sample(T, n=3, seed=4)
    assert list(a.arrival_s) == list(b.arrival_s)
    assert len(a) == 3 and np.all(np.diff(a.arrival_s) > 0)
    assert set(a.arrival_s) <= set(T.arrival_s)
    assert len(sample(T, fraction=0.4, seed=1)) == 2
    with pytest.raises(InputError):
        sample(T, n=6)
    with pytest.raises(InputError):
        sample(T, n=2, fraction=0.5)


def test_stats_by_hand():
    s = trace_stats(T, above=(4, 9))
    assert s.requests == 5 and s.span_s == 10.0
    assert s.rate_rps == pytest.approx(0.4)
    gaps = np.array([1.0, 2.0, 3.0, 4.0])
    assert s.interarrival_mean_s == pytest.approx(2.5)
    assert s.interarrival_cv == pytest.approx(gaps.std() / 2.5)
    assert (
        s.input_tokens.mean == pytest.approx(36 / 5)
        and s.input_tokens.median == 9
        and s.input_tokens.max == 12
    )
    # 11 blocks in order; 1, 2 repeat in request 1 and 1 again in request 3: 3 of 11 seen before.
    assert prefix_reuse(T) == pytest.approx(3 / 11)
    assert s.share_above == {4: 0.6, 9: 0.4}


def test_mooncake_stats_match_the_slices_facts(mooncake_slice):
    # tests/data/README.md, counted from the raw JSON lines by the standard library alone: 300 rows over
    # 102 s, input median 8,768.5 and max 120,633, output mean 376.93, 29 inputs above 32K, and
    # 676 of 8,490 hash ids seen on an earlier row.
    s = trace_stats(read_trace(mooncake_slice))
    assert s.span_s == pytest.approx(102.0)
    assert s.input_tokens.median == 8768.5 and s.input_tokens.max == 120_633
    assert s.output_tokens.mean == pytest.approx(376.93)
    assert s.share_above[32768] == pytest.approx(29 / 300)
    assert s.prefix_reuse == pytest.approx(676 / 8490)
    assert math.isclose(s.rate_rps, 299 / s.span_s)
