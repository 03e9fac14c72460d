"""The analytic planner: Table 6 of the PrfaaS paper, hand-computed Θ terms, and properties."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from harness.model import (
    InstanceCost,
    PlanContext,
    bandwidth_breakpoints,
    deployment_from_scenario,
    load_hardware,
    load_model,
    plan_deployment,
    resolve_topologies,
    sweep_bandwidth,
    sweep_split,
    sweep_threshold,
    with_overrides,
)
from harness.model.planner import best_prfaas, evaluate_homogeneous, evaluate_naive, evaluate_prfaas
from harness.scenario import load_scenario
from harness.traces import Empirical, Fixed, TruncatedLogNormal

CASE_STUDY = Path(__file__).resolve().parent.parent / "workloads" / "paper-case-study.toml"


@pytest.fixture(scope="module")
def deployment():
    return deployment_from_scenario(load_scenario(CASE_STUDY))


@pytest.fixture(scope="module")
def report(deployment):
    return plan_deployment(deployment)


# ------------------------------------------------------------------------------------- Table 6 targets


def test_table6_prfaas(report):
    r = report.topologies["prfaas"].result
    assert r.threshold_tokens == pytest.approx(19_400, rel=0.10)
    assert (r.n_prfaas, r.n_p, r.n_d) == (4, 3, 5)
    assert r.lambda_max == pytest.approx(3.24, rel=0.05)
    assert r.offload_share == pytest.approx(0.496, abs=0.02)
    # Θ_prfaas / Θ_pd-p / Θ_pd-d = 1.61 / 1.64 / 3.91 in the paper.
    assert r.theta_prfaas == pytest.approx(1.61, rel=0.05)
    assert r.theta_pd_p == pytest.approx(1.64, rel=0.05)
    assert r.theta_pd_d == pytest.approx(3.91, abs=0.005)
    # ≈13 Gbps of egress on the 100 Gbps link.
    assert r.egress_gbps == pytest.approx(13, rel=0.10)


def test_table6_homogeneous(report):
    r = report.topologies["homogeneous"].result
    assert (r.n_p, r.n_d) == (9, 3)
    assert r.lambda_max == pytest.approx(2.11, rel=0.05)
    assert r.theta_pd_d == pytest.approx(2.35, abs=0.01)


def test_table6_naive(report):
    r = report.topologies["naive"].result
    assert (r.n_prfaas, r.n_p, r.n_d) == (4, 0, 8)
    assert r.lambda_max == pytest.approx(2.45, rel=0.05)
    assert r.theta_pd_d == pytest.approx(6.25)


def test_table6_ratios(report):
    ratios = report.ratios
    assert ratios["prfaas_vs_homogeneous"] == pytest.approx(1.54, abs=0.05)
    assert ratios["naive_vs_homogeneous"] == pytest.approx(1.16, abs=0.05)
    assert ratios["prfaas_vs_naive"] == pytest.approx(3.24 / 2.45, abs=0.05)


def test_cost_normalised_ratio_from_prices(report, deployment):
    """32 H200 + 64 H20 against 96 H20: with an H200 at twice an H20 the paper's ~15% gain at equal cost."""
    assert deployment.remote.price_per_gpu_hour == pytest.approx(2 * deployment.local.price_per_gpu_hour)
    prfaas, homog = report.topologies["prfaas"], report.topologies["homogeneous"]
    assert prfaas.cost_per_hour == pytest.approx(8 * (4 * 3.60 + 8 * 1.80))
    expected = (prfaas.result.lambda_max / prfaas.cost_per_hour) / (
        homog.result.lambda_max / homog.cost_per_hour
    )
    assert report.ratios["prfaas_vs_homogeneous_per_cost"] == pytest.approx(expected)
    assert report.ratios["prfaas_vs_homogeneous_per_cost"] == pytest.approx(1.15, abs=0.05)


def test_resolved_topologies_are_the_plan(deployment, report):
    tops = resolve_topologies(deployment)
    assert (tops["prfaas"].n_p, tops["prfaas"].n_d, tops["prfaas"].n_prfaas) == (3, 5, 4)
    assert tops["prfaas"].threshold_tokens == report.topologies["prfaas"].result.threshold_tokens
    assert (tops["homogeneous"].n_p, tops["homogeneous"].n_d) == (9, 3)
    assert (tops["naive"].n_p, tops["naive"].n_d, tops["naive"].n_prfaas) == (0, 8, 4)
    assert all(t.resolved for t in tops.values())


# ------------------------------------------------------------------------------------- hand-computed Θ


@pytest.fixture(scope="module")
def costs():
    m = load_model("kimi-1t-hybrid")
    return InstanceCost(m, load_hardware("H20")), InstanceCost(m, load_hardware("H200"))


def test_theta_terms_by_hand_on_a_fixed_length(costs):
    """All requests 30K tokens, 1024 out, 25 ms TPOT, 50 Gbps: apply the paper's formulas directly."""
    h20, h200 = costs
    ctx = PlanContext(h20, h200, Fixed(30_000), 1024, 0.025, 50.0)
    bs = h20.max_decode_batch(0.025, 30_000 + 512)
    homog = evaluate_homogeneous(ctx, 7, 5)
    assert homog.theta_pd_p == pytest.approx(7 / h20.prefill_time_s(30_000))
    assert homog.theta_pd_d == pytest.approx(5 * bs / (0.025 * 1024))
    assert homog.lambda_max == pytest.approx(min(homog.theta_pd_p, homog.theta_pd_d))
    naive = evaluate_naive(ctx, 2, 6)
    compute, link = 2 / h200.prefill_time_s(30_000), 50e9 / (8 * h200.kv_bytes(30_000))
    assert naive.theta_prfaas == pytest.approx(min(compute, link))
    assert naive.lambda_max == pytest.approx(min(compute, link, 6 * bs / (0.025 * 1024)))
    assert naive.egress_gbps == pytest.approx(naive.lambda_max * h200.kv_bytes(30_000) * 8 / 1e9)


def test_prfaas_split_terms_by_hand(costs):
    """t splits the paper's distribution; Λ_max = min(Θ_prfaas/p, Θ_pd-p/(1-p), Θ_pd-d)."""
    h20, h200 = costs
    dist = TruncatedLogNormal(9.90, 1.00, 128, 131072)
    ctx = PlanContext(h20, h200, dist, 1024, 0.025, 100.0)
    t = 15_000
    p, l_long, l_short = dist.tail_prob(t), dist.mean_above(t), dist.mean_below(t)
    r = evaluate_prfaas(ctx, 4, 3, 5, t)
    theta_r = min(4 / h200.prefill_time_s(round(l_long)), 100e9 / (8 * h200.kv_bytes(round(l_long))))
    theta_p = 3 / h20.prefill_time_s(round(l_short))
    theta_d = 5 * 20 / (0.025 * 1024)
    assert (r.offload_share, r.l_long, r.l_short) == pytest.approx((p, l_long, l_short))
    assert (r.theta_prfaas, r.theta_pd_p, r.theta_pd_d) == pytest.approx((theta_r, theta_p, theta_d))
    assert r.lambda_max == pytest.approx(min(theta_r / p, theta_p / (1 - p), theta_d))
    assert r.egress_gbps == pytest.approx(r.lambda_max * p * h200.kv_bytes(round(l_long)) * 8 / 1e9)


def test_case_study_distribution_statistics():
    """design.md: mean ≈ 27.5K; at t = 19.4K, p ≈ 0.496, l_long ≈ 45K, l_short ≈ 10.2K."""
    dist = TruncatedLogNormal(9.90, 1.00, 128, 131072)
    assert dist.mean() == pytest.approx(27_500, rel=0.01)
    assert dist.tail_prob(19_400) == pytest.approx(0.496, abs=0.005)
    assert dist.mean_above(19_400) == pytest.approx(45_000, rel=0.01)
    assert dist.mean_below(19_400) == pytest.approx(10_200, rel=0.01)


def test_best_threshold_beats_every_grid_point(deployment, report):
    best = report.topologies["prfaas"].result
    frame = sweep_threshold(deployment, np.arange(1000, 131_000, 500))
    assert (frame["lambda_max"] <= best.lambda_max + 1e-9).all()
    assert frame["lambda_max"].max() == pytest.approx(best.lambda_max, rel=0.01)
    assert (frame[["n_p", "n_d"]].drop_duplicates().values == [[3, 5]]).all()


# ------------------------------------------------------------------------------------- properties


@pytest.fixture(scope="module")
def bandwidth_frame(deployment):
    return sweep_bandwidth(deployment, [0.5, 1, 2, 4, 8, 12, 16, 25, 50, 100, 200, 400])


def test_lambda_non_decreasing_in_bandwidth(bandwidth_frame):
    for _, group in bandwidth_frame.groupby("topology"):
        lam = group.sort_values("bandwidth_gbps")["lambda_max"].to_numpy()
        assert (np.diff(lam) >= -1e-9).all()


def test_egress_never_exceeds_the_link(bandwidth_frame):
    assert (bandwidth_frame["egress_gbps"] <= bandwidth_frame["bandwidth_gbps"] * (1 + 1e-9)).all()


def test_prfaas_never_below_naive_on_the_same_hardware(bandwidth_frame):
    """PrfaaS with N_p = 0 and t below every length is naive, so the search can only do better."""
    lam = bandwidth_frame.pivot(index="bandwidth_gbps", columns="topology", values="lambda_max")
    assert (lam["prfaas"] >= lam["naive"] - 1e-9).all()
    assert (lam["homogeneous"].nunique()) == 1  # homogeneous never crosses the link


def test_naive_is_link_bound_at_low_bandwidth(bandwidth_frame, costs):
    row = bandwidth_frame[(bandwidth_frame.topology == "naive") & (bandwidth_frame.bandwidth_gbps == 1)].iloc[
        0
    ]
    kv_gbit = costs[1].kv_bytes(round(TruncatedLogNormal(9.9, 1.0, 128, 131072).mean())) * 8 / 1e9
    assert row.bottleneck == "link"
    assert row.lambda_max == pytest.approx(1.0 / kv_gbit)


def test_dense_gqa_needs_far_more_bandwidth(deployment):
    """MiniMax-M2.5's 248 KiB/token KV needs a much fatter link than the hybrid for PrfaaS to pay off."""
    hybrid = bandwidth_breakpoints(deployment)
    dense = bandwidth_breakpoints(with_overrides(deployment, model="minimax-m2.5"))
    assert hybrid["prfaas_breakeven_gbps"] < 100 / 10  # pays off well below the paper's 100 Gbps
    assert dense["prfaas_breakeven_gbps"] > 5 * hybrid["prfaas_breakeven_gbps"]
    assert (
        hybrid["prfaas_breakeven_gbps"]
        < hybrid["prfaas_breakeven_per_cost_gbps"]
        < hybrid["prfaas_saturation_gbps"]
    )
    # Just above the per-cost break-even PrfaaS serves more requests per GPU dollar; just below, fewer.
    gbps = hybrid["prfaas_breakeven_per_cost_gbps"]
    above = plan_deployment(with_overrides(deployment, bandwidth_gbps=gbps * 1.01)).ratios
    below = plan_deployment(with_overrides(deployment, bandwidth_gbps=gbps * 0.99)).ratios
    assert below["prfaas_vs_homogeneous_per_cost"] < 1 <= above["prfaas_vs_homogeneous_per_cost"]
    assert hybrid["prfaas_saturation_gbps"] == pytest.approx(
        plan_deployment(deployment).topologies["prfaas"].result.egress_gbps, rel=0.05
    )


def test_split_sweep_contains_the_optimum(deployment, report):
    frame = sweep_split(deployment)
    pr = frame[frame.kind == "prfaas"]
    best = pr.loc[pr["lambda_max"].idxmax()]
    assert (best.n_p, best.n_d) == (3, 5)
    assert best.lambda_max == pytest.approx(report.topologies["prfaas"].result.lambda_max)
    hom = frame[frame.kind == "homogeneous"]
    assert tuple(hom.loc[hom["lambda_max"].idxmax(), ["n_p", "n_d"]]) == (9, 3)
    assert len(hom) == 11 and len(pr) == 8


def test_empirical_lengths_plan_like_the_distribution(costs):
    """A trace's lengths (an empirical sample of the same distribution) give nearly the same plan."""
    h20, h200 = costs
    dist = TruncatedLogNormal(9.90, 1.00, 128, 131072)
    sample = Empirical(dist.sample(50_000, np.random.default_rng(7)))
    exact = best_prfaas(PlanContext(h20, h200, dist, 1024, 0.025, 100.0), 8, 4)
    empirical = best_prfaas(PlanContext(h20, h200, sample, 1024, 0.025, 100.0), 8, 4)
    assert (empirical.n_p, empirical.n_d) == (exact.n_p, exact.n_d)
    assert empirical.lambda_max == pytest.approx(exact.lambda_max, rel=0.02)
    assert empirical.threshold_tokens == pytest.approx(exact.threshold_tokens, rel=0.05)


def test_fixed_threshold_and_split_are_kept(deployment):
    tops = dict(deployment.topologies)
    tops["prfaas"] = replace(tops["prfaas"], n_p=4, n_d=4, threshold_tokens=30_000.0)
    r = plan_deployment(replace(deployment, topologies=tops)).topologies["prfaas"].result
    assert (r.n_p, r.n_d, r.threshold_tokens) == (4, 4, 30_000.0)
