"""``Network``: builds a ``Topology`` for real, changes links live, runs processes in sites, tears down.

    net = Network.from_scenario("workloads/two-site.toml")
    with net.up():                                   # cleanup on every exit path, SIGTERM included
        srv = net.spawn("remote", ["python", "-m", "http.server", "8000"])
        url = f"http://{net.address('remote')}:8000/"
        net.set_link("local", "remote", rate_mbit=100)   # live change

``net up``/``net down`` use ``build()``/``Network.attach(prefix).teardown()`` instead: the state file
(``harness.network.state``) lets a later process find what an earlier one built.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import CapabilityError, ScenarioError
from harness.lifeline import exit_on_signals
from harness.network import kernel
from harness.network.control import Impairment
from harness.network.locks import FileLock, claim_prefix, holds_prefix, release_prefix, state_lock
from harness.network.probe import BACKENDS, backend_name, probe
from harness.network.relaylag import LagHistogram, lag_path, read_lag
from harness.network.render import render_egress
from harness.network.schedule import Change, EventScheduler, timeline
from harness.network.spec import SITE_NAME, LinkSpec, NetworkSpec, parse_network
from harness.network.state import STATE_DIR, State, is_alive, start_ticks
from harness.network.sweep import kill_process, owned_namespaces, sweep
from harness.network.topology import Direction, Topology, tcp_buffers

if TYPE_CHECKING:
    from harness.scenario import Scenario

DEFAULT_PREFIX = "pfb-"
_RELAY_START_S = 10.0
_RELAY_ANSWER_S = 2.0  # a live relay publishes its lateness within this after SIGUSR2


def _check_prefix(prefix: str) -> str:
    if not (
        prefix.startswith("pfb") and prefix.endswith("-") and SITE_NAME.match(prefix[:-1].replace("-", ""))
    ):
        raise ScenarioError(f"prefix {prefix!r} must start with 'pfb', end with '-', and be short lowercase")
    if len(prefix) > 12:
        raise ScenarioError(f"prefix {prefix!r} is longer than 12 characters")
    return prefix


class Network:
    """A shaped multi-site network. Print it for its name; ``status()`` reads the kernel back."""

    def __init__(
        self,
        spec: NetworkSpec,
        *,
        prefix: str = DEFAULT_PREFIX,
        backend: str | None = None,
        table: Mapping[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        self.prefix = _check_prefix(prefix)
        if backend is not None and backend not in BACKENDS:
            raise ScenarioError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
        self._backend = backend
        self._explicit_backend = backend is not None
        self.topology = Topology(self.prefix, spec)
        self._table = dict(table or {})
        self._current: dict[tuple[str, str], LinkSpec] = {(s, d): ls for s, d, ls in spec.directions()}
        self._relays: dict[tuple[str, str], tuple[int, int]] = {}
        self._procs: list[subprocess.Popen] = []
        self._scheduler: EventScheduler | None = None
        self._built = False
        self._builder_pid: int | None = None
        self._claim: FileLock | None = None  # the prefix's owner lock while this process owns it
        self._lock = threading.RLock()

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_scenario(cls, scenario: Scenario | str | Path, **kwargs: Any) -> Network:
        """From a scenario file (or a loaded ``Scenario``): its ``[network]`` table is required."""
        # The scenario layer (trace readers, pandas) is imported only here: a process that builds a
        # network from a table never pays for it (each one paid seconds in the netem VM under TCG).
        from harness.scenario import Scenario, load_scenario

        sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        table = sc.section("network", required=True)
        return cls(parse_network(table, source=str(sc.path)), table=table, **kwargs)

    @classmethod
    def attach(cls, prefix: str = DEFAULT_PREFIX) -> Network:
        """The network an earlier ``net up`` built with this prefix (from its state file)."""
        st = State.load(_check_prefix(prefix))
        if st is None:
            raise ScenarioError(f"no network with prefix {prefix!r} is up (no {State.path(prefix)})")
        net = cls(parse_network(st.table), prefix=prefix, backend=st.backend, table=st.table)
        for key, fields in st.current.items():
            src, dst = key.split("->")
            net._current[(src, dst)] = LinkSpec(**fields)
        net._relays = {tuple(k.split("->")): (p, t) for k, (p, t) in st.relays.items()}  # type: ignore[misc]
        net._built = True
        return net

    def __repr__(self) -> str:
        return f"Network({self.prefix}{{{','.join(self.spec.sites)}}}, backend={self.backend})"

    __str__ = __repr__

    @property
    def backend(self) -> str:
        """ "netem", "relay" or "app-delay" (probed unless given); record it with every result."""
        if self._backend is None:
            self._backend = backend_name()
        return self._backend

    @property
    def kernel_backed(self) -> bool:
        return self.backend != "app-delay"

    # ---- addresses and processes --------------------------------------------------------------
    def namespace(self, site: str) -> str | None:
        """The site's namespace name (``None`` on app-delay, where every site is the host)."""
        self._site(site)
        return self.topology.namespace(site) if self.kernel_backed else None

    def address(self, site: str) -> str:
        """The address a site's servers bind to and its peers connect to."""
        self._site(site)
        return str(self.topology.address(site)) if self.kernel_backed else "127.0.0.1"

    def addresses(self) -> dict[str, str]:
        return {s: self.address(s) for s in self.spec.sites}

    def link_spec(self, src: str, dst: str) -> LinkSpec:
        """The spec in force now on direction src->dst."""
        return self._current[(src, dst)]

    def app_delay_s(self, src: str, dst: str) -> float:
        """One-way delay an application must add itself on the app-delay backend (0 elsewhere)."""
        return 0.0 if self.kernel_backed else self.link_spec(src, dst).delay_ms / 1e3

    def spawn(self, site: str, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` inside the site's namespace, in its own session; it is killed (with its
        children) on teardown, and by a later ``net down`` if this process dies first."""
        self._site(site)
        popen_kwargs.setdefault("start_new_session", True)
        proc = kernel.spawn_in(self.namespace(site), argv, **popen_kwargs)
        with self._lock:
            self._procs.append(proc)
            self._save()
        return proc

    def socket(self, site: str, family: int, kind: int):
        """A socket created inside the site's namespace (for in-process clients and servers)."""
        import socket as _socket

        ns = self.namespace(site)
        return kernel.socket_in(ns, family, kind) if ns else _socket.socket(family, kind)

    def _site(self, site: str) -> None:
        if site not in self.spec.sites:
            raise ScenarioError(f"unknown site {site!r}; sites are {list(self.spec.sites)}")

    # ---- lifecycle ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def up(self) -> Iterator[Network]:
        """Build, yield, and tear down on every exit path. SIGTERM and SIGHUP become SystemExit while
        inside (main thread only), so ``finally`` runs for them as it does for Ctrl-C; forked
        helpers (pyroute2's) get the default action back (``harness.lifeline``)."""
        with exit_on_signals():
            try:
                self.build(owner_pid=os.getpid())
                yield self
            finally:
                self.teardown()

    def build(self, *, owner_pid: int | None = None) -> None:
        """Take ownership of the prefix, sweep what an earlier (dead) owner left, then create
        everything. On failure, remove what was made and re-raise. With ``owner_pid`` (this
        process's pid) the ownership is held until ``teardown()``, so no other run can sweep or
        reuse the prefix meanwhile; ``owner_pid=None`` leaves the network up, owned by no process,
        for later ones (``net up``). Raises ``CapabilityError`` when a running process owns the prefix."""
        if not self.kernel_backed:
            if not self._explicit_backend:  # never fall back to an unshaped network silently
                raise CapabilityError(f"{probe().check('relay').reason}. {_ROOTLESS_MESSAGE}")
            self._built = True  # nothing to create, nothing to record
            return
        if os.geteuid() != 0:
            raise CapabilityError(_ROOTLESS_MESSAGE)
        if owner_pid not in (None, os.getpid()):
            raise ValueError("owner_pid must be None or this process's pid")
        if self._explicit_backend and not (chk := probe().check(self.backend)).works:
            # Else the first tc call fails deep in pyroute2 with a bare NetlinkError traceback.
            raise CapabilityError(f"backend {self.backend} does not work on this machine: {chk.reason}")
        self._claim = claim_prefix(self.prefix, hint="choose another --prefix")  # before touching anything
        self._built = True
        self._builder_pid = os.getpid()
        try:
            sweep(self.prefix)
            self._save(owner_pid)  # first, so a crash mid-build still leaves something to sweep
            self._build_kernel()
            self._save(owner_pid)
        except BaseException:
            self.teardown()
            raise
        if owner_pid is None:  # the network outlives this process: it no longer owns the prefix
            release_prefix(self.prefix, self._claim)
            self._claim = None

    def _build_kernel(self) -> None:
        topo = self.topology
        for site in self.spec.sites:
            ns = topo.namespace(site)
            kernel.create_namespace(ns)
            with kernel.rtnl(ns) as ipr:
                lo = kernel.ifindex(ipr, "lo")
                ipr.link("set", index=lo, state="up")
                ipr.addr("add", index=lo, address=str(topo.address(site)), prefixlen=32)
            kernel.write_sysctls(
                ns,
                {
                    "net.ipv4.ip_forward": "1",  # sites without a direct link route through a neighbour
                    "net.ipv4.conf.all.rp_filter": "0",  # replies may arrive on a veth while requests leave by a relay TAP
                    "net.ipv4.conf.default.rp_filter": "0",
                    **tcp_buffers(self.spec, site),
                },
            )
        for ln in self.spec.links:
            d = topo.direction(ln.a, ln.b)
            with kernel.rtnl(topo.namespace(ln.a)) as ipr:
                ipr.link(
                    "add",
                    ifname=d.dev,
                    kind="veth",
                    peer={"ifname": d.peer_dev, "net_ns_fd": topo.namespace(ln.b)},
                )
        for d in topo.directions():
            spec = self._current[(d.src, d.dst)]
            with kernel.rtnl(topo.namespace(d.src)) as ipr:
                ipr.link("set", index=kernel.ifindex(ipr, d.dev), mtu=spec.mtu, state="up")
            self._shape(d, spec)
        if self.backend == "relay":
            plan = timeline(self.spec.events, self._current)
            needs = {(c.src, c.dst) for c in plan if c.spec.impaired}
            needs |= {k for k, s in self._current.items() if s.impaired}
            for key in sorted(needs):
                self._start_relay(topo.direction(*key))
        self._pin_neighbours()
        self._write_routes()

    def _shape(self, d: Direction, spec: LinkSpec) -> None:
        """Apply one direction's qdiscs. On netem, TSO and GSO are off while the direction loses
        packets: netem would drop a whole segment of up to 64 KiB at once (a burst of ~44 packets),
        not single packets at the configured rate; with the relay, the relay sees to that itself."""
        ns = self.topology.namespace(d.src)
        with kernel.rtnl(ns) as ipr:
            kernel.apply_ops(ipr, kernel.ifindex(ipr, d.dev), render_egress(spec, self.backend))
        if self.backend == "netem":
            kernel.set_segmentation_offloads(ns, d.dev, on=spec.loss_pct == 0)

    def _pin_neighbours(self) -> None:
        """A permanent neighbour entry on each veth for the site at its other end (the peer veth's
        MAC), as the relay's TAP has: no ARP ever crosses an emulated link. On netem, ARP itself was
        delayed: the first datagrams to a cold neighbour waited a delayed round trip in the
        neighbour's queue (unres_qlen_bytes, 208 KiB: 166 datagrams of 200 bytes; the rest dropped)
        and, once resolved, raced the new ones into netem, out of order (tests/netem_in_vm.py). Two
        real sites resolve only their own gateways, never across the long link."""
        for d in self.topology.directions():
            self._pin_neighbour(d, d.dev)

    def _pin_neighbour(self, d: Direction, dev: str) -> None:
        """On ``dev`` in ``d``'s source namespace (its veth, or its relay's TAP), a permanent neighbour
        entry for ``d``'s destination site at the peer veth's MAC."""
        topo = self.topology
        with kernel.rtnl(topo.namespace(d.dst)) as ipr:
            peer_mac = ipr.get_links(kernel.ifindex(ipr, d.peer_dev))[0].get("address")
        with kernel.rtnl(topo.namespace(d.src)) as ipr:
            ipr.neigh(
                "replace",
                dst=str(topo.address(d.dst)),
                lladdr=peer_mac,
                ifindex=kernel.ifindex(ipr, dev),
                state="permanent",
            )

    def _write_routes(self) -> None:
        """Per site: a scope-link route to each neighbour, then every site through its first hop;
        a direction with a relay routes into the relay's TAP instead of the veth."""
        topo = self.topology
        by_site: dict[str, list] = {}
        for r in topo.routes():
            by_site.setdefault(r.site, []).append(r)
        for site, routes in by_site.items():
            src_addr = str(topo.address(site))
            with kernel.rtnl(topo.namespace(site)) as ipr:
                for r in sorted(routes, key=lambda r: r.dst_site != r.via):  # neighbours first
                    d = topo.direction(site, r.via)
                    dst = f"{topo.address(r.dst_site)}/32"
                    dev = d.tun if (site, r.via) in self._relays else d.dev
                    oif = kernel.ifindex(ipr, dev)
                    if r.dst_site == r.via:
                        ipr.route("replace", dst=dst, oif=oif, prefsrc=src_addr, scope=253)
                    else:
                        gw = str(topo.address(r.via))
                        ipr.route("replace", dst=dst, gateway=gw, oif=oif, prefsrc=src_addr)

    def _control_path(self, d: Direction) -> Path:
        return STATE_DIR / f"{self.prefix}{d.src}-{d.dst}.ctl.json"

    def _start_relay(self, d: Direction) -> None:
        """Start the relay of one direction and point a permanent neighbour entry for the peer (on
        the relay's TAP) at the peer veth's MAC, so frames leave the relay already addressed."""
        spec = self._current[(d.src, d.dst)]
        ns_src = self.topology.namespace(d.src)
        ctl = self._control_path(d)
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        Impairment.of(spec).write(ctl)
        argv = [sys.executable, "-m", "harness.network.relay", "--tap", d.tun, "--dev", d.dev]
        argv += ["--control", str(ctl), "--tag", self.prefix]
        argv += ["--seed", str(zlib.crc32(d.name.encode())), "--daemon"]  # seed: reproducible loss
        proc = kernel.spawn_in(
            ns_src, argv, start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
        )
        try:
            out, _ = proc.communicate(timeout=_RELAY_START_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise CapabilityError(f"relay for {d.name} did not start within {_RELAY_START_S} s") from None
        if proc.returncode != 0 or not out.strip().isdigit():
            raise CapabilityError(f"relay for {d.name} failed to start (exit status {proc.returncode})")
        pid = int(out)
        self._relays[(d.src, d.dst)] = (pid, start_ticks(pid) or 0)
        with kernel.rtnl(ns_src) as ipr:
            idx = kernel.ifindex(ipr, d.tun)
            ipr.link("set", index=idx, mtu=spec.mtu, txqlen=10000, state="up")
        self._pin_neighbour(d, d.tun)

    def teardown(self) -> None:
        """Stop events, kill every process started for this network, remove its namespaces, files and
        state. Safe to call twice and from a later process (``Network.attach(prefix).teardown()``,
        which refuses while another running process owns the prefix); a no-op in a forked copy of
        the process that built it, and before a build (one refused because the prefix is in use
        must not sweep away its owner's network)."""
        if not self._built or self._builder_pid not in (None, os.getpid()):
            return
        with self._lock:
            if self._scheduler is not None:
                self._scheduler.stop(raise_error=False)
            if not self.kernel_backed:
                self._built = False
                return
            claim = self._claim if holds_prefix(self.prefix) else None
            claim = claim or claim_prefix(self.prefix, hint="stop it first")
            try:
                for proc in self._procs:
                    ticks = start_ticks(proc.pid)
                    if ticks is None and proc.returncode is None:
                        # The leader exited but is not reaped, so its session id is still ours: end
                        # what it left running there, which would otherwise outlive the namespace.
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(proc.pid, signal.SIGKILL)
                    kill_process(proc.pid, ticks or 0, group=True)
                    with contextlib.suppress(Exception):
                        proc.wait(timeout=2)
                self._procs.clear()
                for pid, ticks in self._relays.values():
                    kill_process(pid, ticks, group=False)
                sweep(self.prefix)
                self._relays.clear()
                self._built = False
            finally:
                release_prefix(self.prefix, claim, unlink=True)
                self._claim = None

    # ---- live changes -------------------------------------------------------------------------
    def set_link(self, src: str, dst: str, spec: LinkSpec | None = None, **changes: Any) -> LinkSpec:
        """Change direction src->dst now (a full ``spec``, or fields of the current one). Returns the
        spec now in force. Raises if the kernel refuses: a link must never be silently unshaped."""
        key = (src, dst)
        if key not in self._current:
            raise ScenarioError(f"no link direction {src}->{dst}")
        new = spec if spec is not None else self._current[key].with_changes(**changes)
        with self._lock:
            if self.kernel_backed:
                d = self.topology.direction(src, dst)
                self._shape(d, new)
                if self.backend == "relay":
                    if key in self._relays:
                        Impairment.of(new).write(self._control_path(d))
                        os.kill(self._relays[key][0], signal.SIGUSR1)
                    elif new.impaired:
                        self._current[key] = new
                        self._start_relay(d)
                        self._write_routes()
            self._current[key] = new
            self._save()
        return new

    def run_events(self, events: Sequence | None = None) -> EventScheduler:
        """Start applying live events (default: the scenario's ``[[network.events]]``) on the wall
        clock from now. ``join()`` the result to wait for the last one; teardown stops it."""
        changes = timeline(self.spec.events if events is None else events, dict(self._current))
        self._scheduler = EventScheduler(changes, self._apply_change).start()
        return self._scheduler

    def _apply_change(self, ch: Change) -> None:
        self.set_link(ch.src, ch.dst, ch.spec)

    # ---- state --------------------------------------------------------------------------------
    def _save(self, owner_pid: int | str | None = "keep") -> None:
        if not self.kernel_backed:  # app-delay creates nothing a later process must clean up
            return
        with state_lock(self.prefix):  # another process (net up, the builder) may save at once
            self._save_locked(owner_pid)

    def _save_locked(self, owner_pid: int | str | None) -> None:
        old = State.load(self.prefix)
        owner = (old.owner_pid if old else None) if owner_pid == "keep" else owner_pid
        spawned = [[p.pid, t] for p in self._procs if (t := start_ticks(p.pid)) is not None]
        if old is not None:  # another process (net up, or the builder) may have spawned some too
            spawned += [e for e in old.spawned if e not in spawned and is_alive(*e)]
        st = State(
            prefix=self.prefix,
            backend=self.backend,
            table=_plain(self._table),
            current={f"{s}->{d}": dataclasses.asdict(v) for (s, d), v in self._current.items()},
            owner_pid=owner,  # type: ignore[arg-type]
            relays={f"{s}->{d}": list(v) for (s, d), v in self._relays.items()},
            spawned=spawned,
            interfaces=old.interfaces if old else [],
        )
        st.save()

    def status(self) -> list:
        """Read the kernel back: one ``DirectionStatus`` per direction (``.ok``, ``.problems``)."""
        from harness.network.status import read_status

        return read_status(self)

    def check(self, *, seconds: float = 1.5) -> list:
        """Measure every direction's goodput, RTT and loss against its spec (``Measurement`` rows)."""
        from harness.network.measure import check_direction

        rows = []
        for d in self.topology.directions():
            rows += check_direction(self, d.src, d.dst, seconds=seconds)
        return rows

    def relay_alive(self, src: str, dst: str) -> bool | None:
        """Whether the relay of a direction runs (``None``: that direction has no relay)."""
        v = self._relays.get((src, dst))
        return None if v is None else is_alive(*v)

    def relay_lag(self, *, fresh: bool = True) -> dict[str, LagHistogram]:
        """Each relay's release lateness so far, ``"src->dst" -> LagHistogram`` (its ``.summary()``
        gives the achieved added delay p50/p99 against the configured one; ``.since(earlier)`` the
        lateness between two readings). With ``fresh`` each live relay publishes first (SIGUSR2,
        answered within one turn of its loop). Empty when no direction has a relay."""
        out = {}
        for (src, dst), (pid, ticks) in sorted(self._relays.items()):
            path = lag_path(self.control_path(src, dst))
            before = read_lag(path)
            if fresh and is_alive(pid, ticks):
                os.kill(pid, signal.SIGUSR2)
                deadline = time.monotonic() + _RELAY_ANSWER_S
                while time.monotonic() < deadline:
                    now = read_lag(path)
                    if now is not None and (before is None or now.seq > before.seq):
                        before = now
                        break
                    time.sleep(0.002)
            out[f"{src}->{dst}"] = before if before is not None else LagHistogram()
        return out

    def relay_pid(self, src: str, dst: str) -> int | None:
        v = self._relays.get((src, dst))
        return None if v is None else v[0]

    def control_path(self, src: str, dst: str) -> Path:
        """The relay control file of a direction (JSON ``Impairment``)."""
        return self._control_path(self.topology.direction(src, dst))

    @property
    def table(self) -> dict[str, Any]:
        """The ``[network]`` table this network was made from (what the state file records)."""
        return dict(self._table)


_ROOTLESS_MESSAGE = (
    "Building namespaces needs root. Without root these still work: `net probe`, `net up --dry-run`, "
    "and the app-delay backend (`--backend app-delay`: sites on 127.0.0.1, configured delays reported "
    "for the application to apply; no rate or loss shaping)"
)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


__all__ = ["DEFAULT_PREFIX", "Network", "owned_namespaces", "sweep"]  # re-exported for callers
