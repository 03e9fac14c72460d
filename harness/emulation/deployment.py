"""Build one site process's share of every served topology from the serving stack's own builder.

Each process builds each topology whole with ``harness.serving.build.build_cluster`` (the builder
``simulate`` uses), with ``max_segment_steps = 1`` so decode tokens appear as each step ends, then
keeps its own site for real, behind an ``InProcessSite`` whose KV crosses the link over TCP. The other
sites become ``HttpSite`` ports to their processes; their locally built copies stay as the router's
mirrors of them. Where the router lives (the topology's home site) it reads the link into this process
through one ``ReceivedLinkMeter``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from harness.emulation.kvlink import KvReceiver, KvSender
from harness.emulation.node import TopologyNode
from harness.emulation.peers import HttpSite, Peers
from harness.emulation.transport import EmulatedTransport, ReceivedLinkMeter
from harness.emulation.wire import WallClock
from harness.serving.build import StackSpec, TopologyPlan, build_cluster
from harness.serving.cluster import Cluster
from harness.serving.ports import InProcessSite, SitePort
from harness.serving.transport import FluidTransport


def build_nodes(
    site: str,
    stack: StackSpec,
    plans: Mapping[str, TopologyPlan],
    *,
    sender: KvSender,
    receiver: KvReceiver,
    peers: Peers,
    clock: WallClock,
    kv_addrs: Mapping[str, tuple[str, int]],
    http_urls: Mapping[str, str],
    byte_scale: float,
    layers: int,
    app_delay_s: float = 0.0,
) -> dict[str, TopologyNode]:
    """Nodes for the topologies that have a site named ``site`` (call inside the serving loop).

    ``http_urls`` maps each site to its process's base URL (``http://host:port``); ``app_delay_s`` is
    the one-way delay (loop seconds) the application adds to each message to another site, only where
    the kernel adds none.
    """
    stack = dataclasses.replace(stack, max_segment_steps=1)
    meter: ReceivedLinkMeter | None = None
    nodes: dict[str, TopologyNode] = {}
    for name, plan in plans.items():
        built = build_cluster(stack, plan)
        if site not in built.sites:
            continue
        transport = EmulatedTransport(
            sender,
            kv_addrs,
            byte_scale=byte_scale,
            layers=layers,
            intra=FluidTransport({(site, site): stack.intra_site}),
        )
        urls = {s: f"{http_urls[s]}/{name}" for s in built.sites if s != site}
        ports: dict[str, SitePort] = {
            s: HttpSite(built.sites[s], url, peers, clock, app_delay_s=app_delay_s) for s, url in urls.items()
        }
        ports[site] = InProcessSite(built.sites[site], transport, stack.local, peers=ports, inbox=receiver)
        links: dict[tuple[str, str], ReceivedLinkMeter] = {}
        if site == built.home and urls:
            if meter is None:  # one link into this process, whichever topology's KV crosses it
                capacity = stack.link.bandwidth_gbps * 1e9 / 8
                meter = ReceivedLinkMeter(receiver, capacity_bytes_s=capacity, byte_scale=byte_scale)
            links = {(s, site): meter for s in urls}
        cluster = Cluster(ports, built.router, links=links, home=built.home)
        nodes[name] = TopologyNode(name, site, built.sites[site], cluster, transport, urls)
    return nodes
