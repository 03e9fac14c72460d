"""What a topology costs per hour: instances × GPUs per instance × price per GPU-hour.

Instance counts come from the run's metadata (the scenario's ``[topologies.<name>]`` tables, inline
or by path) or from the planner's ``plan.json``; prices from the hardware presets. Anything missing
gives ``None`` (the cost-normalised column then shows "–") rather than an error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.model.presets import load_hardware
from harness.scenario import load_scenario


@dataclass(frozen=True, slots=True)
class Fleet:
    """GPUs a topology holds, by site: local instances on ``local_gpu``, remote ones on ``remote_gpu``."""

    local_instances: int
    remote_instances: int
    local_gpu: str
    remote_gpu: str
    gpus_per_instance: int = 8

    def cost_per_hour(self, price: Mapping[str, float]) -> float | None:
        """USD per hour, or None when a used GPU type has no price."""
        total = 0.0
        for n, gpu in ((self.local_instances, self.local_gpu), (self.remote_instances, self.remote_gpu)):
            if n:
                if gpu not in price:
                    return None
                total += n * self.gpus_per_instance * price[gpu]
        return total


def gpu_price(name: str) -> float | None:
    """Price per GPU-hour from the hardware presets (``harness/presets/hardware/<name>.toml``); None for a
    GPU with no preset."""
    try:
        return float(load_hardware(name).price_per_gpu_hour)
    except HarnessError:
        return None


def _scenario_raw(meta: Mapping[str, Any]) -> Mapping[str, Any]:
    scen = meta.get("scenario")
    if isinstance(scen, Mapping):
        return scen
    for key in ("scenario_path", "scenario"):
        path = meta.get(key)
        if isinstance(path, str) and Path(path).is_file():
            with contextlib.suppress(HarnessError, OSError):  # edited or gone since the run: no fleet
                return load_scenario(path).raw
    return {}


def fleet(topology: str, meta: Mapping[str, Any], plan: Mapping[str, Any] | None = None) -> Fleet | None:
    """The topology's hardware, from meta (inline, or the scenario it names) or else ``plan.json``."""
    scen = _scenario_raw(meta)
    hw = meta.get("hardware") or scen.get("hardware") or {}
    # simulate's meta maps names to topologies; replay's lists names only (its scenario has the rest).
    tables = [t for t in (meta.get("topologies"), scen.get("topologies")) if isinstance(t, Mapping)]
    topo = (tables[0] if tables else {}).get(topology) or {}
    local_gpu, remote_gpu = hw.get("local"), hw.get("remote")
    if not isinstance(local_gpu, str):
        return None
    plan_topo = (plan or {}).get("topologies", {}).get(topology)
    if "local_instances" in topo:
        local, remote = int(topo["local_instances"]), int(topo.get("remote_instances") or 0)
    elif (
        resolved := topo if "n_d" in topo else plan_topo
    ) is not None:  # a resolved split: N_p, N_d, N_prfaas
        local = int(resolved.get("n_p") or 0) + int(resolved.get("n_d") or 0)
        remote = int(resolved.get("n_prfaas") or 0)
    else:
        return None
    return Fleet(local, remote, local_gpu, str(remote_gpu or local_gpu), int(hw.get("gpus_per_instance", 8)))


def cost_per_hour(
    topology: str, meta: Mapping[str, Any], plan: Mapping[str, Any] | None = None
) -> float | None:
    """USD per hour for ``topology``, or None when the hardware or a price is unknown."""
    f = fleet(topology, meta, plan)
    if f is None:  # the planner prices its topologies itself
        planned = (plan or {}).get("topologies", {}).get(topology) or {}
        return float(planned["cost_per_hour"]) if planned.get("cost_per_hour") else None
    prices = {g: p for g in {f.local_gpu, f.remote_gpu} if (p := gpu_price(g)) is not None}
    return f.cost_per_hour(prices)
