"""``EmulatedClusters``: bring a scenario's emulated sites up (one process per site) and down again.

    with EmulatedClusters(scenario, speedup=20) as clusters:
        clusters.urls          # {"prfaas": "http://127.0.0.1:PORT/prfaas/v1", ...}, the routers
        clusters.pd_urls       # {"prfaas": ("http://…remote…/prfaas/v1", "http://…local…/prfaas/v1")}

With namespaces (root and a kernel shaping backend) each site process runs in its site's namespace
of a ``harness.network.Network`` built for the run, so KV bytes and prefill legs cross the shaped
link; every site also gets a listening socket on the host's loopback (passed in by file descriptor)
so clients outside the namespaces reach it. Without namespaces (``netns=False``, or not root) all
sites run on loopback ports and the link's rate and delay are applied by the KV sender itself
(backend "loopback", labelled in ``describe()``). Every exit path stops the processes and removes
the network.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.config.base import override
from harness.emulation.siteproc import READY, SiteConfig
from harness.emulation.spec import EmulationSpec, byte_scale, emulated_delay_ms
from harness.errors import CapabilityError, ScenarioError
from harness.scenario import Scenario, load_scenario
from harness.serving.build import LOCAL, REMOTE
from harness.serving.config import SimSetup, prepare
from harness.traces.context import ContextPolicy

DEFAULT_PREFIX = "pfbsv-"
_READY_TIMEOUT_S = 60.0
LOOPBACK = "loopback"


def _network_table(sites: list[str], rate_mbit: float, delay_ms: float) -> dict[str, Any]:
    """The network ``serve`` builds when the scenario has no ``[network]``: one link, rate and delay only."""
    table: dict[str, Any] = {"sites": sites, "links": []}
    if len(sites) > 1:
        table["links"].append({"between": [LOCAL, REMOTE], "rate_mbit": rate_mbit, "delay_ms": delay_ms})
    return table


def _with_link_delay(table: Mapping[str, Any], delay_ms: float) -> dict[str, Any]:
    """A copy of a ``[network]`` table whose local-remote link has one-way ``delay_ms`` in both
    directions (jitter scaled by the same factor), so the delay follows the speed-up in force."""
    out = copy.deepcopy(dict(table))
    for link in out.get("links", []):
        if sorted(link.get("between", [])) != sorted([LOCAL, REMOTE]):
            continue
        for part in (link, link.get("forward", {}), link.get("reverse", {})):
            old = part.get("delay_ms")
            if old is None and part is not link:
                continue
            if old and part.get("jitter_ms"):
                part["jitter_ms"] = part["jitter_ms"] * delay_ms / old
            part["delay_ms"] = delay_ms
    return out


class EmulatedClusters:
    """The processes and network of one ``serve`` run. Use as a context manager (or start/stop)."""

    def __init__(
        self,
        scenario: str | Path | Scenario,
        *,
        topologies: list[str] | None = None,
        speedup: float | None = None,
        netns: bool | None = None,
        port_base: int | None = None,
        kv_rate_mbit: float | None = None,
        connections: int | None = None,
        prefix: str = DEFAULT_PREFIX,
        context: ContextPolicy = "refuse",
    ) -> None:
        self.scenario = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        flags = {"speedup": speedup, "kv_rate_mbit": kv_rate_mbit, "connections": connections}
        self.spec: EmulationSpec = override(self.scenario.config.emulation, flags)
        # A trace workload's rows beyond the model's context follow ``context`` (refuse, clip, drop),
        # here and in every site process, so the topologies they plan are the ones simulate planned.
        self.context = context
        self.setup: SimSetup = prepare(self.scenario, topologies=topologies, context=context)
        self.topologies = list(self.setup.topologies)
        self.model = self.spec.model_name or self.setup.deployment.model.name
        self.sites = [LOCAL] + (
            [REMOTE] if any(p.n_prfaas > 0 for p in self.setup.topologies.values()) else []
        )
        self.port_base = port_base
        self.prefix = prefix
        self._want_netns = netns
        self._net: Any = None
        self._net_ctx: contextlib.AbstractContextManager | None = None
        self._procs: dict[str, subprocess.Popen] = {}
        self._channels: list[socket.socket] = []
        self.host_urls: dict[str, str] = {}
        self.backend = "none"
        self.rate_mbit: float | None = None
        self.delay_ms = 0.0
        self.byte_scale = 1.0

    # ------------------------------------------------------------------ public views
    @property
    def urls(self) -> dict[str, str]:
        """The router (PD proxy) of each topology: an OpenAI base URL reachable from this host."""
        return {t: f"{self.host_urls[LOCAL]}/{t}/v1" for t in self.topologies}

    @property
    def pd_urls(self) -> dict[str, tuple[str, str]]:
        """(prefill URL, decode URL) of topologies with one prefill site (homogeneous: local, naive:
        remote), for clients that drive vLLM's PD legs themselves; prfaas needs its router."""
        sites = {"homogeneous": LOCAL, "naive": REMOTE}
        return {
            t: (f"{self.host_urls[sites[p.kind]]}/{t}/v1", f"{self.host_urls[LOCAL]}/{t}/v1")
            for t, p in self.setup.topologies.items()
            if p.kind in sites
        }

    def describe(self) -> dict[str, Any]:
        """What a results file needs to know about the emulation."""
        return {
            "backend": self.backend,
            "speedup": self.spec.speedup,
            "byte_scale": self.byte_scale,
            "kv_rate_mbit": self.rate_mbit,
            "delay_ms": self.delay_ms,
            "real_link": asdict(self.setup.stack.link),
            "model": self.model,
            "topologies": {t: asdict(p) for t, p in self.setup.topologies.items()},
            "urls": self.urls,
            "emulation": asdict(self.spec),
            "context": self.context,
        }

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> EmulatedClusters:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> EmulatedClusters:
        """Build the network (when namespaces are used), start every site process, wait until all serve."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _decide_backend(self) -> str | None:
        """The kernel shaping backend to build the network with, or None for loopback sites."""
        if self._want_netns is False:
            return None
        root = os.geteuid() == 0
        if self._want_netns and not root:
            raise CapabilityError("serve --netns needs root for network namespaces; use --no-netns")
        if not root:
            return None
        from harness.network import backend_name

        backend = backend_name()  # probed once, and handed to the Network so it does not probe again
        if backend == "app-delay":
            if self._want_netns:
                raise CapabilityError("no kernel shaping backend here (see `prfaas-bench net probe`)")
            return None
        return backend

    def _link_params(self, net_spec: Any | None) -> None:
        real = self.setup.stack.link
        if net_spec is not None and len(self.sites) > 1:
            try:
                ls = net_spec.link(LOCAL, REMOTE).spec(REMOTE, LOCAL)  # the KV direction
            except KeyError:
                raise ScenarioError(
                    "serve needs a direct link between local and remote", where=self.scenario.where("network")
                ) from None
            self.rate_mbit, self.delay_ms = ls.rate_mbit, ls.delay_ms
        else:
            self.rate_mbit = self.spec.kv_rate_mbit
            self.delay_ms = emulated_delay_ms(real.delay_ms, self.spec.speedup)
        if self.rate_mbit is None:
            raise ScenarioError(
                "the emulated link needs a rate to scale KV bytes by: set rate_mbit on the link "
                "between local and remote",
                where=self.scenario.where("network"),
            )
        self.byte_scale = byte_scale(
            real_rate_gbps=real.bandwidth_gbps, emu_rate_mbit=self.rate_mbit, speedup=self.spec.speedup
        )

    def _start(self) -> None:
        from harness.network import Network, parse_network

        backend = self._decide_backend()
        where = self.scenario.where("network")
        table: dict[str, Any] | None = None
        net_spec = None
        if self.scenario.section("network"):  # the scenario's own network, its delay scaled to s
            delay = emulated_delay_ms(self.setup.stack.link.delay_ms, self.spec.speedup)
            table = _with_link_delay(self.scenario.section("network"), delay)
            net_spec = parse_network(table, source=str(self.scenario.path))
            missing = [s for s in self.sites if s not in net_spec.sites]
            if missing:
                raise ScenarioError(f"lacks site(s) {missing} that serve needs", where=where)
        self._link_params(net_spec)
        if backend is None:
            self.backend = LOOPBACK
        else:
            if table is None or net_spec is None:
                table = _network_table(self.sites, self.rate_mbit or 0.0, self.delay_ms)
                net_spec = parse_network(table)
            self._net_ctx = Network(net_spec, prefix=self.prefix, backend=backend, table=table).up()
            self._net = self._net_ctx.__enter__()
            self.backend = self._net.backend
        socks = self._bind_sockets()
        try:
            self._spawn_all(socks)
        finally:
            for group in socks.values():
                for s in group.values():
                    s.close()

    def _bind_sockets(self) -> dict[str, dict[str, socket.socket]]:
        out: dict[str, dict[str, socket.socket]] = {}
        for i, site in enumerate(self.sites):
            group: dict[str, socket.socket] = {}
            try:
                if self._net is not None:
                    addr = self._net.address(site)
                    for key in ("http", "kv"):
                        s = self._net.socket(site, socket.AF_INET, socket.SOCK_STREAM)
                        group[key] = s
                        s.bind((addr, 0))
                host = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                group["host"] = host
                host.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                host.bind(("127.0.0.1", 0 if self.port_base is None else self.port_base + i))
                if self._net is None:
                    kv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    group["kv"] = kv
                    kv.bind(("127.0.0.1", 0))
            except OSError as exc:
                for s in group.values():
                    s.close()
                raise CapabilityError(f"cannot bind the sockets of site {site}: {exc}") from None
            out[site] = group
        return out

    def _spawn_all(self, socks: Mapping[str, Mapping[str, socket.socket]]) -> None:
        def addr(s: socket.socket) -> tuple[str, int]:
            host, port = s.getsockname()[:2]
            return str(host), int(port)

        http_key = "http" if self._net is not None else "host"
        http_urls = {site: "http://{}:{}".format(*addr(g[http_key])) for site, g in socks.items()}
        kv_addrs = {site: addr(g["kv"]) for site, g in socks.items()}
        self.host_urls = {site: "http://{}:{}".format(*addr(g["host"])) for site, g in socks.items()}
        emulation = asdict(self.spec)
        for site, group in socks.items():
            config = SiteConfig(
                scenario=str(self.scenario.path),
                site=site,
                topologies=self.topologies,
                context=self.context,
                emulation=emulation,
                model=self.model,
                byte_scale=self.byte_scale,
                http_urls=http_urls,
                kv_addrs=kv_addrs,
                sockets=list(group),
                app_pace_mbit=None if self._net is not None else self.rate_mbit,
                app_delay_ms=0.0 if self._net is not None else self.delay_ms,
            )
            argv = [sys.executable, "-m", "harness.emulation.siteproc", config.to_json()]
            # The channel hands the sockets over, then stays open: closing it stops the site.
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self._channels.append(ours)
            with theirs:
                kwargs: dict[str, Any] = {"stdout": subprocess.PIPE, "stdin": theirs.fileno()}
                if self._net is not None:
                    proc = self._net.spawn(site, argv, **kwargs)
                else:
                    proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
            self._procs[site] = proc
            socket.send_fds(ours, [b"sockets"], [s.fileno() for s in group.values()])
        for site, proc in self._procs.items():
            self._wait_ready(site, proc)
        self._check_peers()

    def _check_peers(self) -> None:
        """Ask the router site to reach every peer: fails early on a broken network, and opens the
        router's connections so the first requests do not pay for them."""
        with urllib.request.urlopen(self.host_urls[LOCAL] + "/health?peers=1", timeout=30) as resp:
            peers = json.loads(resp.read()).get("peers", {})
        bad = {url: state for url, state in peers.items() if state != "ok"}
        if bad:
            raise CapabilityError(f"the local site cannot reach its peers: {bad}")

    def _wait_ready(self, site: str, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        deadline = time.monotonic() + _READY_TIMEOUT_S
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if sel.select(timeout=0.2):
                    line = proc.stdout.readline().decode(errors="replace").strip()
                    if line == READY:
                        return
                    if not line and proc.poll() is not None:
                        break
        raise CapabilityError(
            f"site process {site!r} did not start (exit status {proc.poll()}); its error is printed above"
        )

    def check(self) -> None:
        """Raise if a site process has died (the cluster can no longer serve)."""
        for site, proc in self._procs.items():
            if proc.poll() is not None:
                raise CapabilityError(f"site process {site!r} exited with status {proc.returncode}")

    def stop(self) -> None:
        """Stop every site process (channel closed, then SIGTERM, then SIGKILL) and remove the network.
        Safe to call twice."""
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        for proc in self._procs.values():
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    proc.wait(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, sig)
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self._procs.clear()
        if self._net_ctx is not None:
            ctx, self._net_ctx, self._net = self._net_ctx, None, None
            ctx.__exit__(None, None, None)
