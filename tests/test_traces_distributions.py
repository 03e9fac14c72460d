"""Length distributions: the paper's truncated log-normal figures, analytic vs sampled, and the simple ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import InputError
from harness.traces.distributions import Empirical, Fixed, TruncatedLogNormal, Uniform

PAPER = TruncatedLogNormal(9.90, 1.00, 128, 131072)


def test_paper_case_study_figures():
    # design.md: mean ≈ 27.5K; at t = 19.4K, p ≈ 0.496, l_long ≈ 45K, l_short ≈ 10.2K.
    assert PAPER.mean() == pytest.approx(27_500, rel=0.01)
    assert PAPER.tail_prob(19_400) == pytest.approx(0.496, abs=0.01)
    assert PAPER.mean_above(19_400) == pytest.approx(45_000, rel=0.02)
    assert PAPER.mean_below(19_400) == pytest.approx(10_200, rel=0.02)


def test_untruncated_limit_matches_lognormal_closed_form():
    # With bounds far outside the mass, the truncated moments equal the plain lognormal ones.
    d = TruncatedLogNormal(5.0, 0.5, 1e-9, 1e12)
    assert d.mean() == pytest.approx(math.exp(5.0 + 0.125), rel=1e-9)
    median = math.exp(5.0)
    assert d.tail_prob(median) == pytest.approx(0.5, abs=1e-9)
    assert d.quantile(0.5) == pytest.approx(median, rel=1e-9)


def test_conditional_means_recombine_to_mean():
    for t in (200.0, 5_000.0, 19_400.0, 100_000.0):
        p = PAPER.tail_prob(t)
        assert p * PAPER.mean_above(t) + (1 - p) * PAPER.mean_below(t) == pytest.approx(
            PAPER.mean(), rel=1e-9
        )


def test_conditional_means_at_the_bounds_are_limits_not_nan():
    assert PAPER.tail_prob(131072) == 0.0
    assert PAPER.mean_above(131072) == 131072
    assert PAPER.mean_below(128) == 128
    assert PAPER.tail_prob(0) == pytest.approx(1.0)


def test_sample_agrees_with_analytic():
    s = PAPER.sample(400_000, np.random.default_rng(7))
    assert s.dtype == np.int64
    assert s.min() >= 128 and s.max() <= 131072
    assert s.mean() == pytest.approx(PAPER.mean(), rel=0.01)
    assert (s > 19_400).mean() == pytest.approx(0.496, abs=0.01)


def test_narrow_window_uses_inverse_cdf_and_stays_exact():
    # Only ~2% of the mass lies in [100K, 128K]: rejection would be wasteful; the inverse CDF path runs.
    d = TruncatedLogNormal(9.9, 1.0, 100_000, 131072)
    s = d.sample(20_000, np.random.default_rng(3))
    assert s.min() >= 100_000 and s.max() <= 131072
    assert s.mean() == pytest.approx(d.mean(), rel=0.005)


@settings(max_examples=40, deadline=None)
@given(
    mu=st.floats(3, 12),
    sigma=st.floats(0.1, 2.5),
    lo=st.integers(1, 5000),
    width=st.integers(1, 200_000),
    seed=st.integers(0, 2**32 - 1),
)
def test_samples_within_bounds_and_seeded(mu, sigma, lo, width, seed):
    try:
        d = TruncatedLogNormal(mu, sigma, lo, lo + width)
    except InputError:  # no probability mass in the window at double precision
        return
    a = d.sample(200, np.random.default_rng(seed))
    b = d.sample(200, np.random.default_rng(seed))
    assert np.array_equal(a, b)
    assert a.min() >= lo and a.max() <= lo + width


@pytest.mark.parametrize(
    "args",
    [
        (9.9, 0.0, 128, 1000),
        (9.9, -1.0, 128, 1000),
        (9.9, 1.0, 1000, 128),
        (9.9, 1.0, 0, 128),
        (9.9, 1.0, 1e30, 1e31),
    ],
)
def test_bad_parameters_rejected(args):
    with pytest.raises(InputError):
        TruncatedLogNormal(*args)


def test_uniform_discrete_statistics():
    d = Uniform(1, 10)  # values 1..10
    assert d.mean() == 5.5
    assert d.tail_prob(7) == pytest.approx(0.3)  # 8, 9, 10
    assert d.mean_above(7) == 9.0
    assert d.mean_below(7) == 4.0  # 1..7
    s = d.sample(50_000, np.random.default_rng(0))
    assert set(np.unique(s)) == set(range(1, 11))
    assert (s > 7).mean() == pytest.approx(0.3, abs=0.01)


def test_fixed_and_empirical():
    f = Fixed(4096)
    assert np.array_equal(f.sample(3, np.random.default_rng(0)), [4096] * 3)
    assert f.tail_prob(4095) == 1.0 and f.tail_prob(4096) == 0.0
    e = Empirical(np.array([10, 20, 30, 40]))
    assert e.mean() == 25.0
    assert e.tail_prob(20) == 0.5
    assert e.mean_above(20) == 35.0 and e.mean_below(20) == 15.0
    assert set(e.sample(1000, np.random.default_rng(0))) == {10, 20, 30, 40}
    with pytest.raises(InputError):
        Empirical(np.array([], dtype=np.int64))
    with pytest.raises(InputError):
        Uniform(5, 4)
