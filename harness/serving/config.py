"""The setup a simulation needs: deployment, ``[simulate]`` options, resolved topologies, stack.

``[simulate]`` itself is typed in ``harness/config/runs.py`` (``SimulateSpec``); the whole scenario
was validated when it was loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.config.links import ModelledLink
from harness.config.runs import SimulateSpec
from harness.errors import ScenarioError
from harness.model.deployment import Deployment, TopologySpec, deployment_from_scenario, resolve_topologies
from harness.model.planner import PlanResult
from harness.model.study import evaluate_topology
from harness.scenario import Scenario
from harness.serving.build import StackSpec, TopologyPlan
from harness.serving.linkevents import events_meta, fluid_states
from harness.serving.router import BandwidthAware
from harness.traces.context import ContextPolicy


@dataclass(frozen=True)
class SimSetup:
    """A scenario made concrete for simulation."""

    scenario: Scenario
    deployment: Deployment
    spec: SimulateSpec
    stack: StackSpec
    topologies: dict[str, TopologyPlan] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # knobs the command overrides or ignores (Scenario.warnings)
    planner: dict[str, PlanResult] = field(default_factory=dict)  # the analytic plan of each topology

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
            "link": asdict(self.stack.link),
            "intra_site": asdict(self.stack.intra_site),
            "decode_batch_max": self.stack.decode_batch_max,
            "cache_capacity_bytes": self.stack.cache_capacity_bytes,
            "prfaas_cache": self.stack.prfaas_cache,
            "prefix_cache": "hybrid" if self.stack.hybrid_cache else "blocks",
            "prefill_batch_tokens": self.stack.prefill_batch_tokens,
            "bandwidth_aware": self.stack.bandwidth_aware is not None,
            "topologies": {name: vars(t) for name, t in self.topologies.items()},
            "planner": {
                "workload": self.deployment.describe_workload(),
                "topologies": {name: r.as_dict() for name, r in self.planner.items()},
            },
            "link_events": events_meta(
                self.scenario,
                zero="first-request",
                applied=[asdict(s) for s in self.stack.link_events] if self.stack.link_events else None,
            ),
            "config_warnings": list(self.warnings),
        }


def _plan(spec: TopologySpec, planner: PlanResult | None, where: str) -> TopologyPlan:
    if planner is None:  # colocated: outside the analytic model
        return TopologyPlan(spec.name, spec.kind, n_p=0, n_d=spec.local_instances)
    n_p, n_d = int(spec.n_p or 0), int(spec.n_d or 0)
    if n_d < 1:
        raise ScenarioError("needs at least one decode instance (n_d >= 1)", where=where)
    if spec.kind in ("homogeneous", "prfaas") and n_p < 1:
        raise ScenarioError(
            f"a {spec.kind} topology needs at least one local prefill instance (n_p >= 1)", where=where
        )
    if spec.kind in ("naive", "prfaas") and not spec.n_prfaas:
        raise ScenarioError("needs at least one remote prefill instance", where=where)
    return TopologyPlan(
        spec.name,
        spec.kind,
        n_p,
        n_d,
        int(spec.n_prfaas or 0),
        spec.threshold_tokens,
        planner_lambda_max=planner.lambda_max,
    )


def prepare(
    scenario: Scenario,
    *,
    topologies: list[str] | None = None,
    warnings: Sequence[str] = (),
    context: ContextPolicy = "refuse",
) -> SimSetup:
    """Deployment + ``[simulate]`` + the topologies to run (all, or those named), resolved by the
    planner. ``warnings`` (the command's ``Scenario.warnings``) go into ``describe()``; ``context`` is
    the rule for a trace workload's prompts beyond the model's context."""
    deployment = deployment_from_scenario(scenario, context=context)
    spec = scenario.config.simulate
    names = list(deployment.topologies)
    if topologies:
        unknown = [t for t in topologies if t not in deployment.topologies]
        if unknown:
            raise ScenarioError(f"unknown topology {unknown[0]!r}; the scenario defines {', '.join(names)}")
        names = topologies
    resolved = resolve_topologies(deployment)
    ctx = deployment.context()
    planner = {n: evaluate_topology(ctx, resolved[n]) for n in names if resolved[n].kind != "colocated"}
    plans = {n: _plan(resolved[n], planner.get(n), scenario.where("topologies", n)) for n in names}
    link = deployment.link or ModelledLink(bandwidth_gbps=spec.intra_site_gbps)
    bs = spec.decode_batch_max or deployment.context().bs_max
    stack = StackSpec(
        local=deployment.local_cost,
        remote=deployment.remote_cost,
        link=link,
        intra_site=ModelledLink(bandwidth_gbps=spec.intra_site_gbps),
        decode_batch_max=bs,
        cache_capacity_bytes=None if spec.cache_capacity_gib is None else spec.cache_capacity_gib * 2**30,
        prfaas_cache=spec.prfaas_cache,
        hybrid_cache=spec.prefix_cache == "hybrid",
        prefill_batch_tokens=spec.prefill_batch_tokens,
        bandwidth_aware=BandwidthAware() if spec.bandwidth_aware else None,
        link_events=fluid_states(scenario, link) if deployment.link is not None else (),
    )
    return SimSetup(scenario, deployment, spec, stack, plans, tuple(warnings), planner)
