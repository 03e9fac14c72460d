"""What ``plan`` reports: every topology of a deployment at its best configuration, the ratios between
them, and sweeps over link bandwidth, threshold and prefill/decode split (pandas DataFrames)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from harness.errors import ScenarioError
from harness.model.deployment import Deployment, TopologySpec, with_overrides
from harness.model.planner import (
    PlanResult,
    best_threshold,
    evaluate_prfaas,
    evaluate_topology,
)

# Λ_max versus link bandwidth: 1 to 400 Gbps, denser where PrfaaS starts to be link-bound.
DEFAULT_BANDWIDTHS_GBPS = (1, 2, 3, 5, 7.5, 10, 12.5, 15, 20, 25, 30, 40, 50, 75, 100, 150, 200, 300, 400)


@dataclass(frozen=True)
class TopologyPlan:
    """One topology's best configuration and what it costs."""

    name: str
    result: PlanResult
    cost_per_hour: float

    @property
    def requests_per_dollar(self) -> float:
        return (
            self.result.lambda_max * 3600.0 / self.cost_per_hour if self.cost_per_hour > 0 else float("nan")
        )

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            **self.result.as_dict(),
            "cost_per_hour": self.cost_per_hour,
            "requests_per_dollar": self.requests_per_dollar,
        }


@dataclass(frozen=True)
class PlanReport:
    """``plan``'s answer for one deployment. ``topologies`` is keyed by the scenario's topology names."""

    deployment: Deployment
    topologies: dict[str, TopologyPlan]
    skipped: tuple[str, ...] = ()

    def first(self, kind: str) -> TopologyPlan | None:
        return next((tp for tp in self.topologies.values() if tp.result.kind == kind), None)

    @property
    def ratios(self) -> dict[str, float]:
        """Λ_max ratios between the first topology of each kind, raw and per GPU dollar."""
        firsts = [tp for tp in self.topologies.values() if self.first(tp.result.kind) is tp]
        raw = kind_ratios({tp.result.kind: tp.result.lambda_max for tp in firsts})
        per_cost = kind_ratios({tp.result.kind: tp.requests_per_dollar for tp in firsts})
        out: dict[str, float] = {}
        for name, gain in raw.items():  # a per-cost ratio with an unpriced side is NaN, as before
            out |= {name: gain, f"{name}_per_cost": per_cost.get(name, math.nan)}
        return out

    def as_dict(self) -> dict:
        d = self.deployment
        return {
            "scenario": d.name,
            "model": d.model.name,
            "hardware": {"local": d.local.name, "remote": d.remote.name if d.remote else None},
            "gpus_per_instance": d.gpus_per_instance,
            "link_gbps": d.link.bandwidth_gbps if d.link else None,
            "workload": d.describe_workload(),
            "tpot_ms": d.slo.tpot_ms,
            "topologies": {name: tp.as_dict() for name, tp in self.topologies.items()},
            "ratios": self.ratios,
            "skipped": list(self.skipped),
        }


GAIN_PAIRS = (("prfaas", "homogeneous"), ("naive", "homogeneous"), ("prfaas", "naive"))


def kind_ratios(by_kind: Mapping[str, float]) -> dict[str, float]:
    """``{"A_vs_B": by_kind[A] / by_kind[B]}`` for each pair of ``GAIN_PAIRS`` whose two kinds are
    given, B's value positive (``by_kind``: one figure per topology kind, e.g. Λ_max)."""
    return {
        f"{a}_vs_{b}": by_kind[a] / by_kind[b]
        for a, b in GAIN_PAIRS
        if a in by_kind and by_kind.get(b, 0) > 0
    }


def plan_deployment(deployment: Deployment) -> PlanReport:
    """Every topology at its best configuration (colocated topologies are outside the paper's model)."""
    ctx = deployment.context()
    plans, skipped = {}, []
    for name, tp in deployment.topologies.items():
        if tp.kind == "colocated":
            skipped.append(name)
            continue
        plans[name] = TopologyPlan(name, evaluate_topology(ctx, tp), deployment.cost_per_hour(tp))
    return PlanReport(deployment, plans, tuple(skipped))


# ---------------------------------------------------------------------------------------------- sweeps


def sweep_bandwidth(deployment: Deployment, gbps_values=DEFAULT_BANDWIDTHS_GBPS) -> pd.DataFrame:
    """Λ_max of every topology versus link bandwidth, re-optimising split and threshold at each point.

    One row per (bandwidth, topology): model, bandwidth_gbps, topology, kind, lambda_max,
    threshold_tokens, n_prfaas, n_p, n_d, offload_share, egress_gbps, link_utilization, bottleneck,
    vs_homogeneous (Λ_max over the homogeneous topology's at the same point).
    """
    rows = []
    for gbps in gbps_values:
        report = plan_deployment(with_overrides(deployment, bandwidth_gbps=float(gbps)))
        homog = report.first("homogeneous")
        for name, tp in report.topologies.items():
            r = tp.result
            rows.append(
                {
                    "model": deployment.model.name,
                    "bandwidth_gbps": float(gbps),
                    "topology": name,
                    "kind": r.kind,
                    "lambda_max": r.lambda_max,
                    "threshold_tokens": r.threshold_tokens,
                    "n_prfaas": r.n_prfaas,
                    "n_p": r.n_p,
                    "n_d": r.n_d,
                    "offload_share": r.offload_share,
                    "egress_gbps": r.egress_gbps,
                    "link_utilization": r.egress_gbps / gbps if r.kind != "homogeneous" else 0.0,
                    "bottleneck": r.bottleneck,
                    "vs_homogeneous": r.lambda_max / homog.result.lambda_max if homog else np.nan,
                }
            )
    return pd.DataFrame(rows)


def _prfaas_topology(deployment: Deployment, topology: str | None) -> TopologySpec:
    tps = deployment.topologies
    if topology is not None:
        tp = tps.get(topology)
    else:
        tp = next((t for t in tps.values() if t.kind == "prfaas"), None)
    if tp is None or tp.kind != "prfaas":
        raise ScenarioError(
            f"this sweep needs a prfaas topology; the scenario has {', '.join(tps) or 'none'}"
        )
    return tp


def _row(r: PlanResult) -> dict:
    return {
        "threshold_tokens": r.threshold_tokens,
        "offload_share": r.offload_share,
        "l_long": r.l_long,
        "l_short": r.l_short,
        "n_prfaas": r.n_prfaas,
        "n_p": r.n_p,
        "n_d": r.n_d,
        "theta_prfaas": r.theta_prfaas,
        "theta_pd_p": r.theta_pd_p,
        "theta_pd_d": r.theta_pd_d,
        "lambda_max": r.lambda_max,
        "egress_gbps": r.egress_gbps,
        "bottleneck": r.bottleneck,
    }


def sweep_threshold(
    deployment: Deployment, thresholds=None, *, topology: str | None = None, n_p: int | None = None
) -> pd.DataFrame:
    """PrfaaS Λ_max versus the routing threshold t (the paper's Fig. 5b), split held at the optimum.

    ``n_p`` fixes the split (default: the topology's own, else the planner's best). Thresholds default
    to every 2048 tokens over the workload's range. Columns: threshold_tokens, offload_share, l_long,
    l_short, n_prfaas, n_p, n_d, theta_prfaas, theta_pd_p, theta_pd_d, lambda_max, egress_gbps, bottleneck.
    """
    tp = _prfaas_topology(deployment, topology)
    ctx = deployment.context()
    if n_p is None:
        n_p = tp.n_p if tp.n_p is not None else evaluate_topology(ctx, tp).n_p
    n_d = tp.local_instances - n_p
    if thresholds is None:
        hi = float(ctx.threshold_grid["t"][-1])
        thresholds = np.arange(2048, hi + 1, 2048)
    return pd.DataFrame([_row(evaluate_prfaas(ctx, tp.n_prfaas, n_p, n_d, float(t))) for t in thresholds])


def sweep_split(deployment: Deployment) -> pd.DataFrame:
    """Λ_max versus the local prefill/decode split N_p/N_d (the paper's Fig. 5a), for each PrfaaS and
    homogeneous topology; PrfaaS re-optimises t at each split (unless the scenario fixes it).

    Columns: topology, kind, n_p, n_d, and those of ``sweep_threshold``.
    """
    ctx = deployment.context()
    rows = []
    for name, tp in deployment.topologies.items():
        if tp.kind not in ("prfaas", "homogeneous"):
            continue
        first = 0 if tp.kind == "prfaas" else 1
        for n_p in range(first, tp.local_instances):
            fixed = replace(tp, n_p=n_p, n_d=tp.local_instances - n_p)
            if tp.kind == "prfaas" and tp.threshold_tokens is None:
                r = best_threshold(ctx, tp.n_prfaas, n_p, tp.local_instances - n_p)
            else:
                r = evaluate_topology(ctx, fixed)
            rows.append({"topology": name, "kind": tp.kind, **_row(r)})
    return pd.DataFrame(rows)


def standard_sweeps(deployment: Deployment) -> dict[str, pd.DataFrame]:
    """The sweeps a bench writes and the dashboard draws, by kind: ``split``, ``bandwidth`` and, when the
    deployment has a prfaas topology, ``threshold`` (each with its defaults)."""
    sweeps = {"split": sweep_split(deployment), "bandwidth": sweep_bandwidth(deployment)}
    if any(t.kind == "prfaas" for t in deployment.topologies.values()):
        sweeps["threshold"] = sweep_threshold(deployment)
    return sweeps


def bandwidth_breakpoints(
    deployment: Deployment, *, lo_gbps: float = 0.01, hi_gbps: float = 10_000.0
) -> dict:
    """Where PrfaaS starts and stops depending on the link (Λ_max is non-decreasing in bandwidth).

    prfaas_breakeven_gbps    lowest bandwidth at which PrfaaS matches homogeneous PD's Λ_max
    naive_breakeven_gbps     the same for naive heterogeneous PD
    prfaas_breakeven_per_cost_gbps  the same as prfaas_breakeven_gbps per GPU dollar (hardware prices)
    prfaas_saturation_gbps   lowest bandwidth beyond which more bandwidth adds < 0.1% to PrfaaS Λ_max
    Each is None when the scenario lacks the topologies, or NaN when it is outside [lo_gbps, hi_gbps].
    """
    tops = deployment.topologies.values()
    homog = next((t for t in tops if t.kind == "homogeneous"), None)
    ref = evaluate_topology(deployment.context(), homog).lambda_max if homog else None

    def first(kind: str) -> TopologySpec:
        return next(t for t in tops if t.kind == kind)

    def lam(kind: str, gbps: float) -> float:
        tp = first(kind)
        return evaluate_topology(with_overrides(deployment, bandwidth_gbps=gbps).context(), tp).lambda_max

    def lowest(pred) -> float:
        a, b = np.log(lo_gbps), np.log(hi_gbps)
        if pred(lo_gbps):
            return lo_gbps
        if not pred(hi_gbps):
            return float("nan")
        for _ in range(25):  # bisection on log-bandwidth: ~1e-6 relative
            mid = (a + b) / 2
            a, b = (a, mid) if pred(float(np.exp(mid))) else (mid, b)
        return float(np.exp(b))

    kinds = {t.kind for t in tops}
    out: dict[str, float | None] = dict.fromkeys(
        (
            "prfaas_breakeven_gbps",
            "naive_breakeven_gbps",
            "prfaas_breakeven_per_cost_gbps",
            "prfaas_saturation_gbps",
        )
    )
    for kind in ("prfaas", "naive"):
        if kind in kinds and ref is not None:
            out[f"{kind}_breakeven_gbps"] = lowest(lambda g, k=kind: lam(k, g) >= ref)
    if "prfaas" in kinds and ref is not None and deployment.cost_per_hour(homog) > 0:
        scale = deployment.cost_per_hour(first("prfaas")) / deployment.cost_per_hour(homog)
        out["prfaas_breakeven_per_cost_gbps"] = lowest(lambda g: lam("prfaas", g) >= ref * scale)
    if "prfaas" in kinds:
        ceiling = lam("prfaas", hi_gbps)
        out["prfaas_saturation_gbps"] = lowest(lambda g: lam("prfaas", g) >= ceiling * 0.999)
    return out
