"""Build a ``Cluster`` from a resolved topology: sites, instances, caches, links and the router.

Kept apart from the scenario (harness/serving/config.py turns it into a ``SimSetup``) so ``serve`` can
build the same sites from the same description.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.config.links import ModelledLink
from harness.config.scenario import LOCAL, REMOTE
from harness.model.cost import InstanceCost
from harness.serving.cache import PrefixCache, cache_shape
from harness.serving.cluster import Cluster
from harness.serving.instances import DecodeInstance, PrefillInstance
from harness.serving.linkevents import LinkSchedule, LinkState
from harness.serving.ports import InProcessSite, SitePort
from harness.serving.router import (
    BandwidthAware,
    ColocatedRouter,
    HomogeneousRouter,
    NaiveRouter,
    PrfaasRouter,
    Router,
)
from harness.serving.site import Site
from harness.serving.transport import FluidTransport

KINDS = ("homogeneous", "naive", "prfaas", "colocated")


@dataclass(frozen=True)
class TopologyPlan:
    """A topology with concrete instance counts (the planner's choice, or the scenario's).

    ``n_p`` local prefill, ``n_d`` local decode, ``n_prfaas`` remote prefill instances;
    ``threshold_tokens`` for prfaas; ``planner_lambda_max`` is the analytic Λ_max (req/s) to compare to.
    For ``colocated``, ``n_d`` instances each prefill and decode.
    """

    name: str
    kind: str
    n_p: int
    n_d: int
    n_prfaas: int = 0
    threshold_tokens: float | None = None
    planner_lambda_max: float | None = None


@dataclass(frozen=True)
class StackSpec:
    """Everything but the topology: costs, link, caches, batching, router options and link events."""

    local: InstanceCost
    remote: InstanceCost | None
    link: ModelledLink
    intra_site: ModelledLink
    decode_batch_max: int
    cache_capacity_bytes: float | None
    block_tokens: int = 512
    hybrid_cache: bool = True  # a hybrid model's hits end at linear-state checkpoints (False: any block)
    prfaas_cache: str = "local"
    bandwidth_aware: BandwidthAware | None = None
    max_segment_steps: float = math.inf
    prefill_batch_tokens: int = 0
    link_events: tuple[LinkState, ...] = ()  # the scenario's [[network.events]] (simulate)


def build_cluster(spec: StackSpec, topo: TopologyPlan) -> Cluster:
    """The sites, links and router of one topology (call inside the loop that will run it)."""
    shape = cache_shape(spec.local.model, spec.block_tokens, hybrid=spec.hybrid_cache)

    def cache() -> PrefixCache:
        return PrefixCache(spec.cache_capacity_bytes, shape)

    def decoders(site: str, n: int) -> list[DecodeInstance]:
        return [
            DecodeInstance(
                f"{site}-d{i}", spec.local, spec.decode_batch_max, max_segment_steps=spec.max_segment_steps
            )
            for i in range(n)
        ]

    local_cache = cache()
    local = Site(
        LOCAL,
        [
            PrefillInstance(
                f"{LOCAL}-p{i}", spec.local, local_cache, max_batch_tokens=spec.prefill_batch_tokens
            )
            for i in range(topo.n_p)
        ],
        decoders(LOCAL, topo.n_d),
        local_cache,
    )
    sites = {LOCAL: local}
    links = {(LOCAL, LOCAL): spec.intra_site}
    if topo.kind == "colocated":
        # Each instance prefills and decodes on the same GPUs: no KV moves, decode stalls during a prefill.
        for i, d in enumerate(local.decode_instances):
            d.name = f"{LOCAL}-c{i}"
        local.prefill_instances = [
            PrefillInstance(
                d.name, spec.local, local_cache, colocated=d, max_batch_tokens=spec.prefill_batch_tokens
            )
            for d in local.decode_instances
        ]
    if topo.n_prfaas > 0:
        if spec.remote is None:
            raise ValueError("a topology with remote prefill instances needs remote hardware")
        remote_cache = cache()
        sites[REMOTE] = Site(
            REMOTE,
            [
                PrefillInstance(
                    f"{REMOTE}-p{i}", spec.remote, remote_cache, max_batch_tokens=spec.prefill_batch_tokens
                )
                for i in range(topo.n_prfaas)
            ],
            (),
            remote_cache,
        )
        links.update(
            {(REMOTE, LOCAL): spec.link, (LOCAL, REMOTE): spec.link, (REMOTE, REMOTE): spec.intra_site}
        )
    transport = FluidTransport(links)
    ports: dict[str, SitePort] = {}
    for name, site in sites.items():
        # A message from another site (the prompt, a request for KV) crosses that site's link to here.
        inbound = {src: transport.links[(src, dst)] for (src, dst) in links if dst == name and src != name}
        ports[name] = InProcessSite(site, transport, spec.local, peers=ports, inbound=inbound)
    schedule = LinkSchedule(transport.links, spec.link_events) if spec.link_events else None
    return Cluster(ports, make_router(spec, topo), links=transport.links, home=LOCAL, link_schedule=schedule)


def make_router(spec: StackSpec, topo: TopologyPlan) -> Router:
    if topo.kind == "homogeneous":
        return HomogeneousRouter(LOCAL)
    if topo.kind == "colocated":
        return ColocatedRouter(LOCAL)
    if topo.kind == "naive":
        return NaiveRouter(LOCAL, REMOTE)
    if topo.kind == "prfaas":
        if topo.threshold_tokens is None:
            raise ValueError(f"topology {topo.name}: prfaas needs a threshold")
        ba = spec.bandwidth_aware
        return PrfaasRouter(
            topo.threshold_tokens,
            LOCAL,
            REMOTE,
            cache=spec.prfaas_cache,
            bandwidth_aware=ba and BandwidthAware(**vars(ba)),
        )
    raise ValueError(f"unknown topology kind {topo.kind!r}; known: {', '.join(KINDS)}")
