"""One description of the serving stack — instances, batching, prefix caches, KV transport, routers —
written as plain asyncio objects and driven by whichever clock the running loop has.

``simulate`` runs it on ``VirtualTimeLoop`` (virtual time); ``serve`` runs the same objects on a real
(or sped-up) loop behind HTTP. docs/simulate.md describes the architecture.
"""

from harness.config.links import ModelledLink
from harness.serving.cache import CacheShape, PrefixCache, cache_shape
from harness.serving.clock import VirtualTimeDeadlock, VirtualTimeLoop, run_virtual
from harness.serving.cluster import Cluster, Outcome
from harness.serving.instances import (
    DecodeInstance,
    DecodeRejected,
    PrefillInstance,
    PrefillTimes,
    TokenStream,
)
from harness.serving.ports import InProcessSite, PrefillJob, SitePort
from harness.serving.router import (
    BandwidthAware,
    ClusterView,
    ColocatedRouter,
    HomogeneousRouter,
    NaiveRouter,
    PrfaasRouter,
    Route,
    Router,
    SiteView,
)
from harness.serving.site import PrefillResult, ServeRequest, Site
from harness.serving.transport import FluidLink, FluidTransport, KVTransport, LinkView

__all__ = [
    "BandwidthAware",
    "CacheShape",
    "Cluster",
    "ClusterView",
    "ColocatedRouter",
    "DecodeInstance",
    "DecodeRejected",
    "FluidLink",
    "FluidTransport",
    "HomogeneousRouter",
    "InProcessSite",
    "KVTransport",
    "LinkView",
    "ModelledLink",
    "NaiveRouter",
    "Outcome",
    "PrefillInstance",
    "PrefillJob",
    "PrefillResult",
    "PrefillTimes",
    "PrefixCache",
    "PrfaasRouter",
    "Route",
    "Router",
    "ServeRequest",
    "Site",
    "SitePort",
    "SiteView",
    "TokenStream",
    "VirtualTimeDeadlock",
    "VirtualTimeLoop",
    "cache_shape",
    "run_virtual",
]
