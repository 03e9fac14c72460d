"""Router policies: decide where a request prefills and where it decodes, from a read-only view.

A policy sees only ``ClusterView`` (cached prefix per site, prefill backlog, link utilisation and
backlog), so the same code routes in ``simulate`` and in ``serve``'s router, where a site in another
process is seen through its ``SiteView`` and the link through a meter of the KV bytes that arrive.

    homogeneous  prefill and decode in the local site (PD over the site's RDMA fabric)
    naive        every prefill in the remote site, every decode local; no length routing
    prfaas       uncached length l > t goes to the remote PrfaaS site, the rest prefill locally.
                 cache="local": l counts the local site's prefix (scarce bandwidth);
                 cache="global": l counts the longest prefix held anywhere (plentiful bandwidth);
                 a prefix held by the other site is pulled over the link before the prefill.
                 bandwidth-aware: t rises when the link or the remote queue nears its limit, and
                 falls when the link has room and the local prefill queue is the longer one.
    colocated    prefill and decode on the local site with no KV movement (a reference)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol

from harness.serving.site import ServeRequest
from harness.serving.transport import LinkView


@dataclass(frozen=True, slots=True)
class Route:
    """A routing decision. ``route`` is the record's label: "local", "remote" or "colocated"."""

    route: str
    prefill_site: str
    decode_site: str
    uncached_tokens: int
    threshold_tokens: float | None = None
    # Cache-aware (global): fetch ``prefix_tokens`` of cached KV from ``prefix_site`` before prefilling.
    prefix_site: str | None = None
    prefix_tokens: int = 0


class SiteView(Protocol):
    """What a router may read of a site; reading has no side effects."""

    def cached_prefix(self, req: ServeRequest) -> int:
        """Tokens of ``req``'s prompt the site's prefix cache holds now."""
        ...

    def prefill_load_s(self, now: float) -> float:
        """Least estimated prefill backlog (seconds) over the site's prefill instances."""
        ...


class ClusterView:
    """What a router may look at: the sites and the inter-site links (``transport.LinkView``)."""

    def __init__(self, sites: Mapping[str, SiteView], links: Mapping[tuple[str, str], LinkView]) -> None:
        self.sites = sites
        self.links = links

    def cached(self, site: str, req: ServeRequest) -> int:
        return self.sites[site].cached_prefix(req)

    def prefill_load_s(self, site: str, now: float) -> float:
        return self.sites[site].prefill_load_s(now)

    def link(self, src: str, dst: str) -> LinkView | None:
        return self.links.get((src, dst))


class Router(Protocol):
    name: str

    def route(self, req: ServeRequest, view: ClusterView, now: float) -> Route: ...


@dataclass
class HomogeneousRouter:
    local: str = "local"
    name: str = "homogeneous"
    label: ClassVar[str] = "local"  # the Route's label

    def route(self, req: ServeRequest, view: ClusterView, now: float) -> Route:
        return Route(self.label, self.local, self.local, req.prompt_tokens - view.cached(self.local, req))


@dataclass
class ColocatedRouter(HomogeneousRouter):
    name: str = "colocated"
    label: ClassVar[str] = "colocated"


@dataclass
class NaiveRouter:
    local: str = "local"
    remote: str = "remote"
    name: str = "naive"

    def route(self, req: ServeRequest, view: ClusterView, now: float) -> Route:
        return Route("remote", self.remote, self.local, req.prompt_tokens - view.cached(self.remote, req))


@dataclass
class BandwidthAware:
    """Re-tunes the threshold at most every ``interval_s`` from the remote->local link and the queues.

    Raise t by ``step`` (multiplicative) when link utilisation (``LinkView``: delivered over the
    trailing window) exceeds ``high_util`` or its backlog exceeds ``max_backlog_s`` of transfer time,
    or when the remote prefill backlog exceeds the local one by ``queue_margin_s``; lower it when
    utilisation is below ``low_util`` and the local backlog is the longer by that margin. t stays
    within [t_min, t_max].
    """

    high_util: float = 0.9
    low_util: float = 0.5
    max_backlog_s: float = 1.0
    queue_margin_s: float = 5.0
    step: float = 1.05
    interval_s: float = 1.0
    t_min: float = 1024.0
    t_max: float = 131072.0


@dataclass
class PrfaasRouter:
    threshold_tokens: float
    local: str = "local"
    remote: str = "remote"
    cache: str = "local"  # "local" | "global"
    bandwidth_aware: BandwidthAware | None = None
    name: str = "prfaas"
    _last_tune: float = float("-inf")

    def __post_init__(self) -> None:
        if self.threshold_tokens < 0:
            raise ValueError("prfaas threshold must be >= 0")
        if self.cache not in ("local", "global"):
            raise ValueError(f"prfaas cache mode must be 'local' or 'global', got {self.cache!r}")

    def route(self, req: ServeRequest, view: ClusterView, now: float) -> Route:
        if self.bandwidth_aware is not None:
            self._tune(view, now)
        hits = {self.local: view.cached(self.local, req)}
        if self.cache == "global":
            hits[self.remote] = view.cached(self.remote, req)
        holder = max(hits, key=hits.__getitem__)  # ties: the local site (first)
        uncached = req.prompt_tokens - hits[holder]
        t = self.threshold_tokens
        site = self.remote if uncached > t else self.local
        fetch = holder != site and hits[holder] > hits.get(site, 0)
        return Route(
            "remote" if site == self.remote else "local",
            site,
            self.local,
            uncached,
            t,
            prefix_site=holder if fetch else None,
            prefix_tokens=hits[holder] if fetch else 0,
        )

    def _tune(self, view: ClusterView, now: float) -> None:
        ba = self.bandwidth_aware
        assert ba is not None
        if now - self._last_tune < ba.interval_s:
            return
        self._last_tune = now
        link = view.link(self.remote, self.local)
        util = link.utilisation(now) if link else 0.0
        backlog_s = link.backlog_bytes(now) / link.capacity if link else 0.0
        remote_q, local_q = view.prefill_load_s(self.remote, now), view.prefill_load_s(self.local, now)
        t = self.threshold_tokens
        if util > ba.high_util or backlog_s > ba.max_backlog_s or remote_q > local_q + ba.queue_margin_s:
            t *= ba.step
        elif util < ba.low_util and local_q > remote_q + ba.queue_margin_s:
            t /= ba.step
        self.threshold_tokens = min(max(t, ba.t_min), ba.t_max)
