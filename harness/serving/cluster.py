"""The request lifecycle, written once: route, forward the prompt, prefill (pulling a cached prefix
first) while the KV moves, receive the KV at the decode site, decode.

``Cluster.dispatch`` runs it for one request over ``SitePort``s (``harness/serving/ports.py``) and
returns as decoding starts. ``simulate`` calls it through ``Cluster.handle``, which also waits for the
last token, with every site in its process. ``serve``'s router calls ``dispatch`` with its own site in
its process and the other sites over HTTP (``harness.emulation.peers.HttpSite``), then streams the
tokens to the client. docs/architecture.md follows one request through both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from harness.serving.instances import TokenStream
from harness.serving.linkevents import LinkSchedule
from harness.serving.ports import InProcessSite, PrefillJob, SitePort
from harness.serving.router import ClusterView, Route, Router
from harness.serving.site import PrefillResult, ServeRequest
from harness.serving.transport import LinkView


@dataclass(slots=True)
class Outcome:
    """Everything one request went through (loop-clock times); the simulator turns it into a record."""

    request: ServeRequest
    route: Route | None = None
    prefill: PrefillResult | None = None
    decode_site: str | None = None
    decode_instance: str | None = None
    stream: TokenStream | None = None
    decode_start_s: float | None = None
    token_times: np.ndarray = field(default_factory=lambda: np.zeros(0))
    error: BaseException | None = None


class Cluster:
    """A router, the sites it sends work to, and the links it watches.

    ``ports`` maps every site to its ``SitePort``; ``links`` are the ``LinkView``s the router may read;
    ``home`` is the site the router (and the client) lives in. ``sites`` are the ``Site`` objects that
    run in this process; ``routes`` counts the router's decisions by label. ``link_schedule``: what
    the scenario's link events do to ``links``, from the run clock's zero (``start``).
    """

    def __init__(
        self,
        ports: Mapping[str, SitePort],
        router: Router,
        *,
        links: Mapping[tuple[str, str], LinkView] | None = None,
        home: str = "local",
        link_schedule: LinkSchedule | None = None,
    ) -> None:
        self.ports = dict(ports)
        self.router = router
        self.links = dict(links or {})
        self.home = home
        self.sites = {n: p.site for n, p in self.ports.items() if isinstance(p, InProcessSite)}
        self.view = ClusterView(self.ports, self.links)
        self.routes: dict[str, int] = {}
        self.link_schedule = link_schedule

    def __repr__(self) -> str:
        return f"<Cluster {self.router.name} {list(self.ports.values())}>"

    def start(self, t0: float) -> None:
        """The run clock's zero is loop time ``t0`` (the first request's arrival): link events count
        from it."""
        if self.link_schedule is not None:
            self.link_schedule.arm(t0)

    async def dispatch(self, req: ServeRequest) -> Outcome:
        """Serve ``req`` up to the start of its decode (``Outcome.stream``); errors are raised."""
        out = Outcome(req)
        await self._dispatch(out)
        return out

    async def _dispatch(self, out: Outcome) -> None:
        req = out.request
        out.route = route = self.router.route(req, self.view, asyncio.get_running_loop().time())
        self.routes[route.route] = self.routes.get(route.route, 0) + 1
        colocated = route.route == "colocated"
        job = PrefillJob(
            req,
            decode_site=route.decode_site,
            origin=self.home,
            prefix_site=None if colocated else route.prefix_site,
            prefix_tokens=0 if colocated else route.prefix_tokens,
            colocated=colocated,
        )
        # The prefill site receives the prompt, pulls any cached prefix, prefills and sends the KV.
        out.prefill = await self.ports[route.prefill_site].prefill(job)
        decode = self.ports[route.decode_site]
        await decode.receive_kv(req.request_id, route.prefill_site)
        # Colocated: decode where the KV already is, on the instance that prefilled it; that prefill
        # sampled the first token as it ended (an engine's prefill step does), so no decode step waits
        # for it.
        stay = out.prefill.times.instance if colocated else None
        first = out.prefill.times.end_s if colocated else None
        out.decode_instance, out.stream = decode.decode(req, stay, first_token_s=first)
        out.decode_site = route.decode_site

    async def handle(self, req: ServeRequest) -> Outcome:
        """Serve ``req`` to its last token (simulate). A failure on the way (a prefill that raised, a
        refused decode, a link down for good) ends in ``Outcome.error`` with what was done so far."""
        out = Outcome(req)
        try:
            await self._dispatch(out)
            assert out.stream is not None
            try:
                out.token_times = await out.stream.wait()
            finally:
                out.decode_start_s = out.stream.admitted_s
        except Exception as exc:
            out.error = exc
        return out
