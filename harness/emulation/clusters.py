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

The scenario's ``[[network.events]]`` change the shaped network during a run, on a run clock whose
zero is chosen by ``events_from``: the first request a router receives (``"first-request"``), the
moment every site serves (``"ready"``), or whenever the caller says (``"arm"``: ``arm_events(t0)``,
as bench does at each replay's start). Their model times and the inter-site link's delays are
divided by the speed-up (``harness.serving.linkevents``), and ``net up --hold``'s scheduler applies
them. On the loopback fallback there is no shaped link to change: ``warnings`` says so.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.config.base import override
from harness.emulation.siteproc import FIRST_REQUEST, READY, SiteConfig
from harness.emulation.spec import EmulationSpec, byte_scale, emulated_delay_ms
from harness.errors import CapabilityError, ScenarioError
from harness.scenario import Scenario, load_scenario
from harness.serving.build import LOCAL, REMOTE
from harness.serving.config import SimSetup, prepare
from harness.serving.linkevents import SERVED, events_meta, model_timeline, with_link_delay
from harness.traces.context import ContextPolicy

DEFAULT_PREFIX = "pfbsv-"
_READY_TIMEOUT_S = 60.0
LOOPBACK = "loopback"
EVENTS_FROM = ("first-request", "ready", "arm")


def _network_table(sites: list[str], rate_mbit: float, delay_ms: float) -> dict[str, Any]:
    """The network ``serve`` builds when the scenario has no ``[network]``: one link, rate and delay only."""
    table: dict[str, Any] = {"sites": sites, "links": []}
    if len(sites) > 1:
        table["links"].append({"between": [LOCAL, REMOTE], "rate_mbit": rate_mbit, "delay_ms": delay_ms})
    return table


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
        events_from: str = "first-request",
        context: ContextPolicy = "refuse",
    ) -> None:
        if events_from not in EVENTS_FROM:
            raise ValueError(f"events_from must be one of {EVENTS_FROM}, got {events_from!r}")
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
        self.events_from = events_from
        self._changes: list[Any] = []  # the link events on the wall clock (harness.network Changes)
        self._base: dict[tuple[str, str], Any] = {}  # each direction's spec before any event
        self._armed: list[tuple[str, Any]] = []  # (label, EventScheduler), one per arming
        self._events_lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._watch_error: BaseException | None = None

    # ------------------------------------------------------------------ public views
    @property
    def urls(self) -> dict[str, str]:
        """The router (PD proxy) of each topology: an OpenAI base URL reachable from this host."""
        return {t: f"{self.host_urls[LOCAL]}/{t}/v1" for t in self.topologies}

    @property
    def network(self) -> Any:
        """The shaped ``harness.network.Network`` the sites live in (None on loopback or before start)."""
        return self._net

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
            "sites": self.host_urls,  # each site's root: its /metrics (replay --metrics-url)
            "emulation": asdict(self.spec),
            "link_events_from": self.events_from if self._changes else None,
            "context": self.context,
        }

    @property
    def warnings(self) -> list[str]:
        """What this run does not do that the scenario asks for (known once started)."""
        if (
            self.scenario.config.network is not None
            and self.scenario.config.network.events
            and not self._changes
        ):
            return [
                f"{self.scenario.path}: [[network.events]] are not applied: the {self.backend} fallback has "
                "no shaped link to change (run as root, with namespaces)"
            ]
        return []

    def relay_lag(self) -> dict[str, Any]:
        """The relays' release lateness so far, ``"src->dst" -> LagHistogram`` (``Network.relay_lag``;
        empty without namespaces or without relays). Read it before and after a run and take
        ``after[k].since(before[k]).summary()`` for the relay's achieved added delay during the run."""
        return {} if self._net is None else self._net.relay_lag()

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
        from harness.network import probe

        report = probe()  # probed once, and handed to the Network so it does not probe again
        if report.chosen == "app-delay":
            # As root, namespaces are the default: never fall back to loopback without being told.
            raise CapabilityError(
                f"no kernel shaping backend here ({report.check('relay').reason}; see `prfaas-bench net "
                "probe`); use --no-netns to run the sites on loopback with app-level shaping"
            )
        return report.chosen

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
            table = with_link_delay(self.scenario.section("network"), delay)
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
        self._plan_events()
        socks = self._bind_sockets()
        try:
            self._spawn_all(socks)
        finally:
            for group in socks.values():
                for s in group.values():
                    s.close()
        if self._changes and self.events_from == "first-request":
            self._watcher = threading.Thread(
                target=self._watch_first_request, name="pfb-first-request", daemon=True
            )
            self._watcher.start()
        elif self._changes and self.events_from == "ready":
            self.arm_events(label="serve")

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
                announce_first_request=site == LOCAL
                and bool(self._changes)
                and self.events_from == "first-request",
                shaping_backend=self.backend,
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
        """Raise if a site process has died (the cluster can no longer serve), or a link event could
        not be applied."""
        for site, proc in self._procs.items():
            if proc.poll() is not None:
                raise CapabilityError(f"site process {site!r} exited with status {proc.returncode}")
        if self._watch_error is not None:
            raise self._watch_error
        with self._events_lock:
            for _, sched in self._armed:
                sched.join(timeout=0)  # re-raises a change that failed

    # ------------------------------------------------------------------ link events
    def _plan_events(self) -> None:
        """The scenario's link events on the wall clock, for a network that can change (else none)."""
        if self._net is None:
            return
        from harness.network import Change

        s = self.spec.speedup
        for c in model_timeline(self.scenario):
            spec = c.spec
            if (c.src, c.dst) in SERVED:  # its delay is [link]'s, in model ms, like the base link's
                spec = spec.with_changes(delay_ms=spec.delay_ms / s, jitter_ms=spec.jitter_ms / s)
            self._changes.append(Change(c.t_s / s, c.src, c.dst, spec))
        self._base = {(src, dst): spec for src, dst, spec in self._net.spec.directions()}

    def arm_events(self, t0: float | None = None, *, label: str = "serve") -> None:
        """Start the link events' run clock at ``t0`` (``time.monotonic()``; default now): every link
        is first put back to its spec before any event, then the events follow from ``t0``. Each call
        starts the schedule again (bench: once per replayed topology, under ``label``)."""
        if not self._changes:
            return
        from harness.network import EventScheduler

        assert self._net is not None
        net = self._net
        with self._events_lock:
            self._restore_links()
            sched = EventScheduler(self._changes, lambda ch: net.set_link(ch.src, ch.dst, ch.spec))
            self._armed.append((label, sched.start(t0)))

    def disarm_events(self) -> None:
        """Stop the link events and put every link back to its spec (bench's capacity ladder, like the
        Λ_max search, measures a steady link)."""
        if self._changes:
            with self._events_lock:
                self._restore_links()

    def _restore_links(self) -> None:
        assert self._net is not None
        for _, sched in self._armed:
            sched.stop()  # a change that failed is raised here, never passed over
        for (src, dst), spec in self._base.items():
            if self._net.link_spec(src, dst) != spec:
                self._net.set_link(src, dst, spec)

    def event_lag(self, label: str) -> dict[str, Any]:
        """Run conditions for the verdict (``validity`` ``link_event_lag``) as ``label``'s run ends: the
        change of its link events that lost the largest share of its planned state, in model seconds
        (empty without events, or before any change was due)."""
        with self._events_lock:
            armed = [sched for name, sched in self._armed if name == label]
            lag = armed[-1].worst_lag() if armed else None  # the latest arming is the run that ended
        if lag is None:
            return {}
        s, ch = self.spec.speedup, model_timeline(self.scenario)[self._changes.index(lag.change)]
        return {
            "link_event_lag": {
                "change": f"{ch.src}->{ch.dst} {ch.spec} at {ch.t_s:g} s",
                "late_s": lag.late_s * s,
                "lasts_s": lag.lasts_s * s if math.isfinite(lag.lasts_s) else None,
            }
        }

    def link_events(self) -> dict[str, Any] | None:
        """For meta.json: the events (model seconds after the run clock's zero) and, per arming, each
        change as applied (``t_s``: model seconds after that zero, as measured; ``applied`` is None
        where nothing could be applied). None without events."""
        s = self.spec.speedup
        with self._events_lock:
            applied = {
                label: [
                    {"t_s": at * s, "direction": f"{ch.src}->{ch.dst}", "spec": str(ch.spec)}
                    for at, ch in list(sched.applied)
                ]
                for label, sched in self._armed
            }
        return events_meta(self.scenario, zero=self.events_from, applied=applied if self._changes else None)

    def _watch_first_request(self) -> None:
        """Read the local site's announcement of its first routed request, and arm the events then."""
        proc = self._procs[LOCAL]
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                word, _, value = raw.decode(errors="replace").strip().partition(" ")
                if word == FIRST_REQUEST:
                    self.arm_events(float(value), label="serve")
                    return
        except (OSError, ValueError) as exc:  # stdout closed under us at stop: nothing to arm
            if proc.poll() is None:
                self._watch_error = exc
        except BaseException as exc:  # a link change refused: surfaced by check()
            self._watch_error = exc

    def stop(self) -> None:
        """Stop every site process (channel closed, then SIGTERM, then SIGKILL) and remove the network.
        Safe to call twice."""
        with self._events_lock:
            for _, sched in self._armed:
                sched.stop(raise_error=False)
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
        if self._watcher is not None:
            self._watcher.join(timeout=5)  # the local site's stdout has ended with it
            self._watcher = None
        for proc in self._procs.values():
            if proc.stdout is not None:
                proc.stdout.close()
        self._procs.clear()
        if self._net_ctx is not None:
            ctx, self._net_ctx, self._net = self._net_ctx, None, None
            ctx.__exit__(None, None, None)
