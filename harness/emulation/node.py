"""One site process's share of each emulated topology: its site, the lifecycle over every site, counters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from harness.emulation.transport import EmulatedTransport
from harness.serving.cluster import Cluster
from harness.serving.site import Site


@dataclass
class TopologyNode:
    """Topology ``name`` as seen from site ``here``.

    ``site`` is this process's ``Site``; ``cluster`` runs the request lifecycle with this site in
    process and every other site over HTTP (its router decides only where ``here`` is the cluster's
    home); ``transport`` carries this site's KV out; ``peers`` maps every other site of the topology to
    the base URL of its process for this topology (``http://host:port/<name>``).
    """

    name: str
    here: str
    site: Site
    cluster: Cluster
    transport: EmulatedTransport
    peers: Mapping[str, str] = field(default_factory=dict)
    waiting: int = 0  # accepted requests that have not started decoding (or finished a prefill leg)
    accepted: int = 0
    rejected: int = 0
    failed: int = 0

    @property
    def is_router(self) -> bool:
        """Whether this process is the topology's router (the PD proxy that clients call)."""
        return self.here == self.cluster.home
