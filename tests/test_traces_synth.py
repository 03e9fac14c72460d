"""Synthetic generators: arrival statistics, prefix-sharing structure, determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.traces import (
    Constant,
    Empirical,
    Fixed,
    Gamma,
    Poisson,
    Sessions,
    SynthSpec,
    SystemPrompts,
    TruncatedLogNormal,
    Uniform,
    prefix_reuse,
    read_trace,
    synthesize,
)

PAPER = TruncatedLogNormal(9.90, 1.00, 128, 131072)


def test_poisson_rate_and_cv_within_statistical_tolerance():
    t = Poisson(5.0).times(40_000, np.random.default_rng(11))
    gaps = np.diff(t)
    assert t[0] == 0.0
    # mean gap 0.2 s with standard error 0.2/sqrt(n) = 0.001: 4 SE is 2%.
    assert 1 / gaps.mean() == pytest.approx(5.0, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)


def test_gamma_burstiness():
    gaps = np.diff(Gamma(5.0, 2.0).times(40_000, np.random.default_rng(12)))
    assert 1 / gaps.mean() == pytest.approx(5.0, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(2.0, abs=0.15)


def test_constant_is_exact():
    assert list(Constant(4.0).times(5, np.random.default_rng(0))) == [0.0, 0.25, 0.5, 0.75, 1.0]


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 300),
    seed=st.integers(0, 2**31),
    lo=st.integers(1, 3000),
    width=st.integers(0, 20_000),
    prompts=st.one_of(
        st.none(), st.tuples(st.integers(1, 5), st.integers(1, 5000), st.floats(0, 1), st.floats(0, 2))
    ),
    turns=st.one_of(st.none(), st.floats(1, 6)),
    block=st.sampled_from([16, 512]),
)
def test_synth_invariants(n, seed, lo, width, prompts, turns, block):
    spec = SynthSpec(
        requests=n,
        lengths=Uniform(lo, lo + width),
        arrivals=Gamma(3.0, 1.5),
        outputs=Uniform(1, 300),
        system_prompts=SystemPrompts(*prompts) if prompts else None,
        sessions=Sessions(turns, concurrent=4, max_input=lo + width + 5000) if turns else None,
        block_tokens=block,
    )
    a, b = synthesize(spec, seed), synthesize(spec, seed)
    for column in ("arrival_s", "input_tokens", "output_tokens", "hash_values", "hash_offsets"):
        assert np.array_equal(getattr(a, column), getattr(b, column))
    assert len(a) == n and np.all(np.diff(a.arrival_s) >= 0)
    assert np.array_equal(np.diff(a.hash_offsets), -(-a.input_tokens // block))
    if turns is None:
        assert a.input_tokens.min() >= lo and a.input_tokens.max() <= lo + width
    else:
        assert a.input_tokens.max() <= lo + width + 5000
    for i in range(n):  # ids never repeat inside one request
        ids = a.hash_ids(i)
        assert len(np.unique(ids)) == len(ids)


def test_one_system_prompt_shared_by_all():
    spec = SynthSpec(1000, Uniform(2048, 8192), Poisson(2.0), system_prompts=SystemPrompts(1, 2048 + 100))
    t = synthesize(spec, 3)
    # 2148 tokens = 4 full blocks shared (the partial fifth block is mixed with user text).
    for i in range(len(t)):
        assert list(t.hash_ids(i)[:4]) == [0, 1, 2, 3]
        assert t.hash_ids(i)[4] >= 4
    total = len(t.hash_values)
    assert prefix_reuse(t) == pytest.approx((len(t) - 1) * 4 / total)


def test_zipf_favours_the_first_prompt():
    spec = SynthSpec(20_000, Fixed(1024), Poisson(2.0), system_prompts=SystemPrompts(3, 1024, zipf=1.0))
    t = synthesize(spec, 5)
    first_ids = t.hash_values[t.hash_offsets[:-1]]
    shares = np.bincount(first_ids // 2, minlength=3)[:3] / len(t)  # prompt j owns ids 2j, 2j+1
    expected = np.array([1, 1 / 2, 1 / 3]) / (1 + 1 / 2 + 1 / 3)
    assert shares == pytest.approx(expected, abs=0.015)


def test_sessions_grow_turn_by_turn():
    spec = SynthSpec(
        3000, Uniform(600, 3000), Poisson(2.0), outputs=Uniform(10, 500), sessions=Sessions(5, concurrent=8)
    )
    t = synthesize(spec, 9)
    assert t.session_id is not None
    checked = 0
    for sid in np.unique(t.session_id):
        rows = np.flatnonzero(t.session_id == sid)
        for prev, cur in itertools.pairwise(rows):
            user = t.input_tokens[cur] - t.input_tokens[prev] - t.output_tokens[prev]
            assert 64 <= user <= 1024  # the default follow-up message lengths
            keep = t.input_tokens[prev] // 512
            assert np.array_equal(t.hash_ids(cur)[:keep], t.hash_ids(prev)[:keep])
            assert not set(t.hash_ids(cur)[keep:]) & set(t.hash_ids(prev))
            checked += 1
    # Mean turns 5 -> about 4/5 of requests are follow-ups.
    assert checked / len(t) == pytest.approx(0.8, abs=0.05)
    assert prefix_reuse(t) > 0.5


def test_prefix_sharing_does_not_change_arrivals_or_lengths():
    plain = SynthSpec(500, PAPER, Poisson(3.0))
    shared = SynthSpec(500, PAPER, Poisson(3.0), system_prompts=SystemPrompts(2, 4096))
    a, b = synthesize(plain, 1), synthesize(shared, 1)
    assert np.array_equal(a.arrival_s, b.arrival_s) and np.array_equal(a.input_tokens, b.input_tokens)
    assert not np.array_equal(synthesize(plain, 2).arrival_s, a.arrival_s)


def test_paper_workload_split():
    t = synthesize(SynthSpec(50_000, PAPER, Poisson(3.0)), 1)
    assert (t.input_tokens > 19_400).mean() == pytest.approx(PAPER.tail_prob(19_400), abs=0.01)
    assert t.input_tokens.mean() == pytest.approx(PAPER.mean(), rel=0.02)
    assert np.all(t.output_tokens == 1024)


def test_empirical_from_real_trace(mooncake_slice):
    real = read_trace(mooncake_slice)
    t = synthesize(SynthSpec(30_000, Empirical(real.input_tokens), Poisson(3.0)), 2)
    assert set(np.unique(t.input_tokens)) <= set(np.unique(real.input_tokens))
    assert t.input_tokens.mean() == pytest.approx(real.input_tokens.mean(), rel=0.03)
