"""One site's HTTP server: the OpenAI-compatible API, the PD-proxy legs and the router, over the serving stack.

Endpoints (``{t}`` is a topology name; the bare ``/v1/...`` paths serve the first topology):

    POST /{t}/v1/completions, /{t}/v1/chat/completions
         no kv_transfer_params              the router (PD proxy): route, prefill (here or on a peer
                                            via a prefill leg), wait for the KV, decode, stream
         kv_transfer_params.do_remote_decode  a prefill leg: prefill here, push KV, return params
         kv_transfer_params.do_remote_prefill a decode leg: wait for the KV transfer, decode, stream
    GET  /v1/models, /{t}/v1/models, /health, /metrics

The breakdown (``"prfaas"``) rides on the final chunk: the usage chunk when the client asked for
usage, else the last token chunk; non-streamed responses carry it at top level.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from harness.emulation import api
from harness.emulation.api import ApiError, GenRequest
from harness.emulation.glue import RemoteSiteView
from harness.emulation.kvlink import KvReceiver, KvSender
from harness.emulation.lag import LagProbe
from harness.emulation.metrics import collect
from harness.emulation.node import TopologyNode
from harness.emulation.peers import Peers
from harness.emulation.prometheus import CONTENT_TYPE, render
from harness.emulation.respond import respond_json, respond_sse
from harness.emulation.spec import EmulationSpec
from harness.emulation.wire import (
    WallClock,
    breakdown_from_params,
    prefill_fields,
    prefill_leg_body,
    prefill_leg_params,
)
from harness.serving.instances import DecodeRejected
from harness.serving.site import ServeRequest

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
KV_WAIT_S = 600.0  # loop seconds a decode leg waits for its KV before giving up


class SiteServer:
    """The aiohttp application of site ``site``; ``nodes`` are its share of each topology."""

    def __init__(
        self,
        site: str,
        nodes: Mapping[str, TopologyNode],
        *,
        spec: EmulationSpec,
        model: str,
        clock: WallClock,
        receiver: KvReceiver,
        sender: KvSender,
        kv_addr: tuple[str, int] | None = None,
    ) -> None:
        if not nodes:
            raise ValueError("a site server needs at least one topology")
        self.site, self.nodes, self.spec, self.model, self.clock = site, dict(nodes), spec, model, clock
        self.receiver, self.sender, self.kv_addr = receiver, sender, kv_addr
        self.default = next(iter(self.nodes))
        self.peers = Peers()
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.add_routes(
            [
                web.get("/health", self.health),
                web.get("/metrics", self.metrics),
                web.get("/v1/models", self.models),
                web.get("/{topology}/v1/models", self.models),
                web.post("/v1/completions", self.completions),
                web.post("/v1/chat/completions", self.chat),
                web.post("/{topology}/v1/completions", self.completions),
                web.post("/{topology}/v1/chat/completions", self.chat),
                web.post("/{topology}/internal/kv_push", self.kv_push),
            ]
        )
        self.lag = LagProbe(speedup=spec.speedup)
        self.app.on_startup.append(self._start_probe)
        self.app.on_cleanup.append(self._close_session)

    # ------------------------------------------------------------------ small endpoints
    async def health(self, request: web.Request) -> web.Response:
        """Liveness; with ``?peers=1`` also reaches every peer site (opening the router's connections)."""
        body: dict[str, Any] = {
            "status": "ok",
            "site": self.site,
            "topologies": list(self.nodes),
            "speedup": self.spec.speedup,
        }
        if request.query.get("peers"):
            peers = {url.rsplit("/", 1)[0] for node in self.nodes.values() for url in node.peers.values()}
            body["peers"] = {url: await self.peers.ping(url) for url in sorted(peers)}
        return web.json_response(body)

    async def models(self, request: web.Request) -> web.Response:
        self._node(request)
        card = {
            "id": self.model,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "prfaas-bench",
            "max_model_len": self.spec.context_tokens,
        }
        return web.json_response({"object": "list", "data": [card]})

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text; ``?reset_lag=1`` starts a fresh scheduling-lag window after reading."""
        text = render(collect(self))
        if request.query.get("reset_lag"):
            self.lag.reset()
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})

    # ------------------------------------------------------------------ generation
    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, api.COMPLETIONS)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, api.CHAT)

    def _node(self, request: web.Request) -> TopologyNode:
        name = request.match_info.get("topology", self.default)
        node = self.nodes.get(name)
        if node is None:
            raise web.HTTPNotFound(
                text=json.dumps(
                    ApiError(404, f"no topology {name!r} here (serving: {', '.join(self.nodes)})").body()
                ),
                content_type="application/json",
            )
        return node

    async def _generate(self, request: web.Request, kind: str) -> web.StreamResponse:
        node = self._node(request)
        try:
            try:
                body = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ApiError(400, "the request body is not valid JSON") from None
            req = api.parse_request(
                kind,
                body,
                models=(self.model,),
                context_tokens=self.spec.context_tokens,
                block_tokens=self.spec.block_tokens,
            )
            params = req.kv_transfer_params or {}
            if node.waiting >= self.spec.max_waiting:
                node.rejected += 1
                raise ApiError(
                    429,
                    f"site {self.site} has {node.waiting} requests waiting (limit {self.spec.max_waiting})",
                    retry_after_s=self.spec.retry_after_s,
                )
            node.accepted += 1
            if params.get("do_remote_decode"):
                return await self._prefill_leg(node, req, params)
            if params.get("do_remote_prefill"):
                return await self._decode_leg(request, node, req, params)
            return await self._routed(request, node, req, body)
        except ApiError as err:
            return web.json_response(err.body(), status=err.status, headers=err.headers())
        except DecodeRejected as exc:  # the sequence's KV can never fit a decode instance
            node.failed += 1
            return web.json_response(ApiError(400, str(exc)).body(), status=400)
        except (OSError, RuntimeError) as exc:
            # A peer or KV connection failed mid-request: an error answer, never a dropped connection.
            node.failed += 1
            err = ApiError(502 if isinstance(exc, OSError) else 500, f"{type(exc).__name__}: {exc}")
            return web.json_response(err.body(), status=err.status)

    def _serve_request(self, req: GenRequest, request_id: str, output_tokens: int) -> ServeRequest:
        return ServeRequest(
            request_id=request_id,
            arrival_s=asyncio.get_running_loop().time(),
            prompt_tokens=req.prompt_tokens,
            output_tokens=output_tokens,
            hash_ids=req.block_ids,
        )

    async def _prefill_here(
        self, node: TopologyNode, sreq: ServeRequest, dst: str, colocated: bool, fetched_tokens: int = 0
    ) -> dict[str, Any]:
        if node.site is None or not node.site.prefill_instances:
            raise ApiError(400, f"topology {node.name!r} has no prefill instances in site {self.site}")
        transport = None if colocated else node.transport
        nbytes = node.kv_cost.kv_bytes(sreq.prompt_tokens)
        result = await node.site.prefill(sreq, dst, transport, nbytes, fetched_tokens=fetched_tokens)
        fields = prefill_fields(result, self.clock)
        if colocated:
            for key in ("kv_bytes", "kv_transfer_start_s", "kv_transfer_end_s"):
                fields.pop(key)
        return fields

    async def _prefill_leg(
        self, node: TopologyNode, req: GenRequest, params: Mapping[str, Any]
    ) -> web.Response:
        """PD-proxy prefill leg: prefill here, push the KV to the decode site, return kv_transfer_params."""
        tid = params.get("transfer_id") or uuid.uuid4().hex
        if not isinstance(tid, str) or not _HEX32.match(tid):
            raise ApiError(
                400, "kv_transfer_params.transfer_id must be 32 hex digits", param="kv_transfer_params"
            )
        dst = params.get("decode_site") or node.home
        if dst != self.site and dst not in node.peers:
            raise ApiError(400, f"unknown decode site {dst!r}", param="kv_transfer_params")
        fetched = params.get("fetched_tokens", 0)
        if isinstance(fetched, bool) or not isinstance(fetched, int) or not 0 <= fetched < req.prompt_tokens:
            raise ApiError(
                400, "kv_transfer_params.fetched_tokens must be an integer below the prompt length"
            )
        node.waiting += 1
        try:
            prefix_tid = params.get("prefix_transfer_id")
            if isinstance(prefix_tid, str):  # a cached prefix pushed here first (cache-aware global mode)
                await self._await_kv(prefix_tid, {})
            sreq = self._serve_request(req, tid, 1)
            fields = await self._prefill_here(node, sreq, dst, colocated=False, fetched_tokens=fetched)
        finally:
            node.waiting -= 1
        assert node.site is not None
        kv_host, kv_port = self.kv_addr or (None, None)
        out = prefill_leg_params(
            fields,
            transfer_id=tid,
            engine_id=f"{self.site}/{fields['prefill_instance']}",
            host=kv_host,
            port=kv_port,
        )
        out["prefill_load_s"] = node.site.prefill_load_s(asyncio.get_running_loop().time())
        usage = api.usage(req.prompt_tokens, 1, fields["cached_tokens"])
        return web.json_response(api.full_response(req, api.TOKEN_TEXT, usage, {"kv_transfer_params": out}))

    async def _decode_leg(
        self, request: web.Request, node: TopologyNode, req: GenRequest, params: Mapping[str, Any]
    ) -> web.StreamResponse:
        """PD-proxy decode leg: wait for the KV named by ``transfer_id``, then decode and stream."""
        tid = params.get("transfer_id")
        if not isinstance(tid, str) or not _HEX32.match(tid):
            raise ApiError(
                400, "kv_transfer_params.transfer_id (32 hex digits) is required", param="kv_transfer_params"
            )
        breakdown = breakdown_from_params(params)
        breakdown["route"] = "remote" if params.get("prefill_site") not in (None, self.site) else "local"
        node.waiting += 1
        try:
            await self._await_kv(tid, params)
        finally:
            node.waiting -= 1
        return await self._decode_and_respond(request, node, req, tid, breakdown)

    async def _await_kv(self, tid: str, params: Mapping[str, Any]) -> None:
        """Wait for (and claim) the KV of a prefill made in another site; a local one is already here."""
        if params.get("prefill_site") == self.site:
            return  # the fabric transfer inside this site ended before the prefill returned
        try:
            await self.receiver.wait(tid, timeout_s=KV_WAIT_S)
        except TimeoutError:
            raise ApiError(504, f"KV transfer {tid} did not arrive") from None

    async def _routed(
        self, request: web.Request, node: TopologyNode, req: GenRequest, body: Mapping[str, Any]
    ) -> web.StreamResponse:
        """The router: the serving policy picks the sites; prefill legs to peers go over HTTP."""
        if node.router is None or node.view is None:
            raise ApiError(
                400,
                f"site {self.site} is not a router for {node.name!r}: send PD legs (kv_transfer_params) here",
                param="kv_transfer_params",
            )
        loop = asyncio.get_running_loop()
        sreq = self._serve_request(req, uuid.uuid4().hex, req.max_tokens)
        route = node.router.route(sreq, node.view, loop.time())
        if route.decode_site != self.site:
            raise ApiError(
                500, f"router chose decode site {route.decode_site!r}; only {self.site!r} decodes here"
            )
        node.routes[route.route] = node.routes.get(route.route, 0) + 1
        colocated = route.route == "colocated"
        node.waiting += 1
        try:
            extra: dict[str, Any] = {}
            if route.prefix_site is not None and not colocated:
                extra = await self._pull_prefix(
                    node, sreq, route.prefix_site, route.prefill_site, route.prefix_tokens
                )
            if route.prefill_site == self.site:
                fields = await self._prefill_here(
                    node, sreq, self.site, colocated=colocated, fetched_tokens=route.prefix_tokens
                )
            else:
                params = await self._remote_prefill(node, route.prefill_site, req, body, sreq, extra)
                fields = breakdown_from_params(params)
                view = node.view.sites.get(route.prefill_site)
                if isinstance(view, RemoteSiteView):
                    view.note_prefill(sreq, params.get("prefill_load_s"), loop.time())
                await self._await_kv(sreq.request_id, params)
        finally:
            node.waiting -= 1
        fields["route"] = route.route
        # Colocated: decode on the instance that prefilled (the KV never left its GPUs).
        stay = fields["prefill_instance"] if colocated else None
        return await self._decode_and_respond(request, node, req, sreq.request_id, fields, stay)

    async def _pull_prefix(
        self, node: TopologyNode, sreq: ServeRequest, holder: str, prefill_site: str, tokens: int
    ) -> dict[str, Any]:
        """Cache-aware (global) routing: move a cached prefix's KV from ``holder`` to ``prefill_site``
        before the prefill, as simulate's cluster does. Returns prefill-leg params naming the transfer."""
        nbytes = node.kv_cost.kv_bytes(tokens)
        tid = uuid.uuid4().hex
        if holder == self.site:  # push it from here; the remote prefill leg claims it
            assert node.transport is not None
            pull = dataclasses.replace(sreq, request_id=tid)
            await node.transport.transfer(
                pull, holder, prefill_site, nbytes, asyncio.get_running_loop().time(), 0.0
            )
            return {"prefix_transfer_id": tid, "fetched_tokens": tokens}
        push = {"transfer_id": tid, "nbytes": nbytes, "dst_site": prefill_site}
        await self.peers.kv_push(holder, node.peers[holder] + "/internal/kv_push", push)
        if prefill_site == self.site:
            await self._await_kv(tid, {})
        return {"fetched_tokens": tokens}

    async def kv_push(self, request: web.Request) -> web.Response:
        """Internal: push ``nbytes`` (modelled) of KV to ``dst_site`` now, as ``transfer_id``."""
        node = self._node(request)
        try:
            body = await request.json()
            tid, nbytes, dst = body["transfer_id"], body["nbytes"], body["dst_site"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return web.json_response(
                ApiError(400, "need transfer_id, nbytes and dst_site").body(), status=400
            )
        if not (isinstance(tid, str) and _HEX32.match(tid) and isinstance(nbytes, int) and nbytes > 0):
            return web.json_response(ApiError(400, "bad transfer_id or nbytes").body(), status=400)
        if node.transport is None or dst not in node.peers:
            return web.json_response(ApiError(400, f"cannot push KV to {dst!r} from here").body(), status=400)
        now = asyncio.get_running_loop().time()
        req = ServeRequest(request_id=tid, arrival_s=now, prompt_tokens=1, output_tokens=1)
        start, end = await node.transport.transfer(req, self.site, dst, nbytes, now, 0.0)
        return web.json_response(
            {"kv_transfer_start_s": self.clock.epoch(start), "kv_transfer_end_s": self.clock.epoch(end)}
        )

    async def _remote_prefill(
        self,
        node: TopologyNode,
        site: str,
        req: GenRequest,
        body: Mapping[str, Any],
        sreq: ServeRequest,
        extra: Mapping[str, Any],
    ) -> Mapping[str, Any]:
        """Send the prefill leg to ``site``'s process; the kv_transfer_params it returns."""
        leg = prefill_leg_body(body, transfer_id=sreq.request_id, decode_site=self.site, extra=extra)
        path = "/v1/chat/completions" if req.kind == api.CHAT else "/v1/completions"
        if node.forward_delay_s > 0:
            await asyncio.sleep(node.forward_delay_s)
        return await self.peers.prefill_leg(site, node.peers[site] + path, leg)

    async def _start_probe(self, _app: web.Application) -> None:
        self.lag.start()

    async def _close_session(self, _app: web.Application) -> None:
        await self.lag.stop()
        await self.peers.close()

    # ------------------------------------------------------------------ decode and stream
    async def _decode_and_respond(
        self,
        request: web.Request,
        node: TopologyNode,
        req: GenRequest,
        rid: str,
        fields: dict[str, Any],
        stay: str | None = None,
    ) -> web.StreamResponse:
        """Decode here (on ``stay``, or the least-loaded instance) and answer as the client asked."""
        if node.site is None or not node.site.decode_instances:
            raise ApiError(400, f"topology {node.name!r} has no decode instances in site {self.site}")
        instance, stream = node.site.decode(self._serve_request(req, rid, req.max_tokens), stay)
        fields.update(decode_site=self.site, decode_instance=instance.name)
        if not req.stream:
            return await respond_json(req, stream, fields, self.clock)
        resp, failed = await respond_sse(request, req, stream, fields, self.clock)
        node.failed += failed
        return resp
