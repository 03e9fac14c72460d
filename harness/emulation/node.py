"""One site process's share of each emulated topology: the serving objects it runs and how it reaches peers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from harness.model.cost import InstanceCost
from harness.serving.router import ClusterView, Router
from harness.serving.site import Site
from harness.serving.transport import KVTransport


@dataclass
class TopologyNode:
    """Topology ``name`` as seen from site ``here``.

    ``site`` is this process's ``Site`` (None when the topology has no instances here); ``router`` and
    ``view`` are set where the router (the PD-proxy endpoint) lives; ``peers`` maps every other site
    of the topology to the base URL of its process for this topology (``http://host:port/<name>``).
    """

    name: str
    here: str
    site: Site | None
    kv_cost: InstanceCost
    home: str
    transport: KVTransport | None = None  # KV out of this site (None: the topology never prefills here)
    router: Router | None = None
    view: ClusterView | None = None
    peers: Mapping[str, str] = field(default_factory=dict)
    forward_delay_s: float = 0.0  # application-level delay before a prefill leg (rootless fallback only)
    waiting: int = 0  # accepted requests that have not started decoding (or finished a prefill leg)
    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    routes: dict[str, int] = field(default_factory=dict)
