"""The other site processes, as this one reaches them: ``HttpSite`` (the request lifecycle's
``SitePort`` over HTTP, which is also the router's view of that site) and ``Peers`` (the HTTP calls:
PD prefill legs, KV pushes, health pings, over one pooled session)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from harness.emulation.api import ApiError
from harness.emulation.wire import ClientRequest, WallClock, prefill_leg_body, prefill_result
from harness.serving.cache import PrefixCache
from harness.serving.instances import TokenStream
from harness.serving.ports import PrefillJob
from harness.serving.site import PrefillResult, ServeRequest, Site


class Peers:
    """One pooled client session for every peer site (opened on first use, closed with the app)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def ping(self, base_url: str) -> str:
        """ "ok", or what went wrong reaching ``base_url/health``."""
        try:
            async with self.session().get(base_url + "/health") as resp:
                return "ok" if resp.status == 200 else f"HTTP {resp.status}"
        except aiohttp.ClientError as exc:
            return f"unreachable: {exc}"

    async def prefill_leg(self, site: str, url: str, leg: Mapping[str, Any]) -> Mapping[str, Any]:
        """POST a prefill leg; the ``kv_transfer_params`` it returns. Peer errors become ``ApiError``
        with the peer's status (a 429 keeps its Retry-After); an unreachable peer is a 502."""
        try:
            async with self.session().post(url, json=leg) as resp:
                payload = await resp.json(content_type=None)
                if resp.status != 200:
                    err = payload.get("error", {}) if isinstance(payload, dict) else {}
                    retry = resp.headers.get("Retry-After")
                    raise ApiError(
                        resp.status,
                        f"prefill site {site}: {err.get('message', payload)}",
                        retry_after_s=int(retry) if retry and retry.isdigit() else None,
                    )
        except (aiohttp.ClientError, json.JSONDecodeError) as exc:
            raise ApiError(502, f"prefill site {site} unreachable: {exc}") from None
        params = payload.get("kv_transfer_params") if isinstance(payload, dict) else None
        if not isinstance(params, dict):
            raise ApiError(502, f"prefill site {site} returned no kv_transfer_params")
        return params

    async def kv_push(self, site: str, url: str, push: Mapping[str, Any]) -> None:
        """Ask ``site`` to push KV bytes (``{"transfer_id", "nbytes", "dst_site"}``) and wait until sent."""
        try:
            async with self.session().post(url, json=push) as resp:
                if resp.status != 200:
                    raise ApiError(502, f"prefix holder {site}: HTTP {resp.status} {await resp.text()}")
        except aiohttp.ClientError as exc:
            raise ApiError(502, f"prefix holder {site} unreachable: {exc}") from None


class HttpSite:
    """``SitePort`` of a site that runs in another process of the emulated cluster.

    ``prefill`` sends the PD prefill leg (the client's request, so the prompt crosses the link) to
    ``base_url`` (``http://host:port/<topology>``) and reads the prefill back from the
    ``kv_transfer_params`` it returns; the site pulls any prefix itself. ``push_kv`` asks the site to
    send KV it holds (``/internal/kv_push``). ``app_delay_s`` is the one-way delay the application adds
    to every message to it where the kernel adds none (the rootless fallback; 0 on a shaped link).

    It is also the router's ``SiteView`` of that site: ``shadow`` is a locally built copy of it (same
    cache capacity) whose prefix cache mirrors the remote one, fed with every prompt prefilled there;
    the prefill backlog is the figure the site reported with its last prefill leg, aged by the time
    since. Decoding and receiving KV happen only in the router's process, never through this port.
    """

    def __init__(
        self, shadow: Site, base_url: str, peers: Peers, clock: WallClock, *, app_delay_s: float = 0.0
    ) -> None:
        self.name = shadow.name
        self.base_url = base_url
        self.peers = peers
        self.clock = clock
        self.app_delay_s = app_delay_s
        self._shadow = shadow
        self._load_s = 0.0
        self._load_at = 0.0

    def __repr__(self) -> str:
        return f"<HttpSite {self.name} {self.base_url}>"

    # ------------------------------------------------------------------ SiteView
    def cached_prefix(self, req: ServeRequest) -> int:
        return self._shadow.cached_prefix(req)

    @property
    def mirror(self) -> PrefixCache | None:
        """The router's mirror of the site's prefix cache (``POST /reset`` clears it with the site's)."""
        return self._shadow.cache

    def prefill_load_s(self, now: float) -> float:
        return max(0.0, self._load_s - (now - self._load_at))

    # ------------------------------------------------------------------ SitePort
    async def prefill(self, job: PrefillJob) -> PrefillResult:
        req = job.request
        if job.colocated or not isinstance(req.payload, ClientRequest):
            raise ValueError(f"site {self.name} is in another process: it takes only PD prefill legs")
        extra: dict[str, Any] = {}
        if job.prefix_site is not None:
            extra = {"prefix_site": job.prefix_site, "prefix_tokens": job.prefix_tokens}
        leg = prefill_leg_body(
            req.payload.body, transfer_id=req.request_id, decode_site=job.decode_site, extra=extra
        )
        await self._delay()
        params = await self.peers.prefill_leg(self.name, self.base_url + req.payload.path, leg)
        try:
            result = prefill_result(params, self.clock)
        except (KeyError, TypeError, ValueError) as exc:
            raise ApiError(
                502, f"prefill site {self.name} returned bad kv_transfer_params: {exc!r}"
            ) from None
        self._note_prefill(req, params.get("prefill_load_s"))
        return result

    async def push_kv(self, transfer_id: str, dst_site: str, nbytes: int) -> None:
        push = {"transfer_id": transfer_id, "nbytes": nbytes, "dst_site": dst_site}
        await self._delay()
        await self.peers.kv_push(self.name, self.base_url + "/internal/kv_push", push)

    async def receive_kv(self, transfer_id: str, src_site: str) -> None:
        raise RuntimeError(f"site {self.name} is in another process: KV is received where the router is")

    def decode(
        self, req: ServeRequest, instance: str | None = None, *, first_token_s: float | None = None
    ) -> tuple[str, TokenStream]:
        raise RuntimeError(f"site {self.name} is in another process: serve decodes where the router is")

    # ------------------------------------------------------------------ the mirror
    def _note_prefill(self, req: ServeRequest, load_s: Any) -> None:
        """Mirror a prefill the site finished, and keep the backlog it reported then."""
        cache = self._shadow.cache
        if cache is not None:
            cache.lookup(req.hash_ids, req.prompt_tokens)
            cache.insert(req.hash_ids, req.prompt_tokens)
        if isinstance(load_s, int | float):
            self._load_s, self._load_at = float(load_s), asyncio.get_running_loop().time()

    async def _delay(self) -> None:
        if self.app_delay_s > 0:
            await asyncio.sleep(self.app_delay_s)
