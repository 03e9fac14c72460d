"""One site's HTTP server: an adapter between HTTP and the serving stack's request lifecycle.

Endpoints (``{t}`` is a topology name; the bare ``/v1/...`` paths serve the first topology):

    POST /{t}/v1/completions, /{t}/v1/chat/completions
         no kv_transfer_params              the router (PD proxy): ``Cluster.dispatch``, which routes,
                                            prefills here or on a peer (a prefill leg), waits for the
                                            KV and starts the decode; then stream the tokens
         kv_transfer_params.do_remote_decode  a prefill leg: this site's ``InProcessSite.prefill``
                                            (pull a prefix if asked, prefill, push KV), return params
         kv_transfer_params.do_remote_prefill a decode leg: wait for the KV transfer, decode, stream
    POST /{t}/internal/kv_push              a peer pulling a cached prefix: ``InProcessSite.push_kv``
    GET  /v1/models, /{t}/v1/models, /health, /metrics
    POST /reset                             prefix caches (and the router's mirrors of its peers'),
                                            counters and the lag window, here and (unless ``?local=1``)
                                            on every peer site; 409 while requests are in flight

The breakdown (``"prfaas"``) rides on the final chunk: the usage chunk when the client asked for
usage, else the last token chunk; non-streamed responses carry it at top level.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from harness.emulation import api
from harness.emulation.api import ApiError, GenRequest
from harness.emulation.kvlink import KvReceiver, KvSender
from harness.emulation.lag import LagProbe
from harness.emulation.metrics import collect
from harness.emulation.node import TopologyNode
from harness.emulation.peers import Peers
from harness.emulation.prometheus import CONTENT_TYPE, render
from harness.emulation.respond import respond_json, respond_sse
from harness.emulation.spec import EmulationSpec
from harness.emulation.wire import (
    PRFAAS_KEY,
    ClientRequest,
    WallClock,
    breakdown_from_params,
    outcome_fields,
    prefill_fields,
    prefill_leg_params,
)
from harness.serving.instances import DecodeRejected, TokenStream
from harness.serving.ports import PrefillJob, SitePort
from harness.serving.site import ServeRequest

_HEX32 = re.compile(r"^[0-9a-f]{32}$")


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
        peers: Peers,
        kv_addr: tuple[str, int] | None = None,
        shaping_backend: str = "none",
        on_first_request: Callable[[], None] | None = None,
    ) -> None:
        if not nodes:
            raise ValueError("a site server needs at least one topology")
        self.site, self.nodes, self.spec, self.model, self.clock = site, dict(nodes), spec, model, clock
        self.receiver, self.sender, self.peers, self.kv_addr = receiver, sender, peers, kv_addr
        self.shaping_backend = shaping_backend
        self.on_first_request = on_first_request  # called once, as a router takes its first request
        self.default = next(iter(self.nodes))
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.add_routes(
            [
                web.get("/health", self.health),
                web.get("/metrics", self.metrics),
                web.post("/reset", self.reset),
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
        self.app.on_cleanup.append(self._stop_probe)

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
            # replay records this as its run's shaping backend unless told otherwise
            PRFAAS_KEY: {"shaping_backend": self.shaping_backend, "site": self.site},
        }
        return web.json_response({"object": "list", "data": [card]})

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text; ``?reset_lag=1`` starts a fresh scheduling-lag window after reading."""
        text = render(collect(self))
        if request.query.get("reset_lag"):
            self.lag.reset()
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})

    async def reset(self, request: web.Request) -> web.Response:
        """Start a measured run from a known state: empty prefix caches, zeroed counters, a fresh lag
        window, on this site and (unless ``?local=1``) every peer site of its topologies."""
        busy = self._in_flight()
        if busy:
            err = ApiError(409, f"site {self.site} has {busy} requests in flight; reset between runs")
            return web.json_response(err.body(), status=409)
        for node in self.nodes.values():
            node.accepted = node.rejected = node.failed = 0
            node.cluster.routes.clear()
            for port in node.cluster.ports.values():
                cache = getattr(port, "mirror", None) if port is not self._here(node) else node.site.cache
                if cache is not None:
                    cache.clear()
            for inst in (*node.site.prefill_instances, *node.site.decode_instances):
                inst.completed = 0
            for p in node.site.prefill_instances:
                p.queue_s_total = p.prefill_s_total = 0.0
            for d in node.site.decode_instances:
                d.steps = 0
        self.lag.reset()
        sites = {self.site: "ok"}
        if not request.query.get("local"):
            peers = {url.rsplit("/", 1)[0] for node in self.nodes.values() for url in node.peers.values()}
            for url in sorted(peers):
                sites[url] = await self._reset_peer(url)
        ok = all(v == "ok" for v in sites.values())
        return web.json_response(
            {"status": "ok" if ok else "partial", "sites": sites}, status=200 if ok else 502
        )

    def _in_flight(self) -> int:
        busy = 0
        for node in self.nodes.values():
            busy += node.waiting
            busy += sum(p.queue_depth for p in node.site.prefill_instances)
            busy += sum(len(d.active) + len(d.pending) for d in node.site.decode_instances)
        return busy

    async def _reset_peer(self, base_url: str) -> str:
        try:
            async with self.peers.session().post(base_url + "/reset?local=1") as resp:
                return "ok" if resp.status == 200 else f"HTTP {resp.status}: {(await resp.text())[:200]}"
        except aiohttp.ClientError as exc:
            return f"unreachable: {exc}"

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
        except TimeoutError as exc:  # KV from another site never arrived
            node.failed += 1
            return web.json_response(ApiError(504, str(exc)).body(), status=504)
        except (OSError, RuntimeError, ValueError) as exc:
            # A peer or KV connection failed mid-request: an error answer, never a dropped connection.
            node.failed += 1
            err = ApiError(502 if isinstance(exc, OSError) else 500, f"{type(exc).__name__}: {exc}")
            return web.json_response(err.body(), status=err.status)

    def _serve_request(
        self, req: GenRequest, request_id: str, output_tokens: int, payload: ClientRequest | None = None
    ) -> ServeRequest:
        return ServeRequest(
            request_id=request_id,
            arrival_s=asyncio.get_running_loop().time(),
            prompt_tokens=req.prompt_tokens,
            output_tokens=output_tokens,
            hash_ids=req.block_ids,
            payload=payload,
        )

    def _here(self, node: TopologyNode) -> SitePort:
        """This process's site, as the lifecycle's port to it."""
        return node.cluster.ports[self.site]

    async def _routed(
        self, request: web.Request, node: TopologyNode, req: GenRequest, body: Mapping[str, Any]
    ) -> web.StreamResponse:
        """The router: the request lifecycle (``Cluster.dispatch``) with the other sites over HTTP."""
        if not node.is_router:
            raise ApiError(
                400,
                f"site {self.site} is not a router for {node.name!r}: send PD legs (kv_transfer_params) here",
                param="kv_transfer_params",
            )
        if self.on_first_request is not None:
            announce, self.on_first_request = self.on_first_request, None
            announce()
        path = "/v1/chat/completions" if req.kind == api.CHAT else "/v1/completions"
        sreq = self._serve_request(req, uuid.uuid4().hex, req.max_tokens, ClientRequest(path, body))
        node.waiting += 1
        try:
            out = await node.cluster.dispatch(sreq)
        finally:
            node.waiting -= 1
        assert out.stream is not None
        return await self._respond(request, node, req, out.stream, outcome_fields(out, self.clock))

    async def _prefill_leg(
        self, node: TopologyNode, req: GenRequest, params: Mapping[str, Any]
    ) -> web.Response:
        """PD-proxy prefill leg: this site's part of the lifecycle (pull a prefix if asked, prefill,
        push the KV to the decode site); returns kv_transfer_params."""
        tid = params.get("transfer_id") or uuid.uuid4().hex
        if not isinstance(tid, str) or not _HEX32.match(tid):
            raise ApiError(
                400, "kv_transfer_params.transfer_id must be 32 hex digits", param="kv_transfer_params"
            )
        dst = params.get("decode_site") or node.cluster.home
        if dst != self.site and dst not in node.peers:
            raise ApiError(400, f"unknown decode site {dst!r}", param="kv_transfer_params")
        prefix_site, prefix_tokens = params.get("prefix_site"), params.get("prefix_tokens", 0)
        if prefix_site is not None and prefix_site not in node.peers:
            raise ApiError(400, f"unknown prefix site {prefix_site!r}", param="kv_transfer_params")
        if (
            isinstance(prefix_tokens, bool)
            or not isinstance(prefix_tokens, int)
            or not 0 <= prefix_tokens < req.prompt_tokens
            or (prefix_site is None and prefix_tokens)
        ):
            raise ApiError(
                400,
                "kv_transfer_params.prefix_tokens must be an integer below the prompt length, "
                "with prefix_site naming where they are cached",
                param="kv_transfer_params",
            )
        if not node.site.prefill_instances:
            raise ApiError(400, f"topology {node.name!r} has no prefill instances in site {self.site}")
        sreq = self._serve_request(req, tid, 1)
        job = PrefillJob(sreq, dst, node.cluster.home, prefix_site, prefix_tokens)
        node.waiting += 1
        try:
            result = await self._here(node).prefill(job)
        finally:
            node.waiting -= 1
        fields = prefill_fields(result, self.clock)
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
        if not node.site.decode_instances:
            raise ApiError(400, f"topology {node.name!r} has no decode instances in site {self.site}")
        src = params.get("prefill_site")
        fields = breakdown_from_params(params)
        fields["route"] = "remote" if src not in (None, self.site) else "local"
        here = self._here(node)
        node.waiting += 1
        try:
            await here.receive_kv(tid, src if isinstance(src, str) else "")
        finally:
            node.waiting -= 1
        instance, stream = here.decode(self._serve_request(req, tid, req.max_tokens))
        fields.update(decode_site=self.site, decode_instance=instance)
        return await self._respond(request, node, req, stream, fields)

    async def kv_push(self, request: web.Request) -> web.Response:
        """Internal: a site pulling a cached prefix asks this one to send it ``nbytes`` (modelled) of
        KV as ``transfer_id``; answers once the KV has been delivered."""
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
        if dst not in node.peers:
            return web.json_response(ApiError(400, f"cannot push KV to {dst!r} from here").body(), status=400)
        await self._here(node).push_kv(tid, dst, nbytes)
        return web.json_response({"transfer_id": tid})

    async def _start_probe(self, _app: web.Application) -> None:
        self.lag.start()

    async def _stop_probe(self, _app: web.Application) -> None:
        await self.lag.stop()

    # ------------------------------------------------------------------ stream
    async def _respond(
        self,
        request: web.Request,
        node: TopologyNode,
        req: GenRequest,
        stream: TokenStream,
        fields: dict[str, Any],
    ) -> web.StreamResponse:
        """Answer with the decode's tokens as the client asked (SSE or one JSON body)."""
        if not req.stream:
            return await respond_json(req, stream, fields, self.clock)
        resp, failed = await respond_sse(request, req, stream, fields, self.clock)
        node.failed += failed
        return resp
