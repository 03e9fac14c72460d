"""The PrfaaS paper's analytic throughput model (§3.4) and its grid search: pure functions.

With L the length a request still has to prefill (after the prefix cache, for a trace; see
``prefills``), p = P(L > t), l_long = E[L | L > t], l_short = E[L | L <= t]::

    Θ_prfaas = min(N_prfaas / T_remote(l_long), B_out / S_kv(prompt_long))
    Θ_pd-p   = N_p / T_local(l_short)
    Θ_pd-d   = N_d · BS_max / (T_decode · L_out)
    Λ_max    = min(Θ_prfaas / p, Θ_pd-p / (1 − p), Θ_pd-d)

T(l) is the class's prefill time (``PrefillClass.prefill_time_s``: at its mean length for a distribution,
the mean over its requests for a trace); S_kv is the KV of the whole prompt (the decode instance needs
all of it, cached prefix included), and BS_max is taken at the whole prompt's mean plus L_out/2.
Homogeneous PD is the same with p = 0 (every prefill local); naive heterogeneous is p = 1 (every
prefill remote, no local prefill instances).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from harness.model.cost import InstanceCost
from harness.model.prefills import LengthPrefills, PrefillClass, Prefills, Split
from harness.traces.distributions import LengthDistribution

if TYPE_CHECKING:
    from harness.model.deployment import TopologySpec

# The threshold search refines around the best coarse grid point down to this step (tokens), in at most
# this many rounds of (search on estimates, evaluate the winner exactly).
FINE_STEP_TOKENS = 1
SETTLE_ROUNDS = 8


@dataclass(frozen=True)
class PlanContext:
    """Everything the equations need: instance costs, workload, output length, SLO and link.

    ``workload`` is a length distribution (priced as the paper does, nothing cached) or ``Prefills``.
    """

    local: InstanceCost
    remote: InstanceCost | None
    workload: LengthDistribution | Prefills
    output_tokens: int
    tpot_s: float
    bandwidth_gbps: float

    @cached_property
    def prefills(self) -> Prefills:
        w = self.workload
        return LengthPrefills(w) if isinstance(w, LengthDistribution) else w

    @cached_property
    def decode_context_tokens(self) -> int:
        """Average context of a decoding sequence: mean whole prompt plus half the output."""
        return round(self.prefills.whole().prompt + self.output_tokens / 2)

    @cached_property
    def bs_max(self) -> int:
        """Largest decode batch one local instance sustains within the TPOT SLO (and HBM)."""
        return self.local.max_decode_batch(self.tpot_s, self.decode_context_tokens)

    def theta_pd_d(self, n_d: int) -> float:
        """Θ_pd-d = N_d · BS_max / (T_decode · L_out): decode throughput (req/s)."""
        return n_d * self.bs_max / (self.tpot_s * self.output_tokens)

    def theta_local_prefill(self, n_p: int, work: PrefillClass) -> float:
        """Θ_pd-p = N_p / T_local(l): local prefill throughput (req/s)."""
        return n_p / work.prefill_time_s(self.local) if n_p > 0 else 0.0

    def theta_remote_prefill(self, n_prfaas: int, work: PrefillClass) -> tuple[float, float, float]:
        """(Θ_prfaas, compute bound, link bound): min(N / T_remote(l), B / S_kv(prompt)) in req/s."""
        if self.remote is None or n_prfaas <= 0:
            return 0.0, 0.0, 0.0
        compute = n_prfaas / work.prefill_time_s(self.remote)
        link = self.bandwidth_gbps / self.kv_gbit(work.prompt)
        return min(compute, link), compute, link

    @cached_property
    def threshold_grid(self) -> dict[str, np.ndarray]:
        """Per-threshold terms on the coarse grid (split-independent, so computed once per context)."""
        ts = self.prefills.thresholds()
        splits = [self.prefills.split(t) for t in ts]
        remote = self.remote or self.local
        return {
            "t": ts,
            "p": np.array([long.share for _, long in splits]),
            "t_remote": np.array([long.prefill_time_s(remote) for _, long in splits]),
            "kv_gbit_long": np.array([self.kv_gbit(long.prompt) for _, long in splits]),
            "t_local": np.array([short.prefill_time_s(self.local) for short, _ in splits]),
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
    token_hit_ratio: float | None = None  # prefix-cache hits at this configuration (None: no cache modelled)
    block_hit_ratio: float | None = None
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


def _reuse(ctx: PlanContext, threshold: float | None) -> dict[str, float | None]:
    found = ctx.prefills.reuse(threshold)
    if found is None:
        return {"token_hit_ratio": None, "block_hit_ratio": None}
    return {"token_hit_ratio": found.token_hit_ratio, "block_hit_ratio": found.block_hit_ratio}


def evaluate_prfaas(
    ctx: PlanContext, n_prfaas: int, n_p: int, n_d: int, threshold: float, *, estimate: bool = False
) -> PlanResult:
    """Λ_max of PrfaaS-PD at one (N_prfaas, N_p, N_d, t); ``estimate`` uses ``Prefills.estimate`` (a
    search's cheap stand-in, with no cache statistics) instead of the exact split."""
    split: Split = (ctx.prefills.estimate if estimate else ctx.prefills.split)(threshold)
    short, long = split
    p = long.share
    theta_r, compute, link = ctx.theta_remote_prefill(n_prfaas, long)
    theta_p = ctx.theta_local_prefill(n_p, short)
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
        egress_gbps=lam * p * ctx.kv_gbit(long.prompt),
        bottleneck=bottleneck,
        l_long=long.uncached,
        l_short=short.uncached,
        **(_reuse(ctx, threshold) if not estimate else {}),
        extra={
            "theta_prfaas_compute": compute,
            "theta_prfaas_link": link,
            "cached_long": long.cached,
            "cached_short": short.cached,
            "prompt_long": long.prompt,
        },
    )


def evaluate_homogeneous(ctx: PlanContext, n_p: int, n_d: int) -> PlanResult:
    """Λ_max of homogeneous PD: every prefill local, KV moves inside the site (no link)."""
    whole = ctx.prefills.whole()
    theta_p = ctx.theta_local_prefill(n_p, whole)
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
        l_short=whole.uncached,
        **_reuse(ctx, None),
        extra={"cached_short": whole.cached},
    )


def evaluate_naive(ctx: PlanContext, n_prfaas: int, n_d: int) -> PlanResult:
    """Λ_max of naive heterogeneous PD: every prefill remote, every KVCache crosses the link. The remote
    site's cache sees every request, as the local one does under homogeneous PD."""
    whole = ctx.prefills.whole()
    theta_r, compute, link = ctx.theta_remote_prefill(n_prfaas, whole)
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
        egress_gbps=lam * ctx.kv_gbit(whole.prompt),
        bottleneck=bottleneck,
        l_long=whole.uncached,
        **_reuse(ctx, None),
        extra={
            "theta_prfaas_compute": compute,
            "theta_prfaas_link": link,
            "cached_long": whole.cached,
            "prompt_long": whole.prompt,
        },
    )


def _lambda_on_grid(ctx: PlanContext, n_prfaas: int, n_p: int, n_d: int) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds, Λ_max) on the coarse grid, vectorised from the per-threshold terms cached on ctx."""
    g = ctx.threshold_grid
    with np.errstate(divide="ignore", invalid="ignore"):
        theta_r = np.minimum(n_prfaas / g["t_remote"], ctx.bandwidth_gbps / g["kv_gbit_long"])
        theta_r = theta_r if n_prfaas > 0 and ctx.remote is not None else np.zeros_like(g["p"])
        prfaas = np.where(g["p"] > 0, theta_r / g["p"], np.inf)
        pd_p = np.where(g["p"] < 1, (n_p / g["t_local"]) / (1 - g["p"]), np.inf)
    return g["t"], np.minimum(np.minimum(prfaas, pd_p), ctx.theta_pd_d(n_d))


def _search_threshold(ctx: PlanContext, n_prfaas: int, n_p: int, n_d: int) -> tuple[PlanResult, PlanResult]:
    """(the refined best, the best coarse grid point) for a fixed split. The refinement scans windows
    around the best point, out to its neighbours on the grid (past a run of equal points: a flat top
    can hide a peak beside it), with steps a tenth of that reach, then of that, down to 1 token, on
    ``Prefills.estimate``; ties go to the larger t (less traffic on the link)."""
    ts, lam = _lambda_on_grid(ctx, n_prfaas, n_p, n_d)
    k = len(lam) - 1 - int(np.argmax(lam[::-1]))
    left = k
    while left > 0 and lam[left - 1] >= lam[k]:
        left -= 1
    node = best = evaluate_prfaas(ctx, n_prfaas, n_p, n_d, float(ts[k]))
    lo, hi = float(ts[0]), float(ts[-1])
    step = max(ts[k] - ts[max(left - 1, 0)], ts[min(k + 1, len(ts) - 1)] - ts[k])
    while step > FINE_STEP_TOKENS:
        t0, step = best.threshold_tokens, max(FINE_STEP_TOKENS, step // 10)
        window = np.arange(max(lo, t0 - 10 * step), min(hi, t0 + 10 * step) + step, step)
        for t in window:
            r = evaluate_prfaas(ctx, n_prfaas, n_p, n_d, float(t), estimate=True)
            if r.lambda_max >= best.lambda_max:
                best = r
    return best, node


def _optimise(ctx: PlanContext, n_prfaas: int, local_instances: int, splits: Iterable[int]) -> PlanResult:
    """Best (N_p, t) over ``splits``: each round searches every split on estimates and evaluates the
    winner exactly. An exact evaluation sharpens later estimates around it (``Prefills.estimate``
    interpolates between every exact split known), so rounds stop once the winner's estimate is exact
    (at once for a distribution, whose estimates are exact). Returns the best exact result seen."""
    found: PlanResult | None = None
    for _ in range(SETTLE_ROUNDS):
        searched = [_search_threshold(ctx, n_prfaas, k, local_instances - k) for k in splits]
        best, node = max(searched, key=lambda r: r[0].lambda_max)  # ties: the first (fewest N_p)
        exact = (
            node
            if best is node
            else evaluate_prfaas(ctx, n_prfaas, best.n_p, best.n_d, best.threshold_tokens)
        )
        for r in (node, exact):
            if found is None or (r.lambda_max, r.threshold_tokens) > (
                found.lambda_max,
                found.threshold_tokens,
            ):
                found = r
        if exact.lambda_max >= best.lambda_max * (1 - 1e-12):
            break
    assert found is not None
    return found


def best_threshold(ctx: PlanContext, n_prfaas: int, n_p: int, n_d: int) -> PlanResult:
    """The t that maximises PrfaaS Λ_max for a fixed split: the coarse grid of ``Prefills.thresholds``
    (every 100 tokens for a distribution), then refined around the best point to 1 token."""
    return _optimise(ctx, n_prfaas, n_p + n_d, [n_p])


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
    if threshold is None:
        return _optimise(ctx, n_prfaas, local_instances, splits)
    results = [evaluate_prfaas(ctx, n_prfaas, k, local_instances - k, threshold) for k in splits]
    return max(results, key=lambda r: r.lambda_max)


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
