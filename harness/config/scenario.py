"""A whole scenario file: every table it may hold, and the checks that span tables.

    name, description          labels
    [model] [hardware] [workload] [slo] [link] [topologies.NAME]     the deployment (plan, simulate)
    [simulate]                 simulate's options            [emulation]   serve's options
    [network]                  sites and shaped links (net, serve)
    [bench] [bench.quick]      bench's stage sizes           [replay]      replay --scenario defaults
    [validity]                 bounds a measured run must keep to be called valid

Every table is optional here; a command that needs one says so when it reads the scenario.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Annotated

from pydantic import Field, model_validator

from harness.config.base import FieldError, Str, table
from harness.config.deployment import (
    REMOTE_KINDS,
    HardwareTable,
    ModelTable,
    Slo,
    TopologyTable,
    WorkloadTable,
)
from harness.config.links import ModelledLink
from harness.config.network import NetworkTable
from harness.config.runs import BenchTable, EmulationSpec, ReplayTable, SimulateSpec
from harness.config.validity import ValidityBounds

LOCAL, REMOTE = "local", "remote"  # the site names serve runs: PD (decode, local prefill), PrfaaS prefill
TOPOLOGY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # it becomes a URL path and a file name


@table
class ScenarioConfig:
    """The typed scenario (see the module docstring)."""

    name: Str | None = None
    description: Str = ""
    model: ModelTable | None = None
    hardware: HardwareTable | None = None
    workload: WorkloadTable | None = None
    slo: Slo | None = None
    link: ModelledLink | None = None
    topologies: Annotated[dict[Str, TopologyTable], Field(min_length=1)] | None = None
    simulate: SimulateSpec = dataclasses.field(default_factory=SimulateSpec)
    emulation: EmulationSpec = dataclasses.field(default_factory=EmulationSpec)
    network: NetworkTable | None = None
    bench: BenchTable = dataclasses.field(default_factory=BenchTable)
    replay: ReplayTable | None = None
    validity: ValidityBounds = dataclasses.field(default_factory=ValidityBounds)

    def remote_topologies(self) -> list[str]:
        """Topologies with a remote prefill site (they need [hardware] remote, [link] and, to be served,
        a local-remote link in [network])."""
        return [n for n, t in (self.topologies or {}).items() if t.kind in REMOTE_KINDS]

    @model_validator(mode="after")
    def _across_tables(self) -> ScenarioConfig:
        for name in self.topologies or {}:
            if not TOPOLOGY_NAME.match(name):
                raise FieldError(("topologies", name), f"a topology name must match {TOPOLOGY_NAME.pattern}")
        remote = self.remote_topologies()
        if remote and self.hardware is not None and self.hardware.remote is None:
            raise FieldError(("hardware", "remote"), f"missing (topology {remote[0]!r} prefills remotely)")
        if remote and self.link is None:
            raise FieldError(("link",), f"missing (topology {remote[0]!r} moves KV between sites)")
        if self.network is not None and self.topologies:
            self._servable(remote)
        return self

    def _servable(self, remote: list[str]) -> None:
        """``serve`` runs the topologies on this [network]: it needs the sites, and a rated link for KV."""
        assert self.network is not None
        needed = [LOCAL] + ([REMOTE] if remote else [])
        missing = [s for s in needed if s not in self.network.sites]
        if missing:
            raise FieldError(("network", "sites"), f"lacks site(s) {', '.join(missing)} that serve needs")
        if not remote:
            return
        link = next(
            (i for i, ln in enumerate(self.network.links) if sorted(ln.between) == [LOCAL, REMOTE]), None
        )
        if link is None:
            raise FieldError(("network", "links"), f"needs a link between {LOCAL} and {REMOTE} for KV")
        kv = self.network.spec().link(LOCAL, REMOTE).spec(REMOTE, LOCAL)
        if kv.rate_mbit is None:
            raise FieldError(
                ("network", "links", link, "rate_mbit"),
                "missing (serve scales KV bytes by the rate from remote to local)",
            )
