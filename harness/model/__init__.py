"""Hardware/model presets, the per-instance cost model, and the PrfaaS analytic planner.

presets.py     Hardware, ModelSpec, load_hardware, load_model (TOML data in harness/presets/)
cost.py        InstanceCost: prefill time, decode step, KV bytes, Φ_kv, decode batch limit
planner.py     the paper's Θ/Λ_max equations and the grid search over t and N_p/N_d
prefills.py    what each prefill pool computes: a length distribution, or a trace after the prefix caches
reuse.py       replay_cache: a trace through the site prefix caches, request by request
deployment.py  a scenario's deployment (model, hardware, workload, SLO, link, topologies)
study.py       plan_deployment and the bandwidth / threshold / split sweeps (DataFrames)
"""

from harness.model.cost import InstanceCost
from harness.model.deployment import (
    Deployment,
    Slo,
    TopologySpec,
    Workload,
    deployment_from_scenario,
    resolve_topologies,
    resolve_topology,
    with_overrides,
)
from harness.model.planner import PlanContext, PlanResult
from harness.model.presets import Hardware, ModelSpec, known_presets, load_hardware, load_model
from harness.model.study import (
    PlanReport,
    bandwidth_breakpoints,
    plan_deployment,
    sweep_bandwidth,
    sweep_split,
    sweep_threshold,
)

__all__ = [
    "Deployment",
    "Hardware",
    "InstanceCost",
    "ModelSpec",
    "PlanContext",
    "PlanReport",
    "PlanResult",
    "Slo",
    "TopologySpec",
    "Workload",
    "bandwidth_breakpoints",
    "deployment_from_scenario",
    "known_presets",
    "load_hardware",
    "load_model",
    "plan_deployment",
    "resolve_topologies",
    "resolve_topology",
    "sweep_bandwidth",
    "sweep_split",
    "sweep_threshold",
    "with_overrides",
]
