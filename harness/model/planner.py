"""The PrfaaS paper's analytic throughput model (§3.4) and its grid search: pure functions.

With p = P(L > t), l_long = E[L | L > t], l_short = E[L | L <= t]::

    Θ_prfaas = min(N_prfaas / T_remote(l_long), B_out / S_kv(l_long))
    Θ_pd-p   = N_p / T_local(l_short)
    Θ_pd-d   = N_d · BS_max / (T_decode · L_out)
    Λ_max    = min(Θ_prfaas / p, Θ_pd-p / (1 − p), Θ_pd-d)

Homogeneous PD is the same with p = 0 (every prefill local, at E[L]); naive heterogeneous is p = 1 (every
prefill remote, at E[L], no local prefill instances).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from harness.model.cost import InstanceCost
from harness.traces.distributions import LengthDistribution

if TYPE_CHECKING:
    from harness.model.deployment import TopologySpec

# Threshold grid step for the coarse search, then the fine step around the best coarse point.
COARSE_STEP_TOKENS = 100
FINE_STEP_TOKENS = 1


@dataclass(frozen=True)
class PlanContext:
    """Everything the equations need: instance costs, workload, output length, SLO and link."""

    local: InstanceCost
    remote: InstanceCost | None
    workload: LengthDistribution
    output_tokens: int
    tpot_s: float
    bandwidth_gbps: float

    @cached_property
    def decode_context_tokens(self) -> int:
        """Average context of a decoding sequence: mean input plus half the output."""
        return round(self.workload.mean() + self.output_tokens / 2)

    @cached_property
    def bs_max(self) -> int:
        """Largest decode batch one local instance sustains within the TPOT SLO (and HBM)."""
        return self.local.max_decode_batch(self.tpot_s, self.decode_context_tokens)

    def theta_pd_d(self, n_d: int) -> float:
        """Θ_pd-d = N_d · BS_max / (T_decode · L_out): decode throughput (req/s)."""
        return n_d * self.bs_max / (self.tpot_s * self.output_tokens)

    def theta_local_prefill(self, n_p: int, length: float) -> float:
        """Θ_pd-p = N_p / T_local(length): local prefill throughput (req/s)."""
        return n_p / self.local.prefill_time_s(round(length)) if n_p > 0 else 0.0

    def theta_remote_prefill(self, n_prfaas: int, length: float) -> tuple[float, float, float]:
        """(Θ_prfaas, compute bound, link bound): min(N / T_remote(l), B / S_kv(l)) in req/s."""
        if self.remote is None or n_prfaas <= 0:
            return 0.0, 0.0, 0.0
        compute = n_prfaas / self.remote.prefill_time_s(round(length))
        link = self.bandwidth_gbps * 1e9 / (8 * self.remote.kv_bytes(round(length)))
        return min(compute, link), compute, link

    @cached_property
    def threshold_grid(self) -> dict[str, np.ndarray]:
        """Per-threshold terms on the coarse grid (split-independent, so computed once per context)."""
        lo, hi = _threshold_bounds(self)
        ts = np.unique(np.append(np.arange(lo, hi, COARSE_STEP_TOKENS), hi))
        w = self.workload
        p = np.array([w.tail_prob(t) for t in ts])
        l_long = np.array([w.mean_above(t) for t in ts])
        l_short = np.array([w.mean_below(t) for t in ts])
        remote = self.remote or self.local
        return {
            "t": ts,
            "p": p,
            "t_remote": np.array([remote.prefill_time_s(round(x)) for x in l_long]),
            "kv_gbit_long": np.array([self.kv_gbit(x) for x in l_long]),
            "t_local": np.array([self.local.prefill_time_s(round(x)) for x in l_short]),
        }

    def kv_gbit(self, length: float) -> float:
        """Gbit of KVCache one request of ``length`` tokens ships across the link."""
        cost = self.remote or self.local
        return cost.kv_bytes(round(length)) * 8 / 1e9


@dataclass(frozen=True)
class PlanResult:
    """One topology at one configuration: the Θ terms, Λ_max, which term binds, and link egress."""

    kind: str
    lambda_max: float
    n_prfaas: int
    n_p: int
    n_d: int
    threshold_tokens: float | None
    offload_share: float
    theta_prfaas: float | None
    theta_pd_p: float | None
    theta_pd_d: float
    bs_max: int
    egress_gbps: float
    bottleneck: str
    l_long: float | None = None
    l_short: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _limits(theta_remote: float, p: float, theta_local: float, theta_d: float) -> dict[str, float]:
    """The three ceilings on the arrival rate; a stage that sees no traffic does not limit it."""
    return {
        "prfaas": theta_remote / p if p > 0 else math.inf,
        "pd_p": theta_local / (1 - p) if p < 1 else math.inf,
        "pd_d": theta_d,
    }


def _binding(limits: dict[str, float], *, link_bound: bool = False) -> str:
    """Names of the stages within 0.5% of the binding limit, joined by "+" (a tuned optimum usually
    balances two). The remote stage is called "link" when bandwidth, not compute, caps it."""
    lowest = min(limits.values())
    names = [k for k, v in limits.items() if v <= lowest * 1.005]
    return "+".join("link" if k == "prfaas" and link_bound else k for k in names)


def evaluate_prfaas(ctx: PlanContext, n_prfaas: int, n_p: int, n_d: int, threshold: float) -> PlanResult:
    """Λ_max of PrfaaS-PD at one (N_prfaas, N_p, N_d, t)."""
    w = ctx.workload
    p = w.tail_prob(threshold)
    l_long, l_short = w.mean_above(threshold), w.mean_below(threshold)
    theta_r, compute, link = ctx.theta_remote_prefill(n_prfaas, l_long)
    theta_p = ctx.theta_local_prefill(n_p, l_short)
    theta_d = ctx.theta_pd_d(n_d)
    limits = _limits(theta_r, p, theta_p, theta_d)
    lam = min(limits.values())
    bottleneck = _binding(limits, link_bound=link < compute)
    return PlanResult(
        kind="prfaas",
        lambda_max=lam,
        n_prfaas=n_prfaas,
        n_p=n_p,
        n_d=n_d,
        threshold_tokens=float(threshold),
        offload_share=p,
        theta_prfaas=theta_r,
        theta_pd_p=theta_p,
        theta_pd_d=theta_d,
        bs_max=ctx.bs_max,
        egress_gbps=lam * p * ctx.kv_gbit(l_long),
        bottleneck=bottleneck,
        l_long=l_long,
        l_short=l_short,
        extra={"theta_prfaas_compute": compute, "theta_prfaas_link": link},
    )


def evaluate_homogeneous(ctx: PlanContext, n_p: int, n_d: int) -> PlanResult:
    """Λ_max of homogeneous PD: every prefill local at E[L], KV moves inside the site (no link)."""
    mean = ctx.workload.mean()
    theta_p = ctx.theta_local_prefill(n_p, mean)
    theta_d = ctx.theta_pd_d(n_d)
    limits = {"pd_p": theta_p, "pd_d": theta_d}
    return PlanResult(
        kind="homogeneous",
        lambda_max=min(limits.values()),
        n_prfaas=0,
        n_p=n_p,
        n_d=n_d,
        threshold_tokens=None,
        offload_share=0.0,
        theta_prfaas=None,
        theta_pd_p=theta_p,
        theta_pd_d=theta_d,
        bs_max=ctx.bs_max,
        egress_gbps=0.0,
        bottleneck=_binding(limits),
        l_short=mean,
    )


def evaluate_naive(ctx: PlanContext, n_prfaas: int, n_d: int) -> PlanResult:
    """Λ_max of naive heterogeneous PD: every prefill remote at E[L], every KVCache crosses the link."""
    mean = ctx.workload.mean()
    theta_r, compute, link = ctx.theta_remote_prefill(n_prfaas, mean)
    theta_d = ctx.theta_pd_d(n_d)
    limits = {"prfaas": theta_r, "pd_d": theta_d}
    lam = min(limits.values())
    bottleneck = _binding(limits, link_bound=link < compute)
    return PlanResult(
        kind="naive",
        lambda_max=lam,
        n_prfaas=n_prfaas,
        n_p=0,
        n_d=n_d,
        threshold_tokens=None,
        offload_share=1.0,
        theta_prfaas=theta_r,
        theta_pd_p=None,
        theta_pd_d=theta_d,
        bs_max=ctx.bs_max,
        egress_gbps=lam * ctx.kv_gbit(mean),
        bottleneck=bottleneck,
        l_long=mean,
        extra={"theta_prfaas_compute": compute, "theta_prfaas_link": link},
    )


def _threshold_bounds(ctx: PlanContext) -> tuple[float, float]:
    """Thresholds worth trying: from just below the shortest request (all offloaded) to the longest."""
    w = ctx.workload
    if hasattr(w, "values"):  # empirical lengths
        lo, hi = float(w.values[0]), float(w.values[-1])
    else:
        lo, hi = float(getattr(w, "lo", 0) or 0), float(getattr(w, "hi", 0) or 0)
    if hi <= lo:  # e.g. one fixed length: only "all" or "none" can differ
        lo, hi = w.mean(), w.mean()
    return lo - 1, hi


def _lambda_on_grid(ctx: PlanContext, n_prfaas: int, n_p: int, n_d: int) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds, Λ_max) on the coarse grid, vectorised from the per-threshold terms cached on ctx."""
    g = ctx.threshold_grid
    with np.errstate(divide="ignore", invalid="ignore"):
        theta_r = np.minimum(n_prfaas / g["t_remote"], ctx.bandwidth_gbps / g["kv_gbit_long"])
        theta_r = theta_r if n_prfaas > 0 and ctx.remote is not None else np.zeros_like(g["p"])
        prfaas = np.where(g["p"] > 0, theta_r / g["p"], np.inf)
        pd_p = np.where(g["p"] < 1, (n_p / g["t_local"]) / (1 - g["p"]), np.inf)
    return g["t"], np.minimum(np.minimum(prfaas, pd_p), ctx.theta_pd_d(n_d))


def best_threshold(ctx: PlanContext, n_prfaas: int, n_p: int, n_d: int) -> PlanResult:
    """The t that maximises PrfaaS Λ_max for a fixed split: a grid every 100 tokens, then refined to
    10 and to 1 token around the best point. Ties go to the larger t (less traffic on the link)."""
    lo, hi = _threshold_bounds(ctx)
    ts, lam = _lambda_on_grid(ctx, n_prfaas, n_p, n_d)
    best = evaluate_prfaas(ctx, n_prfaas, n_p, n_d, float(ts[len(lam) - 1 - int(np.argmax(lam[::-1]))]))
    step = COARSE_STEP_TOKENS
    while step > FINE_STEP_TOKENS:
        t0, step = best.threshold_tokens, step // 10
        window = np.arange(max(lo, t0 - 10 * step), min(hi, t0 + 10 * step) + step, step)
        for t in window:
            r = evaluate_prfaas(ctx, n_prfaas, n_p, n_d, float(t))
            if r.lambda_max >= best.lambda_max:
                best = r
    return best


def best_prfaas(
    ctx: PlanContext,
    local_instances: int,
    n_prfaas: int,
    *,
    n_p: int | None = None,
    threshold: float | None = None,
) -> PlanResult:
    """Best PrfaaS configuration: search N_p (N_d = local − N_p) and t, unless either is fixed."""
    splits = [n_p] if n_p is not None else range(0, local_instances)
    best: PlanResult | None = None
    for np_ in splits:
        n_d = local_instances - np_
        if threshold is None:
            r = best_threshold(ctx, n_prfaas, np_, n_d)
        else:
            r = evaluate_prfaas(ctx, n_prfaas, np_, n_d, threshold)
        if best is None or r.lambda_max > best.lambda_max:
            best = r
    assert best is not None
    return best


def best_homogeneous(ctx: PlanContext, local_instances: int, *, n_p: int | None = None) -> PlanResult:
    """Best homogeneous split N_p + N_d = local_instances (or the fixed N_p)."""
    splits = [n_p] if n_p is not None else range(1, local_instances)
    return max(
        (evaluate_homogeneous(ctx, k, local_instances - k) for k in splits), key=lambda r: r.lambda_max
    )


def evaluate_topology(ctx: PlanContext, topology: TopologySpec) -> PlanResult:
    """Best result for one topology, keeping whatever the scenario fixed (split, threshold)."""
    if topology.kind == "homogeneous":
        return best_homogeneous(ctx, topology.local_instances, n_p=topology.n_p)
    if topology.kind == "naive":
        return evaluate_naive(ctx, topology.n_prfaas, topology.n_d)
    if topology.kind == "prfaas":
        return best_prfaas(
            ctx,
            topology.local_instances,
            topology.n_prfaas,
            n_p=topology.n_p,
            threshold=topology.threshold_tokens,
        )
    raise ValueError(f"the analytic model has no equations for a {topology.kind} topology")
