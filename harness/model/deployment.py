"""A scenario's deployment: model, hardware, workload, SLO, link and topologies, as frozen specs.

``deployment_from_scenario`` parses the ``[model]``, ``[hardware]``, ``[workload]``, ``[slo]``, ``[link]``
and ``[topologies.*]`` tables and validates them *before* any computation: every mistake is a
``ScenarioError`` naming the file and field. Other tables (``[simulate]``, ``[network]``...) and keys
other subsystems add to these tables are left alone.

``resolve_topologies`` fills in what a topology leaves open (N_p/N_d split, PrfaaS threshold) with the
analytic planner's optimum, so ``simulate`` and ``replay`` run the configuration ``plan`` recommends.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, ScenarioError
from harness.model.cost import InstanceCost
from harness.model.planner import PlanContext, evaluate_topology
from harness.model.presets import Hardware, ModelSpec, load_hardware, load_model
from harness.scenario import Scenario
from harness.traces.distributions import Empirical, Fixed, LengthDistribution, TruncatedLogNormal, Uniform

TOPOLOGY_KINDS = ("homogeneous", "naive", "prfaas", "colocated")
WORKLOAD_KINDS = ("lognormal", "fixed", "uniform", "trace")
_REMOTE_KINDS = ("naive", "prfaas")


@dataclass(frozen=True)
class Workload:
    """Input-length distribution and output length. ``trace_path`` is set when lengths come from a trace."""

    kind: str
    lengths: LengthDistribution
    output_tokens: int
    trace_path: Path | None = None


@dataclass(frozen=True)
class Slo:
    tpot_ms: float
    ttft_s: float | None = None
    attainment: float = 0.99

    @property
    def tpot_s(self) -> float:
        return self.tpot_ms / 1000.0


@dataclass(frozen=True)
class Link:
    """The inter-site link as the planner sees it (one direction, local <- remote)."""

    bandwidth_gbps: float
    delay_ms: float = 0.0


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
    link: Link | None
    topologies: Mapping[str, TopologySpec]

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
            workload=self.workload.lengths,
            output_tokens=self.workload.output_tokens,
            tpot_s=self.slo.tpot_s,
            bandwidth_gbps=self.link.bandwidth_gbps if self.link else 0.0,
        )

    def cost_per_hour(self, topology: TopologySpec) -> float:
        """GPU cost of a topology per hour, from the hardware presets' prices."""
        local = topology.local_instances * self.gpus_per_instance * self.local.price_per_gpu_hour
        remote_price = self.remote.price_per_gpu_hour if self.remote else 0.0
        return local + topology.remote_instances * self.gpus_per_instance * remote_price


# ---------------------------------------------------------------------------------------------- parsing


class _Table:
    """Typed access to one scenario table; errors say ``file:[table]: field: problem``."""

    def __init__(self, scenario: Scenario, *keys: str, required: bool = False) -> None:
        table: Any = scenario.raw
        for key in keys:
            table = table.get(key) if isinstance(table, Mapping) else None
        if table is None:
            if required:
                raise ScenarioError(f"missing required table [{'.'.join(keys)}]", where=str(scenario.path))
            table = {}
        if not isinstance(table, Mapping):
            raise ScenarioError("must be a table", where=scenario.where(*keys))
        self.raw, self.where = table, scenario.where(*keys)

    def _err(self, key: str, message: str) -> ScenarioError:
        return ScenarioError(message, where=f"{self.where}: {key}")

    def has(self, key: str) -> bool:
        return key in self.raw

    def number(
        self, key: str, default: float | None = None, *, minimum: float = 0.0, strict: bool = True
    ) -> float:
        value = self.raw.get(key, default)
        if value is None:
            raise self._err(key, "missing required field")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self._err(key, f"must be a number, got {value!r}")
        if value < minimum or (strict and value == minimum):
            raise self._err(key, f"must be {'>' if strict else '>='} {minimum:g}, got {value:g}")
        return float(value)

    def integer(self, key: str, default: int | None = None, *, minimum: int = 0) -> int:
        value = self.raw.get(key, default)
        if value is None:
            raise self._err(key, "missing required field")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._err(key, f"must be an integer, got {value!r}")
        if value < minimum:
            raise self._err(key, f"must be >= {minimum}, got {value}")
        return value

    def optional_int(self, key: str, *, minimum: int = 0) -> int | None:
        return self.integer(key, minimum=minimum) if key in self.raw else None

    def text(self, key: str, default: str | None = None, *, choices: tuple[str, ...] = ()) -> str:
        value = self.raw.get(key, default)
        if value is None:
            raise self._err(key, "missing required field")
        if not isinstance(value, str):
            raise self._err(key, f"must be a string, got {value!r}")
        if choices and value not in choices:
            raise self._err(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value


def _preset(loader, table: _Table, key: str, base: Path):
    """Load a preset named in ``table.key``; a bad name's message gets the scenario location prefixed."""
    name = table.text(key)
    try:
        return loader(name, base=base)
    except ScenarioError as exc:
        raise ScenarioError(str(exc), where=f"{table.where}: {key}") from None


def _workload(scenario: Scenario) -> Workload:
    t = _Table(scenario, "workload", required=True)
    kind = t.text("kind", choices=WORKLOAD_KINDS)
    output = t.integer("output_tokens", minimum=1) if t.has("output_tokens") or kind != "trace" else None
    trace_path = None
    try:
        if kind == "lognormal":
            lo, hi = t.number("min_tokens", 128), t.number("max_tokens", 131072)
            if lo >= hi:
                raise t._err("min_tokens", f"must be below max_tokens ({lo:g} >= {hi:g})")
            lengths: LengthDistribution = TruncatedLogNormal(
                t.number("mu", minimum=-math.inf), t.number("sigma"), lo, hi
            )
        elif kind == "fixed":
            lengths = Fixed(t.integer("tokens", minimum=1))
        elif kind == "uniform":
            lo_i, hi_i = t.integer("min_tokens", minimum=1), t.integer("max_tokens", minimum=1)
            if lo_i > hi_i:
                raise t._err("min_tokens", f"must not exceed max_tokens ({lo_i} > {hi_i})")
            lengths = Uniform(lo_i, hi_i)
        else:
            from harness.traces.readers import read_trace  # I/O edge: only a trace workload reads a file

            trace_path = Path(t.text("trace"))
            if not trace_path.is_absolute():
                trace_path = scenario.path.parent / trace_path
            trace = read_trace(trace_path)
            lengths = Empirical(trace.input_tokens)
            if output is None:
                output = max(1, round(float(trace.output_tokens.mean())))
    except ScenarioError:
        raise
    except HarnessError as exc:  # e.g. a distribution rejecting its parameters, a trace that cannot be read
        raise ScenarioError(str(exc), where=t.where) from None
    assert output is not None
    return Workload(kind=kind, lengths=lengths, output_tokens=output, trace_path=trace_path)


def _topology(scenario: Scenario, name: str) -> TopologySpec:
    t = _Table(scenario, "topologies", name)
    kind = t.text("kind", choices=TOPOLOGY_KINDS)
    local = t.integer("local_instances", minimum=1)
    remote = t.integer("remote_instances", 0 if kind not in _REMOTE_KINDS else None, minimum=0)
    if kind in _REMOTE_KINDS and remote < 1:
        raise t._err("remote_instances", f"a {kind} topology needs at least 1 remote instance, got {remote}")
    if kind not in _REMOTE_KINDS and remote:
        raise t._err("remote_instances", f"a {kind} topology has no remote site; remove it or set 0")
    n_p, n_d, n_prfaas = (
        t.optional_int("n_p"),
        t.optional_int("n_d", minimum=1),
        t.optional_int("n_prfaas", minimum=1),
    )
    threshold = t.number("threshold_tokens") if t.has("threshold_tokens") else None
    if threshold is not None and kind != "prfaas":
        raise t._err("threshold_tokens", f"only a prfaas topology routes by length, not {kind}")
    if kind == "naive":
        if n_p:
            raise t._err("n_p", "a naive topology prefills everything remotely; n_p must be 0")
        n_p, n_d = 0, n_d or local
    if kind in ("homogeneous", "prfaas"):
        if n_p is not None and n_d is None:
            n_d = local - n_p
        elif n_d is not None and n_p is None:
            n_p = local - n_d
    if n_p is not None and n_d is not None and (n_p + n_d != local or n_d < 1):
        raise t._err("n_p", f"n_p + n_d must equal local_instances ({n_p} + {n_d} != {local}) with n_d >= 1")
    if kind == "homogeneous" and local < 2:  # at least one prefill and one decode instance
        raise t._err(
            "local_instances", f"a homogeneous topology needs at least 2 (prefill + decode), got {local}"
        )
    if kind == "homogeneous" and n_p is not None and n_p < 1:
        raise t._err("n_p", "a homogeneous topology needs at least 1 prefill instance")
    if kind in _REMOTE_KINDS:
        n_prfaas = n_prfaas or remote
        if n_prfaas > remote:
            raise t._err("n_prfaas", f"exceeds remote_instances ({n_prfaas} > {remote})")
    else:
        n_prfaas = None
    return TopologySpec(name, kind, local, remote, n_p, n_d, n_prfaas, threshold)


def deployment_from_scenario(scenario: Scenario) -> Deployment:
    """Parse and validate a scenario's deployment tables (see the module docstring)."""
    base = scenario.path.parent
    model = _preset(load_model, _Table(scenario, "model", required=True), "preset", base)
    hw = _Table(scenario, "hardware", required=True)
    local = _preset(load_hardware, hw, "local", base)
    remote = _preset(load_hardware, hw, "remote", base) if hw.has("remote") else None
    if hw.has("local_price_per_gpu_hour"):
        local = replace(
            local, price_per_gpu_hour=hw.number("local_price_per_gpu_hour", minimum=0, strict=False)
        )
    if remote and hw.has("remote_price_per_gpu_hour"):
        remote = replace(
            remote, price_per_gpu_hour=hw.number("remote_price_per_gpu_hour", minimum=0, strict=False)
        )
    gpus = hw.integer("gpus_per_instance", 8, minimum=1)
    workload = _workload(scenario)
    s = _Table(scenario, "slo", required=True)
    slo = Slo(
        tpot_ms=s.number("tpot_ms"),
        ttft_s=s.number("ttft_s") if s.has("ttft_s") else None,
        attainment=s.number("attainment", 0.99),
    )
    if slo.attainment > 1:
        raise s._err("attainment", f"is a fraction in (0, 1], got {slo.attainment:g}")
    tops = _Table(scenario, "topologies", required=True)
    if not tops.raw:
        raise ScenarioError("[topologies] defines no topology", where=str(scenario.path))
    topologies = {name: _topology(scenario, name) for name in tops.raw}
    needs_remote = [n for n, tp in topologies.items() if tp.kind in _REMOTE_KINDS]
    link = None
    if needs_remote:
        if remote is None:
            raise ScenarioError(f"topology {needs_remote[0]!r} needs [hardware] remote", where=hw.where)
        lt = _Table(scenario, "link", required=True)
        link = Link(
            bandwidth_gbps=lt.number("bandwidth_gbps"), delay_ms=lt.number("delay_ms", 0, strict=False)
        )
    deployment = Deployment(
        name=scenario.name,
        model=model,
        local=local,
        remote=remote if needs_remote else None,
        gpus_per_instance=gpus,
        workload=workload,
        slo=slo,
        link=link,
        topologies=topologies,
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
        out = replace(out, model=load_model(model))
    if bandwidth_gbps is not None:
        link = out.link or Link(bandwidth_gbps)
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
