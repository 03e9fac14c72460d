"""Inter-site network emulation: sites are namespaces, links are shaped veth pairs (pyroute2 only).

Public API::

    Network.from_scenario(path_or_scenario, prefix="pfb-", backend=None) -> Network
    with net.up() as net: net.address(site), net.spawn(site, argv), net.set_link(src, dst, ...),
                          net.run_events(), net.backend, net.status()
    probe() -> ProbeReport;  backend_name() -> "netem" | "relay" | "app-delay"
    LinkSpec, NetworkSpec, parse_network(table), render_egress(spec, backend)
"""

from harness.network.build import DEFAULT_PREFIX, Network
from harness.network.probe import BACKENDS, ProbeReport, backend_name, probe
from harness.network.render import QdiscOp, render_egress, render_interface
from harness.network.schedule import Change, EventScheduler, timeline
from harness.network.spec import Link, LinkEvent, LinkSpec, NetworkSpec, parse_network
from harness.network.sweep import owned_namespaces, sweep
from harness.network.topology import Topology, tcp_buffers

__all__ = [
    "BACKENDS",
    "DEFAULT_PREFIX",
    "Change",
    "EventScheduler",
    "Link",
    "LinkEvent",
    "LinkSpec",
    "Network",
    "NetworkSpec",
    "ProbeReport",
    "QdiscOp",
    "Topology",
    "backend_name",
    "owned_namespaces",
    "parse_network",
    "probe",
    "render_egress",
    "render_interface",
    "sweep",
    "tcp_buffers",
    "timeline",
]
