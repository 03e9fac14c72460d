"""How the request lifecycle reaches a site: the ``SitePort`` interface and its in-process implementation.

A port is a site the lifecycle (``harness/serving/cluster.py``) can ask to prefill, to send KV it
holds, to receive KV, and to decode. ``InProcessSite`` is a ``Site`` in this process: every site in
``simulate``, and a site process's own site in ``serve``. ``harness.emulation.peers.HttpSite`` is the
other implementation: a site in another ``serve`` process, reached with the PD prefill leg and the KV
push over HTTP.

The prefill site's work — pull a cached prefix from the site holding it, then prefill while the KV
leaves for the decode site — is ``InProcessSite.prefill``, so it runs in whichever process holds the
site: called by the lifecycle directly, or by ``serve``'s prefill-leg endpoint for a router elsewhere.

A message between sites takes time: the prompt forwarded to the prefill site, or a request for KV sent
to the site holding it, crosses the link first. In ``simulate`` ``InProcessSite`` has the link model
carry it (``inbound``: the one-way delay, and a wait while the link is down); in ``serve`` the network
itself does.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from harness.model.cost import InstanceCost
from harness.serving.instances import TokenStream
from harness.serving.router import SiteView
from harness.serving.site import PrefillResult, ServeRequest, Site
from harness.serving.transport import KVTransport

KV_WAIT_S = 600.0  # loop seconds a site waits for KV from another process before giving up


@dataclass(frozen=True, slots=True)
class PrefillJob:
    """A prefill the lifecycle asks a site for.

    ``origin`` sent the prompt (the router's site); the KV goes to ``decode_site``. With
    ``prefix_site`` set (cache-aware global routing), the site first pulls the KV of the prompt's first
    ``prefix_tokens`` tokens from there, and they count as cached. ``colocated``: decode happens on the
    GPUs that prefill, so no KV moves.
    """

    request: ServeRequest
    decode_site: str
    origin: str
    prefix_site: str | None = None
    prefix_tokens: int = 0
    colocated: bool = False


class SitePort(SiteView, Protocol):
    """A site the request lifecycle can ask to prefill, send or receive KV, and decode."""

    name: str

    async def prefill(self, job: PrefillJob) -> PrefillResult:
        """The prompt reaches the site, which pulls the job's prefix, prefills and sends the KV to the
        decode site; returns once the KV has been delivered."""
        ...

    async def push_kv(self, transfer_id: str, dst_site: str, nbytes: int) -> None:
        """Asked by ``dst_site``: send it ``nbytes`` of KV this site holds; returns once delivered."""
        ...

    async def receive_kv(self, transfer_id: str, src_site: str) -> None:
        """Wait until transfer ``transfer_id`` from ``src_site`` has arrived here, and claim it."""
        ...

    def decode(
        self, req: ServeRequest, instance: str | None = None, *, first_token_s: float | None = None
    ) -> tuple[str, TokenStream]:
        """Start decoding ``req`` (its KV is here) on ``instance`` or the least-loaded one; returns the
        instance's name and the token stream. ``first_token_s``: its first token is already out,
        sampled by a prefill on the same GPUs (colocated)."""
        ...


class MessageLink(Protocol):
    """The link a message from another site crosses (``harness.serving.transport.FluidLink``)."""

    async def carry_message(self) -> None: ...


class KvInbox(Protocol):
    """Where KV from other processes lands (``serve``: ``harness.emulation.kvlink.KvReceiver``)."""

    async def wait(self, transfer_id: str, timeout_s: float | None = None) -> Any: ...


def prefix_transfer_id(request_id: str) -> str:
    """The id of the transfer that pulls ``request_id``'s cached prefix (32 hex digits, deterministic)."""
    return uuid.uuid5(uuid.NAMESPACE_OID, f"{request_id}/prefix").hex


class InProcessSite:
    """``SitePort`` of a ``Site`` in this process.

    ``transport`` carries its KV out; ``peers`` are the ports of every site of the cluster (itself
    included), to pull a prefix from; ``inbound`` maps another site to the link a message from it
    crosses (simulate's link model; empty in serve). ``inbox``: where KV sent by another
    process arrives (serve); without one, every transfer is in this process and has arrived when its
    sender's ``transfer`` returns.
    """

    def __init__(
        self,
        site: Site,
        transport: KVTransport,
        kv_cost: InstanceCost,
        *,
        peers: Mapping[str, SitePort],
        inbound: Mapping[str, MessageLink] | None = None,
        inbox: KvInbox | None = None,
        kv_wait_s: float = KV_WAIT_S,
    ) -> None:
        self.site = site
        self.name = site.name
        self.transport = transport
        self.kv_cost = kv_cost
        self.peers = peers
        self.inbound = dict(inbound or {})
        self.inbox = inbox
        self.kv_wait_s = kv_wait_s

    def __repr__(self) -> str:
        return f"<InProcessSite {self.site!r}>"

    # ------------------------------------------------------------------ SiteView
    def cached_prefix(self, req: ServeRequest) -> int:
        return self.site.cached_prefix(req)

    def prefill_load_s(self, now: float) -> float:
        return self.site.prefill_load_s(now)

    # ------------------------------------------------------------------ SitePort
    async def prefill(self, job: PrefillJob) -> PrefillResult:
        req = job.request
        await self._arrive(job.origin)  # the prompt crosses the link first
        if job.prefix_site is not None:
            await self._pull(req, job.prefix_site, job.prefix_tokens)
        transport = None if job.colocated else self.transport
        kv_bytes = self.kv_cost.kv_bytes(req.prompt_tokens)
        return await self.site.prefill(
            req, job.decode_site, transport, kv_bytes, fetched_tokens=job.prefix_tokens
        )

    async def push_kv(self, transfer_id: str, dst_site: str, nbytes: int) -> None:
        await self._arrive(dst_site)  # the request for it crossed the link
        now = asyncio.get_running_loop().time()
        await self.transport.transfer(transfer_id, self.name, dst_site, nbytes, now, 0.0)

    async def receive_kv(self, transfer_id: str, src_site: str) -> None:
        if self.inbox is None or src_site == self.name:
            return  # moved inside this process: it had arrived when the sender's transfer returned
        try:
            await self.inbox.wait(transfer_id, timeout_s=self.kv_wait_s)
        except TimeoutError:
            raise TimeoutError(f"KV transfer {transfer_id} from site {src_site} did not arrive") from None

    def decode(
        self, req: ServeRequest, instance: str | None = None, *, first_token_s: float | None = None
    ) -> tuple[str, TokenStream]:
        chosen, stream = self.site.decode(req, instance, first_token_s=first_token_s)
        return chosen.name, stream

    # ------------------------------------------------------------------ the prefill site's work
    async def _pull(self, req: ServeRequest, holder: str, tokens: int) -> None:
        """Fetch the KV of ``req``'s first ``tokens`` tokens from the site holding them."""
        tid = prefix_transfer_id(req.request_id)
        await self.peers[holder].push_kv(tid, self.name, self.kv_cost.kv_bytes(tokens))
        await self.receive_kv(tid, holder)

    async def _arrive(self, src_site: str) -> None:
        link = self.inbound.get(src_site) if src_site != self.name else None
        if link is not None:
            await link.carry_message()
