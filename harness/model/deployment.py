"""A scenario's deployment: model, hardware, workload, SLO, link and topologies, as frozen specs.

``deployment_from_scenario`` builds it from the ``[model]``, ``[hardware]``, ``[workload]``, ``[slo]``,
``[link]`` and ``[topologies.*]`` tables (typed and validated when the scenario was loaded, see
``harness.config``): it loads the presets, reads a trace workload (applying the context rule,
``harness.traces.context``) and checks that the model fits the hardware, *before* any computation.
Every mistake is a ``ScenarioError`` naming the file and field.

A trace workload is planned on what each request still has to prefill after the prefix cache that
``[simulate]`` models (``cache_capacity_gib`` per site, ``prfaas_cache``, ``prefix_cache``): see
``harness.model.prefills``.

``resolve_topologies`` fills in what a topology leaves open (N_p/N_d split, PrfaaS threshold) with the
analytic planner's optimum, so ``simulate`` and ``replay`` run the configuration ``plan`` recommends.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from harness.config.deployment import Slo, TopologyTable
from harness.config.links import ModelledLink
from harness.errors import HarnessError, ScenarioError
from harness.model.cost import InstanceCost
from harness.model.planner import PlanContext, evaluate_topology
from harness.model.prefills import LengthPrefills, Prefills, TracePrefills
from harness.model.presets import Hardware, ModelSpec, load_hardware, load_model
from harness.scenario import Scenario
from harness.serving.cache import cache_shape
from harness.traces.context import ContextFit, ContextPolicy, fit_context
from harness.traces.distributions import Empirical, Fixed, LengthDistribution, TruncatedLogNormal, Uniform
from harness.traces.frame import Trace

T = TypeVar("T")


@dataclass(frozen=True)
class Workload:
    """Input-length distribution and output length. For a trace: ``trace`` holds its rows after the
    context rule (``context`` says what it did; ``read`` is the file's rows, to refit for another
    model), ``lengths`` their prompt lengths."""

    kind: str
    lengths: LengthDistribution
    output_tokens: int
    trace_path: Path | None = None
    trace: Trace | None = field(default=None, repr=False)
    context: ContextFit | None = None
    read: Trace | None = field(default=None, repr=False)
    output_given: bool = True


@dataclass(frozen=True)
class PrefixCacheSpec:
    """The site prefix cache the planner models, as ``[simulate]`` sets it for the simulator."""

    capacity_gib: float | None  # per site; None: unbounded, 0: off
    prfaas_cache: str  # "local" or "global"
    hybrid: bool = True  # a hybrid model's hits end at linear-state checkpoints (False: any block)


@dataclass(frozen=True)
class TopologySpec:
    """One topology. ``None`` fields are left for the planner to choose (see ``resolve_topology``)."""

    name: str
    kind: str
    local_instances: int
    remote_instances: int = 0
    n_p: int | None = None
    n_d: int | None = None
    n_prfaas: int | None = None
    threshold_tokens: float | None = None

    @property
    def resolved(self) -> bool:
        needs_t = self.kind == "prfaas" and self.threshold_tokens is None
        return self.kind == "colocated" or (self.n_p is not None and self.n_d is not None and not needs_t)


@dataclass(frozen=True)
class Deployment:
    """Everything ``plan`` and ``simulate`` need from a scenario, validated."""

    name: str
    model: ModelSpec
    local: Hardware
    remote: Hardware | None
    gpus_per_instance: int
    workload: Workload
    slo: Slo
    link: ModelledLink | None  # local <- remote, as the planner and the simulator see it
    topologies: Mapping[str, TopologySpec]
    cache: PrefixCacheSpec
    prefills: Prefills = field(repr=False)  # what each prefill pool computes (harness.model.prefills)

    @property
    def local_cost(self) -> InstanceCost:
        return InstanceCost(self.model, self.local, self.gpus_per_instance)

    @property
    def remote_cost(self) -> InstanceCost | None:
        return InstanceCost(self.model, self.remote, self.gpus_per_instance) if self.remote else None

    def context(self) -> PlanContext:
        """The planner's inputs for this deployment."""
        return PlanContext(
            local=self.local_cost,
            remote=self.remote_cost,
            workload=self.prefills,
            output_tokens=self.workload.output_tokens,
            tpot_s=self.slo.tpot_s,
            bandwidth_gbps=self.link.bandwidth_gbps if self.link else 0.0,
        )

    def describe_workload(self) -> dict:
        """The workload as the planner sees it, for output and results' metadata: kind, lengths, which
        prefill-length distribution it plans on and the reuse it found, and what the context rule did."""
        w = self.workload
        return {
            "kind": w.kind,
            "trace": str(w.trace_path) if w.trace_path else None,
            "requests": len(w.trace) if w.trace is not None else None,
            "mean_input_tokens": w.lengths.mean(),
            "output_tokens": w.output_tokens,
            "prefill_lengths": self.prefills.describe(),
            "context": w.context.as_dict() if w.context else None,
        }

    def cost_per_hour(self, topology: TopologySpec) -> float:
        """GPU cost of a topology per hour, from the hardware presets' prices."""
        local = topology.local_instances * self.gpus_per_instance * self.local.price_per_gpu_hour
        remote_price = self.remote.price_per_gpu_hour if self.remote else 0.0
        return local + topology.remote_instances * self.gpus_per_instance * remote_price


# ---------------------------------------------------------------------------------------------- building


def _preset(loader: Callable[..., T], name: str, scenario: Scenario, table: str, key: str) -> T:
    """Load the preset ``[table] key`` names; a bad name is reported at that key of the scenario."""
    try:
        return loader(name, base=scenario.path.parent)
    except ScenarioError as exc:
        if exc.where is not None:  # a preset file's own problem names that file
            raise
        raise ScenarioError(str(exc), where=f"{scenario.where(table)} {key}") from None


def _workload(scenario: Scenario, model: ModelSpec, context: ContextPolicy) -> Workload:
    wl = scenario.config.workload
    assert wl is not None
    try:
        if wl.kind == "lognormal":
            lengths: LengthDistribution = TruncatedLogNormal(wl.mu, wl.sigma, wl.min_tokens, wl.max_tokens)
        elif wl.kind == "fixed":
            lengths = Fixed(wl.tokens)
        elif wl.kind == "uniform":
            lengths = Uniform(wl.min_tokens, wl.max_tokens)
        else:
            from harness.traces.readers import read_trace  # I/O edge: only a trace workload reads a file

            trace_path = Path(wl.trace)
            if not trace_path.is_absolute():
                trace_path = scenario.path.parent / trace_path
            read = read_trace(trace_path)
            given = wl.output_tokens is not None
            template = Workload(
                wl.kind, Fixed(1), wl.output_tokens or 1, trace_path, read=read, output_given=given
            )
            return fit_workload(template, model.context_length, context)
    except ScenarioError:
        raise
    except HarnessError as exc:  # e.g. a distribution rejecting its parameters, a trace that cannot be read
        raise ScenarioError(str(exc), where=scenario.where("workload")) from None
    assert wl.output_tokens is not None
    return Workload(kind=wl.kind, lengths=lengths, output_tokens=wl.output_tokens)


def fit_workload(workload: Workload, context_tokens: int, policy: ContextPolicy) -> Workload:
    """A trace workload's rows under the context rule for a model of ``context_tokens`` (a distribution
    is returned as it is: its bounds are the scenario's to set)."""
    if workload.read is None:
        return workload
    trace, fit = fit_context(workload.read, context_tokens, policy, where=str(workload.trace_path))
    output = workload.output_tokens
    if not workload.output_given:
        output = max(1, round(float(trace.output_tokens.mean())))
    return replace(
        workload, lengths=Empirical(trace.input_tokens), output_tokens=output, trace=trace, context=fit
    )


def prefills_for(workload: Workload, model: ModelSpec, cache: PrefixCacheSpec) -> Prefills:
    """What each prefill pool computes: a trace replayed through site caches of ``cache``'s capacity
    (entries of the model's KV and linear state, as the simulator sizes them), or a distribution's raw
    lengths."""
    if workload.trace is None:
        return LengthPrefills(workload.lengths)
    trace, gib = workload.trace, cache.capacity_gib
    return TracePrefills(
        trace,
        capacity_bytes=None if gib is None else gib * 2**30,
        shape=cache_shape(model, trace.block_tokens, hybrid=cache.hybrid),
        global_cache=cache.prfaas_cache == "global",
    )


def _topology(name: str, table: TopologyTable) -> TopologySpec:
    remote, n_p, n_d, n_prfaas = table.counts()
    return TopologySpec(
        name, table.kind, table.local_instances, remote, n_p, n_d, n_prfaas, table.threshold_tokens
    )


def deployment_from_scenario(scenario: Scenario, *, context: ContextPolicy = "refuse") -> Deployment:
    """The deployment a scenario describes (see the module docstring); ``context`` is the rule for a
    trace's prompts beyond the model's context (``harness.traces.context``)."""
    scenario.require("model", "hardware", "workload", "slo", "topologies")
    cfg = scenario.config
    assert cfg.model is not None and cfg.hardware is not None and cfg.slo is not None and cfg.topologies
    hw = cfg.hardware
    model = _preset(load_model, cfg.model.preset, scenario, "model", "preset")
    local = _preset(load_hardware, hw.local, scenario, "hardware", "local")
    remote = _preset(load_hardware, hw.remote, scenario, "hardware", "remote") if hw.remote else None
    if hw.local_price_per_gpu_hour is not None:
        local = replace(local, price_per_gpu_hour=hw.local_price_per_gpu_hour)
    if remote and hw.remote_price_per_gpu_hour is not None:
        remote = replace(remote, price_per_gpu_hour=hw.remote_price_per_gpu_hour)
    topologies = {name: _topology(name, t) for name, t in cfg.topologies.items()}
    needs_remote = bool(cfg.remote_topologies())  # the scenario's checks made sure remote and [link] exist
    workload = _workload(scenario, model, context)
    sim = cfg.simulate
    cache = PrefixCacheSpec(sim.cache_capacity_gib, sim.prfaas_cache, sim.prefix_cache == "hybrid")
    deployment = Deployment(
        name=scenario.name,
        model=model,
        local=local,
        remote=remote if needs_remote else None,
        gpus_per_instance=hw.gpus_per_instance,
        workload=workload,
        slo=cfg.slo,
        link=cfg.link if needs_remote else None,
        topologies=topologies,
        cache=cache,
        prefills=prefills_for(workload, model, cache),
    )
    check_fits(deployment, where=str(scenario.path))
    return deployment


def check_fits(deployment: Deployment, *, where: str | None = None) -> None:
    """The model's weights must fit each instance, and a local instance must decode at least one
    sequence within the TPOT SLO; otherwise no topology can serve and the planner would divide by 0."""
    for cost in (deployment.local_cost, deployment.remote_cost):
        if cost is None:
            continue
        usable = cost.gpus * cost.hardware.hbm_gb * cost.hardware.calibration.memory_utilization
        if cost.kv_capacity_bytes() == 0:
            raise ScenarioError(
                f"model {cost.model.name} ({cost.model.weight_bytes / 1e9:.0f} GB of weights) does not fit "
                f"{cost.gpus}x{cost.hardware.name} ({usable:.0f} GB usable); raise gpus_per_instance",
                where=where,
            )
    ctx = deployment.context()
    if ctx.bs_max < 1:
        raise ScenarioError(
            f"{deployment.gpus_per_instance}x{deployment.local.name} cannot decode even one {deployment.model.name} sequence of "
            f"{ctx.decode_context_tokens} context tokens within tpot_ms={deployment.slo.tpot_ms:g}",
            where=where,
        )


def with_overrides(
    deployment: Deployment, *, model: str | None = None, bandwidth_gbps: float | None = None
) -> Deployment:
    """The same deployment with another model preset and/or link bandwidth (command-line overrides)."""
    if bandwidth_gbps is not None and not (bandwidth_gbps > 0 and math.isfinite(bandwidth_gbps)):
        raise ScenarioError(f"--bandwidth-gbps must be > 0, got {bandwidth_gbps:g}")
    out = deployment
    if model is not None:
        spec = load_model(model)
        policy = deployment.workload.context.policy if deployment.workload.context else "refuse"
        workload = fit_workload(deployment.workload, spec.context_length, policy)
        out = replace(out, model=spec, workload=workload, prefills=prefills_for(workload, spec, out.cache))
    if bandwidth_gbps is not None:
        link = out.link or ModelledLink(bandwidth_gbps=bandwidth_gbps)
        out = replace(out, link=replace(link, bandwidth_gbps=bandwidth_gbps))
    if out is not deployment:
        check_fits(out)
    return out


# ---------------------------------------------------------------------------------------------- resolving


def resolve_topology(deployment: Deployment, topology: TopologySpec) -> TopologySpec:
    """Fill in a topology's open choices with the planner's optimum (fixed fields are kept)."""
    if topology.resolved:  # naive (set by its instance counts) and colocated always are
        return topology
    r = evaluate_topology(deployment.context(), topology)
    return replace(topology, n_p=r.n_p, n_d=r.n_d, threshold_tokens=r.threshold_tokens)


def resolve_topologies(deployment: Deployment) -> dict[str, TopologySpec]:
    """Every topology of the deployment, resolved (see ``resolve_topology``)."""
    return {name: resolve_topology(deployment, tp) for name, tp in deployment.topologies.items()}
