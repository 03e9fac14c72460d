"""Build one site process's share of every served topology from the serving stack's own builder.

Each process builds each topology whole with ``harness.serving.build.build_cluster`` (the builder
``simulate`` uses), with ``max_segment_steps = 1`` so decode tokens appear as each step ends, then
keeps its own site for real. Where the router lives (the topology's home site) the other sites'
copies become ``RemoteSiteView`` shadows for the routing policy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from harness.emulation.glue import EmulatedTransport, ReceivedLinkMeter, RemoteSiteView
from harness.emulation.kvlink import KvReceiver, KvSender
from harness.emulation.node import TopologyNode
from harness.serving.build import StackSpec, TopologyPlan, build_cluster
from harness.serving.router import ClusterView


def build_nodes(
    site: str,
    stack: StackSpec,
    plans: Mapping[str, TopologyPlan],
    *,
    sender: KvSender,
    receiver: KvReceiver,
    kv_addrs: Mapping[str, tuple[str, int]],
    http_urls: Mapping[str, str],
    byte_scale: float,
    layers: int,
    forward_delay_s: float = 0.0,
) -> dict[str, TopologyNode]:
    """Nodes for the topologies that have a site named ``site`` (call inside the serving loop).

    ``http_urls`` maps each site to its process's base URL (``http://host:port``); ``forward_delay_s``
    is an application-level one-way delay for prefill legs (only where the kernel adds none).
    """
    stack = dataclasses.replace(stack, max_segment_steps=1)
    nodes: dict[str, TopologyNode] = {}
    for name, plan in plans.items():
        cluster = build_cluster(stack, plan)
        if site not in cluster.sites:
            continue
        transport = EmulatedTransport(
            sender, kv_addrs, byte_scale=byte_scale, layers=layers, intra=cluster.transport
        )
        node = TopologyNode(
            name=name,
            here=site,
            site=cluster.sites[site],
            kv_cost=cluster.kv_cost,
            home=cluster.home,
            transport=transport,
            peers={s: f"{http_urls[s]}/{name}" for s in cluster.sites if s != site},
            forward_delay_s=forward_delay_s,
        )
        if site == cluster.home:
            others = [s for s in cluster.sites if s != site]
            capacity = stack.link.bandwidth_gbps * 1e9 / 8
            node.router = cluster.router
            node.view = ClusterView(
                {site: cluster.sites[site], **{s: RemoteSiteView(cluster.sites[s]) for s in others}},
                {
                    (s, site): ReceivedLinkMeter(
                        receiver, real_capacity_bytes_s=capacity, byte_scale=byte_scale
                    )
                    for s in others
                },
            )
        nodes[name] = node
    return nodes
