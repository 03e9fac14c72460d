"""The request lifecycle over sites: route, forward, prefill (+ KV push), decode, and the outcome.

``Cluster.handle(req)`` is the one coroutine a request runs through in ``simulate``. Its steps are the
calls ``serve``'s proxy makes over HTTP: the router decides from a ``ClusterView``, the prefill site's
``prefill`` pushes KV to the decode site, the decode site's ``decode`` streams tokens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from harness.model.cost import InstanceCost
from harness.serving.instances import DecodeRejected, TokenStream
from harness.serving.router import ClusterView, Route, Router
from harness.serving.site import PrefillResult, ServeRequest, Site
from harness.serving.transport import FluidTransport, KVTransport


@dataclass(slots=True)
class Outcome:
    """Everything one request went through (loop-clock times); the simulator turns it into a record."""

    request: ServeRequest
    route: Route | None = None
    prefill: PrefillResult | None = None
    decode_site: str | None = None
    decode_instance: str | None = None
    decode_start_s: float | None = None
    token_times: np.ndarray = field(default_factory=lambda: np.zeros(0))
    error: BaseException | None = None


class Cluster:
    """Sites, a router, a KV transport and the site the router (and the client) lives in."""

    def __init__(
        self,
        sites: Mapping[str, Site],
        router: Router,
        transport: KVTransport,
        kv_cost: InstanceCost,
        *,
        home: str = "local",
        forward_delay_s: Mapping[str, float] | None = None,
    ) -> None:
        self.sites = dict(sites)
        self.router = router
        self.transport = transport
        self.kv_cost = kv_cost
        self.home = home
        # One-way delay for the prompt to reach a site's prefill (a remote site is across the link).
        self.forward_delay_s = dict(forward_delay_s or {})
        links = transport.links if isinstance(transport, FluidTransport) else {}
        self.view = ClusterView(self.sites, links)

    def __repr__(self) -> str:
        return f"<Cluster {self.router.name} {list(self.sites.values())}>"

    async def handle(
        self, req: ServeRequest, on_stream: Callable[[TokenStream], None] | None = None
    ) -> Outcome:
        """Serve one request end to end; errors end up in ``Outcome.error``, never raised."""
        loop = asyncio.get_running_loop()
        out = Outcome(req)
        try:
            out.route = route = self.router.route(req, self.view, loop.time())
            psite, dsite = self.sites[route.prefill_site], self.sites[route.decode_site]
            delay = (
                self.forward_delay_s.get(route.prefill_site, 0.0) if route.prefill_site != self.home else 0.0
            )
            if delay > 0:
                await asyncio.sleep(delay)
            transport = None if route.route == "colocated" else self.transport
            if route.prefix_site is not None and transport is not None:
                # Cache-aware (global): pull the cached prefix's KV from the site holding it first.
                pbytes = self.kv_cost.kv_bytes(route.prefix_tokens)
                await transport.transfer(req, route.prefix_site, route.prefill_site, pbytes, loop.time(), 0.0)
            nbytes = self.kv_cost.kv_bytes(req.prompt_tokens)
            out.prefill = await psite.prefill(
                req, route.decode_site, transport, nbytes, fetched_tokens=route.prefix_tokens
            )
            # Colocated: decode where the KV already is, on the instance that prefilled it.
            stay = out.prefill.times.instance if transport is None else None
            instance, stream = dsite.decode(req, stay)
            out.decode_site, out.decode_instance = dsite.name, instance.name
            if on_stream is not None:
                on_stream(stream)
            out.token_times = await stream.wait()
            out.decode_start_s = stream.admitted_s
        except DecodeRejected as exc:
            out.error = exc
        return out
