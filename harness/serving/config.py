"""The ``[simulate]`` table and the setup a simulation needs: deployment, resolved topologies, stack.

[simulate]
requests = 2000              synthetic requests per run (and per --find-max-rate probe)
seed = 0
intra_site_gbps = 400        each site's RDMA fabric for PD-P -> PD-D KV (one shared fluid link)
cache_capacity_gib = 1024    prefix cache per site ("unbounded", or 0 to disable)
prfaas_cache = "local"       "local": a site's own prefix decides; "global": best prefix anywhere
prefill_batch_tokens = 0     batch queued prefills up to this many uncached tokens (0: one at a time)
bandwidth_aware = false      re-tune the PrfaaS threshold from link utilisation and queues
decode_batch_max = 20        default: the planner's BS_max (TPOT SLO at the mean decode context)
sample_interval_s = 1.0      time-series grid (virtual seconds)
ttft_slo_s = 30.0            --find-max-rate's TTFT bound when [slo] has no ttft_s
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.errors import ScenarioError
from harness.model.deployment import Deployment, TopologySpec, deployment_from_scenario, resolve_topologies
from harness.model.study import evaluate_topology
from harness.scenario import Scenario
from harness.serving.build import StackSpec, TopologyPlan
from harness.serving.router import BandwidthAware
from harness.serving.transport import LinkSpec

_FIELDS = {
    "requests",
    "seed",
    "intra_site_gbps",
    "cache_capacity_gib",
    "prfaas_cache",
    "prefill_batch_tokens",
    "bandwidth_aware",
    "decode_batch_max",
    "sample_interval_s",
    "ttft_slo_s",
}


@dataclass(frozen=True)
class SimulateSpec:
    """Parsed ``[simulate]`` options (see the module docstring for meanings and defaults)."""

    requests: int = 2000
    seed: int = 0
    intra_site_gbps: float = 400.0
    cache_capacity_gib: float | None = 1024.0  # None = unbounded
    prfaas_cache: str = "local"
    prefill_batch_tokens: int = 0
    bandwidth_aware: bool = False
    decode_batch_max: int | None = None
    sample_interval_s: float = 1.0
    ttft_slo_s: float = 30.0


def _num(
    table: Mapping[str, Any],
    key: str,
    where: str,
    default: float,
    *,
    integer: bool = False,
    zero_ok: bool = False,
):
    value = table.get(key, default)
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if (
        isinstance(value, bool)
        or not ok_type
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not zero_ok)
    ):
        kind = "an integer" if integer else "a number"
        raise ScenarioError(
            f"must be {kind} {'>= 0' if zero_ok else '> 0'}, got {value!r}", where=f"{where}: {key}"
        )
    return value


def simulate_spec(scenario: Scenario) -> SimulateSpec:
    """Parse and validate ``[simulate]`` (absent: all defaults)."""
    table = scenario.section("simulate")
    where = scenario.where("simulate")
    unknown = sorted(set(table) - _FIELDS)
    if unknown:
        raise ScenarioError(
            f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_FIELDS))}", where=where
        )
    d = SimulateSpec()
    cap = table.get("cache_capacity_gib", d.cache_capacity_gib)
    if cap != "unbounded":
        cap = _num(table, "cache_capacity_gib", where, d.cache_capacity_gib, zero_ok=True)
    mode = table.get("prfaas_cache", d.prfaas_cache)
    if mode not in ("local", "global"):
        raise ScenarioError(f"must be 'local' or 'global', got {mode!r}", where=f"{where}: prfaas_cache")
    ba = table.get("bandwidth_aware", d.bandwidth_aware)
    if not isinstance(ba, bool):
        raise ScenarioError(f"must be true or false, got {ba!r}", where=f"{where}: bandwidth_aware")
    bs = table.get("decode_batch_max")
    return SimulateSpec(
        requests=_num(table, "requests", where, d.requests, integer=True),
        seed=_num(table, "seed", where, d.seed, integer=True, zero_ok=True),
        intra_site_gbps=_num(table, "intra_site_gbps", where, d.intra_site_gbps),
        cache_capacity_gib=None if cap == "unbounded" else float(cap),
        prfaas_cache=mode,
        prefill_batch_tokens=_num(table, "prefill_batch_tokens", where, 0, integer=True, zero_ok=True),
        bandwidth_aware=ba,
        decode_batch_max=None if bs is None else _num(table, "decode_batch_max", where, 1, integer=True),
        sample_interval_s=_num(table, "sample_interval_s", where, d.sample_interval_s),
        ttft_slo_s=_num(table, "ttft_slo_s", where, d.ttft_slo_s),
    )


@dataclass(frozen=True)
class SimSetup:
    """A scenario made concrete for simulation."""

    scenario: Scenario
    deployment: Deployment
    spec: SimulateSpec
    stack: StackSpec
    topologies: dict[str, TopologyPlan] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """The resolved configuration, for meta.json."""
        return {
            "scenario": str(self.scenario.path),
            "scenario_name": self.scenario.name,
            "model": self.deployment.model.name,
            "hardware": {
                "local": self.deployment.local.name,
                "remote": self.deployment.remote.name if self.deployment.remote else None,
                "gpus_per_instance": self.deployment.gpus_per_instance,
            },
            "link": vars(self.stack.link),
            "intra_site": vars(self.stack.intra_site),
            "decode_batch_max": self.stack.decode_batch_max,
            "cache_capacity_bytes": self.stack.cache_capacity_bytes,
            "prfaas_cache": self.stack.prfaas_cache,
            "prefill_batch_tokens": self.stack.prefill_batch_tokens,
            "bandwidth_aware": self.stack.bandwidth_aware is not None,
            "topologies": {name: vars(t) for name, t in self.topologies.items()},
        }


def _plan(deployment: Deployment, spec: TopologySpec) -> TopologyPlan:
    where = f"[topologies.{spec.name}]"
    if spec.kind == "colocated":
        return TopologyPlan(spec.name, spec.kind, n_p=0, n_d=spec.local_instances)
    planner = evaluate_topology(deployment.context(), spec).lambda_max
    n_p, n_d = int(spec.n_p or 0), int(spec.n_d or 0)
    if n_d < 1:
        raise ScenarioError("needs at least one decode instance (n_d >= 1)", where=where)
    if spec.kind in ("homogeneous", "prfaas") and n_p < 1:
        raise ScenarioError(
            f"a {spec.kind} topology needs at least one local prefill instance (n_p >= 1)", where=where
        )
    if spec.kind in ("naive", "prfaas") and not spec.n_prfaas:
        raise ScenarioError("needs at least one remote prefill instance", where=where)
    if spec.threshold_tokens is not None and spec.threshold_tokens < 0:
        raise ScenarioError(f"threshold_tokens must be >= 0, got {spec.threshold_tokens}", where=where)
    return TopologyPlan(
        spec.name,
        spec.kind,
        n_p,
        n_d,
        int(spec.n_prfaas or 0),
        spec.threshold_tokens,
        planner_lambda_max=planner,
    )


def prepare(scenario: Scenario, *, topologies: list[str] | None = None) -> SimSetup:
    """Deployment + ``[simulate]`` + the topologies to run (all, or those named), resolved by the planner."""
    deployment = deployment_from_scenario(scenario)
    spec = simulate_spec(scenario)
    names = list(deployment.topologies)
    if topologies:
        unknown = [t for t in topologies if t not in deployment.topologies]
        if unknown:
            raise ScenarioError(f"unknown topology {unknown[0]!r}; the scenario defines {', '.join(names)}")
        names = topologies
    resolved = resolve_topologies(deployment)
    plans = {name: _plan(deployment, resolved[name]) for name in names}
    link = deployment.link
    bs = spec.decode_batch_max or deployment.context().bs_max
    stack = StackSpec(
        local=deployment.local_cost,
        remote=deployment.remote_cost,
        link=LinkSpec(link.bandwidth_gbps, link.delay_ms) if link else LinkSpec(spec.intra_site_gbps),
        intra_site=LinkSpec(spec.intra_site_gbps, 0.0),
        decode_batch_max=bs,
        cache_capacity_bytes=None if spec.cache_capacity_gib is None else spec.cache_capacity_gib * 2**30,
        prfaas_cache=spec.prfaas_cache,
        prefill_batch_tokens=spec.prefill_batch_tokens,
        bandwidth_aware=BandwidthAware() if spec.bandwidth_aware else None,
    )
    return SimSetup(scenario, deployment, spec, stack, plans)
