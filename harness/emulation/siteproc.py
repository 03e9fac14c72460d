"""The site process: ``python -m harness.emulation.siteproc CONFIG_JSON``.

Started by ``EmulatedClusters`` (in the site's network namespace when there is one) with its
listening sockets already bound by the parent: the site's HTTP and KV sockets on its own address, and
an HTTP socket on the host's loopback so clients outside the namespaces reach it. They arrive as
file descriptors over a Unix socket on stdin (SCM_RIGHTS), since a process spawned into a namespace
inherits no other descriptors. It prints ``READY`` on stdout once serving (and, when asked,
``FIRST-REQUEST <time.monotonic()>`` as its router takes its first request: the run clock's zero of
the link events, which the parent applies), and stops cleanly on
SIGTERM, SIGINT, or when that Unix socket closes: the parent closes it to stop the site, and the
kernel closes it when the parent dies, so no site process outlives its parent.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, field

from aiohttp import web

from harness.emulation.clock import run_scaled
from harness.emulation.deployment import build_nodes
from harness.emulation.kvlink import KvReceiver, KvSender
from harness.emulation.peers import Peers
from harness.emulation.server import SiteServer
from harness.emulation.spec import EmulationSpec
from harness.emulation.wire import WallClock
from harness.scenario import load_scenario
from harness.serving.config import prepare
from harness.traces.context import ContextPolicy

READY = "READY"
FIRST_REQUEST = "FIRST-REQUEST"


@dataclass(frozen=True)
class SiteConfig:
    """Everything a site process needs; JSON on its command line."""

    scenario: str
    site: str
    topologies: list[str]
    context: ContextPolicy  # the rule for a trace's prompts beyond the context (as the parent's)
    emulation: dict
    model: str
    byte_scale: float
    http_urls: dict[str, str]  # site -> http://address:port (addresses on the emulated network)
    kv_addrs: dict[str, tuple[str, int]]
    sockets: list[str] = field(default_factory=list)  # names of the sockets sent on stdin, in order
    app_pace_mbit: float | None = None  # rootless: pace KV in the application (wall Mbit/s)
    app_delay_ms: float = 0.0  # rootless: one-way delay added by the application (wall ms)
    announce_first_request: bool = False  # print FIRST_REQUEST when the router takes its first request
    shaping_backend: str = "none"  # what shapes the link (netem, relay, loopback): the model card says it

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SiteConfig:
        raw = json.loads(text)
        raw["kv_addrs"] = {k: tuple(v) for k, v in raw["kv_addrs"].items()}
        return cls(**raw)


def receive_sockets(names: list[str], channel: socket.socket) -> dict[str, socket.socket]:
    """The listening sockets the parent sends over ``channel``, by name."""
    _, fds, _, _ = socket.recv_fds(channel, 16, maxfds=len(names))
    if len(fds) != len(names):
        raise RuntimeError(f"expected {len(names)} sockets from the parent, got {len(fds)}")
    return {name: socket.socket(fileno=fd) for name, fd in zip(names, fds, strict=True)}


async def serve_site(config: SiteConfig, socks: dict[str, socket.socket], stop: asyncio.Event) -> None:
    """Serve ``config``'s site until ``stop`` is set; everything opened here is closed on the way out."""
    spec = EmulationSpec(**config.emulation)
    setup = prepare(load_scenario(config.scenario), topologies=config.topologies, context=config.context)
    s = spec.speedup
    pace = None if config.app_pace_mbit is None else config.app_pace_mbit * 1e6 / 8 / s  # bytes per loop s
    delay_loop_s = config.app_delay_ms / 1e3 * s
    receiver = KvReceiver()
    sender = KvSender(connections=spec.connections, pace_bytes_s=pace, delay_s=delay_loop_s)
    peers = Peers()
    clock = WallClock.now(s)
    runner: web.AppRunner | None = None
    try:
        await receiver.start(sock=socks["kv"])
        nodes = build_nodes(
            config.site,
            setup.stack,
            setup.topologies,
            sender=sender,
            receiver=receiver,
            peers=peers,
            clock=clock,
            kv_addrs=config.kv_addrs,
            http_urls=config.http_urls,
            byte_scale=config.byte_scale,
            layers=spec.layers,
            app_delay_s=delay_loop_s,
        )
        server = SiteServer(
            config.site,
            nodes,
            spec=spec,
            model=config.model,
            clock=clock,
            receiver=receiver,
            sender=sender,
            peers=peers,
            kv_addr=config.kv_addrs[config.site],
            shaping_backend=config.shaping_backend,
            on_first_request=_announce if config.announce_first_request else None,
        )
        runner = web.AppRunner(server.app, access_log=None, handle_signals=False)
        await runner.setup()
        for key in ("http", "host"):
            if key in socks:
                await web.SockSite(runner, socks[key], backlog=1024).start()
        print(READY, flush=True)
        await stop.wait()
    finally:
        if runner is not None:
            await runner.cleanup()
        await peers.close()
        await sender.close()
        await receiver.close()


def _announce() -> None:
    print(FIRST_REQUEST, f"{time.monotonic():.6f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    config = SiteConfig.from_json(args[0])
    channel = socket.socket(fileno=0)
    socks = receive_sockets(config.sockets, channel)

    def on_channel(stop: asyncio.Event) -> None:
        try:
            data = channel.recv(64)
        except OSError:
            data = b""
        if not data:  # the parent closed it, or died
            stop.set()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_reader(channel.fileno(), on_channel, stop)
        try:
            await serve_site(config, socks, stop)
        finally:
            loop.remove_reader(channel.fileno())

    try:
        run_scaled(run(), speedup=float(config.emulation.get("speedup", 1.0)))
    finally:
        channel.close()


if __name__ == "__main__":
    main()
