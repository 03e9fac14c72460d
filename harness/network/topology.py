"""Pure description of what the builder will create for a ``NetworkSpec``: names, addresses, routes.

Like Mininet's ``Topo``, this holds no I/O. Every site is a namespace ``<prefix><site>`` with one
address (a /32 on ``lo``) from the spec's private /16; every link is a veth pair ``pfb-to-<peer>``;
routes follow shortest paths, so sites without a direct link reach each other through a neighbour.
A direction whose spec needs delay, jitter or loss on the relay backend routes into a TAP device
``pfb-rl-<peer>`` owned by its relay process instead of straight into the veth.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass

from harness.network.spec import NetworkSpec

IF_PREFIX = "pfb-"


@dataclass(frozen=True)
class Direction:
    """One shaped direction: egress of ``dev`` in ``src``'s namespace toward ``dst``."""

    src: str
    dst: str
    dev: str  # veth in src's namespace
    peer_dev: str  # its other end, in dst's namespace
    tun: str  # relay TAP in src's namespace (used on the relay backend when impaired)

    @property
    def name(self) -> str:
        return f"{self.src}->{self.dst}"


@dataclass(frozen=True)
class Route:
    """In ``site``'s namespace: ``dst_site``'s address is reached through neighbour ``via``."""

    site: str
    dst_site: str
    via: str


@dataclass(frozen=True)
class Topology:
    prefix: str
    spec: NetworkSpec

    def namespace(self, site: str) -> str:
        return f"{self.prefix}{site}"

    def address(self, site: str) -> ipaddress.IPv4Address:
        """The site's one address: the /16's network address + 1 + the site's index."""
        return self.spec.subnet.network_address + 1 + self.spec.sites.index(site)

    def direction(self, src: str, dst: str) -> Direction:
        return Direction(src, dst, f"{IF_PREFIX}to-{dst}", f"{IF_PREFIX}to-{src}", f"{IF_PREFIX}rl-{dst}")

    def directions(self) -> list[Direction]:
        return [self.direction(s, d) for s, d, _ in self.spec.directions()]

    def routes(self) -> list[Route]:
        """Next hops by breadth-first search from every site (ties broken by link order)."""
        nbrs: dict[str, list[str]] = {s: [] for s in self.spec.sites}
        for ln in self.spec.links:
            nbrs[ln.a].append(ln.b)
            nbrs[ln.b].append(ln.a)
        out = []
        for site in self.spec.sites:
            first_hop: dict[str, str] = {}
            seen, todo = {site}, deque((n, n) for n in nbrs[site])
            seen.update(nbrs[site])
            while todo:
                node, hop = todo.popleft()
                first_hop[node] = hop
                for nxt in nbrs[node]:
                    if nxt not in seen:
                        seen.add(nxt)
                        todo.append((nxt, hop))
            out += [Route(site, dst, first_hop[dst]) for dst in self.spec.sites if dst in first_hop]
        return out

    def unreachable(self) -> list[tuple[str, str]]:
        """Pairs of sites with no path between them (reported, not an error: a scenario may want it)."""
        reach = {(r.site, r.dst_site) for r in self.routes()}
        return [(a, b) for a in self.spec.sites for b in self.spec.sites if a != b and (a, b) not in reach]


UNLIMITED_MBIT_FOR_BUFFERS = 10_000  # an unshaped direction is sized as if it ran at 10 Gbit/s
_BUF_CAP = 512 << 20


def tcp_buffers(spec: NetworkSpec, site: str) -> dict[str, str]:
    """``tcp_rmem``/``tcp_wmem`` for a site: twice the largest bandwidth-delay product of its links
    (round trip = both directions' delay + jitter), never below Linux's defaults, capped at 512 MiB."""
    bdp = 0.0
    for ln in spec.links:
        if site not in (ln.a, ln.b):
            continue
        rtt_s = (
            ln.forward.delay_ms + ln.forward.jitter_ms + ln.reverse.delay_ms + ln.reverse.jitter_ms
        ) / 1e3
        for d in (ln.forward, ln.reverse):
            rate = d.rate_mbit if d.rate_mbit is not None else UNLIMITED_MBIT_FOR_BUFFERS
            bdp = max(bdp, rate * 1e6 / 8 * rtt_s)
    rmax = min(_BUF_CAP, max(6 << 20, int(2 * bdp)))
    wmax = min(_BUF_CAP, max(4 << 20, int(2 * bdp)))
    return {"net.ipv4.tcp_rmem": f"4096 131072 {rmax}", "net.ipv4.tcp_wmem": f"4096 16384 {wmax}"}
