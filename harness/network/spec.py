"""The ``[network]`` table of a scenario: sites, links (one ``LinkSpec`` per direction) and live events.

Pure data and validation; nothing here touches the kernel.

    [network]
    sites = ["client", "local", "remote"]
    subnet = "10.77.0.0/16"            # optional; private /16 used only inside the harness's namespaces
    [[network.links]]
    between = ["local", "remote"]      # fields here apply to both directions ...
    rate_mbit = 1000
    delay_ms = 10
    [network.links.reverse]            # ... and ``forward`` (first->second) / ``reverse`` override them
    loss_pct = 0.5
    [[network.events]]                 # live changes during a run
    at_s = 60
    duration_s = 30                    # optional: restore the previous spec afterwards
    link = ["local", "remote"]
    direction = "both"                 # "forward" | "reverse" | "both"
    rate_factor = 0.1                  # or rate_mbit, delay_ms, jitter_ms, loss_pct, down = true
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.errors import ScenarioError

SITE_NAME = re.compile(r"^[a-z][a-z0-9]{0,7}$")  # "pfb-to-" + 8 chars fits IFNAMSIZ (15)
DEFAULT_SUBNET = "10.77.0.0/16"
_LINK_FIELDS = ("rate_mbit", "delay_ms", "jitter_ms", "loss_pct", "limit_packets", "mtu")
_EVENT_FIELDS = ("rate_mbit", "rate_factor", "delay_ms", "jitter_ms", "loss_pct", "down")


@dataclass(frozen=True, kw_only=True)
class LinkSpec:
    """One direction of a link. ``rate_mbit=None`` means no rate limit; ``up=False`` drops everything."""

    rate_mbit: float | None = None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    limit_packets: int = 1000
    mtu: int = 1500
    up: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.rate_mbit is not None and not 0.001 <= self.rate_mbit <= 34_000:
            problems.append(f"rate_mbit={self.rate_mbit} (0.001..34000, or omit for unlimited)")
        if not 0 <= self.delay_ms <= 10_000:
            problems.append(f"delay_ms={self.delay_ms} (0..10000)")
        if not 0 <= self.jitter_ms <= max(self.delay_ms, 0):
            problems.append(f"jitter_ms={self.jitter_ms} (0..delay_ms)")
        if not 0 <= self.loss_pct <= 100:
            problems.append(f"loss_pct={self.loss_pct} (0..100)")
        if not 1 <= self.limit_packets <= 1_000_000:
            problems.append(f"limit_packets={self.limit_packets} (1..1000000)")
        if not 576 <= self.mtu <= 65_000:
            problems.append(f"mtu={self.mtu} (576..65000)")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def impaired(self) -> bool:
        """Whether delay, jitter or loss is set (netem or the relay is needed)."""
        return self.delay_ms > 0 or self.jitter_ms > 0 or self.loss_pct > 0

    def with_changes(self, **changes: Any) -> LinkSpec:
        return dataclasses.replace(self, **changes)

    def __str__(self) -> str:
        rate = "unlimited" if self.rate_mbit is None else f"{self.rate_mbit:g}Mbit"
        parts = [rate, f"{self.delay_ms:g}ms"]
        if self.jitter_ms:
            parts.append(f"±{self.jitter_ms:g}ms")
        if self.loss_pct:
            parts.append(f"loss {self.loss_pct:g}%")
        if not self.up:
            parts.append("DOWN")
        return " ".join(parts)


@dataclass(frozen=True)
class Link:
    """A bidirectional link between sites ``a`` and ``b``; ``forward`` shapes a->b, ``reverse`` b->a."""

    a: str
    b: str
    forward: LinkSpec
    reverse: LinkSpec

    def spec(self, src: str, dst: str) -> LinkSpec:
        if (src, dst) == (self.a, self.b):
            return self.forward
        if (src, dst) == (self.b, self.a):
            return self.reverse
        raise KeyError(f"link {self.a}<->{self.b} has no direction {src}->{dst}")


@dataclass(frozen=True)
class LinkEvent:
    """At ``at_s`` (seconds from the schedule's start) change ``changes`` on the named directions; when
    ``duration_s`` is set, restore the previous spec afterwards. ``rate_factor`` scales the rate the
    direction had before the event; ``down=True`` drops every packet."""

    at_s: float
    directions: tuple[tuple[str, str], ...]
    changes: tuple[tuple[str, Any], ...]
    duration_s: float | None = None

    def apply(self, spec: LinkSpec) -> LinkSpec:
        """The spec a direction has while this event is in force."""
        changes = dict(self.changes)
        factor = changes.pop("rate_factor", None)
        if factor is not None:
            if spec.rate_mbit is None:
                raise ValueError("rate_factor needs a direction with rate_mbit set")
            changes["rate_mbit"] = spec.rate_mbit * factor
        if changes.pop("down", False):
            changes["up"] = False
        return spec.with_changes(**changes)


@dataclass(frozen=True)
class NetworkSpec:
    """Sites, links and the private /16 their addresses come from, plus scheduled live changes."""

    sites: tuple[str, ...]
    links: tuple[Link, ...]
    subnet: ipaddress.IPv4Network = field(default_factory=lambda: ipaddress.IPv4Network(DEFAULT_SUBNET))
    events: tuple[LinkEvent, ...] = ()

    def link(self, x: str, y: str) -> Link:
        for ln in self.links:
            if {ln.a, ln.b} == {x, y}:
                return ln
        raise KeyError(f"no link between {x} and {y}")

    def directions(self) -> list[tuple[str, str, LinkSpec]]:
        """Every shaped direction as (src, dst, spec)."""
        out = []
        for ln in self.links:
            out += [(ln.a, ln.b, ln.forward), (ln.b, ln.a, ln.reverse)]
        return out


def _link_spec(table: Mapping[str, Any], base: Mapping[str, Any], where: str) -> LinkSpec:
    if not isinstance(table, Mapping):
        raise ScenarioError(f"must be a table, got {table!r}", where=where)
    unknown = set(table) - set(_LINK_FIELDS) - {"between", "forward", "reverse"}
    if unknown:
        raise ScenarioError(f"unknown field(s) {sorted(unknown)}; expected {list(_LINK_FIELDS)}", where=where)
    given = {k: v for k, v in table.items() if k in _LINK_FIELDS}
    for key, value in given.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ScenarioError(f"{key} must be a number, got {value!r}", where=where)
        if key in ("limit_packets", "mtu") and value != int(value):
            raise ScenarioError(f"{key} must be a whole number, got {value!r}", where=where)
    merged = {**base, **{k: int(v) if k in ("limit_packets", "mtu") else v for k, v in given.items()}}
    try:
        return LinkSpec(**merged)
    except (TypeError, ValueError) as exc:
        raise ScenarioError(str(exc), where=where) from None


def _pair(value: Any, sites: tuple[str, ...], where: str) -> tuple[str, str]:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise ScenarioError(f"must be two site names, got {value!r}", where=where)
    a, b = value
    for s in (a, b):
        if s not in sites:
            raise ScenarioError(f"unknown site {s!r}; sites are {list(sites)}", where=where)
    if a == b:
        raise ScenarioError("a link needs two different sites", where=where)
    return a, b


def _event(raw: Mapping[str, Any], spec: NetworkSpec, where: str) -> LinkEvent:
    unknown = set(raw) - {"at_s", "duration_s", "link", "direction", *_EVENT_FIELDS}
    if unknown:
        raise ScenarioError(f"unknown field(s) {sorted(unknown)}", where=where)
    a, b = _pair(raw.get("link"), spec.sites, f"{where}.link")
    try:
        spec.link(a, b)
    except KeyError:
        raise ScenarioError(f"no link between {a} and {b}", where=where) from None
    direction = raw.get("direction", "both")
    dirs = {"forward": ((a, b),), "reverse": ((b, a),), "both": ((a, b), (b, a))}.get(direction)
    if dirs is None:
        raise ScenarioError(f"direction must be forward, reverse or both, got {direction!r}", where=where)
    changes = tuple((k, raw[k]) for k in _EVENT_FIELDS if k in raw)
    if not changes:
        raise ScenarioError(f"an event needs one of {list(_EVENT_FIELDS)}", where=where)
    at_s, duration_s = raw.get("at_s"), raw.get("duration_s")
    if not isinstance(at_s, int | float) or at_s < 0:
        raise ScenarioError(f"at_s must be a number >= 0, got {at_s!r}", where=where)
    if duration_s is not None and (not isinstance(duration_s, int | float) or duration_s <= 0):
        raise ScenarioError(f"duration_s must be a number > 0, got {duration_s!r}", where=where)
    event = LinkEvent(float(at_s), dirs, changes, None if duration_s is None else float(duration_s))
    for src, dst in dirs:  # validate the changed spec now, not mid-run
        try:
            event.apply(spec.link(src, dst).spec(src, dst))
        except (TypeError, ValueError) as exc:
            raise ScenarioError(str(exc), where=where) from None
    return event


def _tables(table: Mapping[str, Any], key: str, where: str) -> list[Mapping[str, Any]]:
    """``table[key]`` as a list of tables (``[[network.links]]``), or an error naming the field."""
    value = table.get(key, [])
    if not (isinstance(value, list) and all(isinstance(v, Mapping) for v in value)):
        raise ScenarioError(
            f"must be a list of tables ([[network.{key}]]), got {value!r}", where=f"{where}.{key}"
        )
    return value


def parse_network(table: Mapping[str, Any], where: str = "[network]") -> NetworkSpec:
    """Parse and validate a ``[network]`` table; errors name the field (``where`` prefixes them)."""
    sites = table.get("sites")
    if not (isinstance(sites, list) and sites and all(isinstance(s, str) for s in sites)):
        raise ScenarioError("sites must be a non-empty list of names", where=f"{where}.sites")
    for s in sites:
        if not SITE_NAME.match(s):
            raise ScenarioError(f"site name {s!r} must match {SITE_NAME.pattern}", where=f"{where}.sites")
    if len(set(sites)) != len(sites):
        raise ScenarioError("site names must be unique", where=f"{where}.sites")
    try:
        subnet = ipaddress.IPv4Network(table.get("subnet", DEFAULT_SUBNET))
    except ValueError as exc:
        raise ScenarioError(str(exc), where=f"{where}.subnet") from None
    if subnet.prefixlen != 16 or not subnet.is_private:
        raise ScenarioError(f"{subnet} must be a private /16", where=f"{where}.subnet")
    links, seen = [], set()
    for i, raw in enumerate(_tables(table, "links", where)):
        w = f"{where}.links[{i}]"
        a, b = _pair(raw.get("between"), tuple(sites), f"{w}.between")
        if frozenset((a, b)) in seen:
            raise ScenarioError(f"duplicate link {a}<->{b}", where=w)
        seen.add(frozenset((a, b)))
        base = _link_spec(raw, {}, w)
        common = {k: getattr(base, k) for k in _LINK_FIELDS}
        fwd = _link_spec(raw.get("forward", {}), common, f"{w}.forward")
        rev = _link_spec(raw.get("reverse", {}), common, f"{w}.reverse")
        links.append(Link(a, b, fwd, rev))
    spec = NetworkSpec(tuple(sites), tuple(links), subnet)
    events = tuple(
        _event(raw, spec, f"{where}.events[{i}]") for i, raw in enumerate(_tables(table, "events", where))
    )
    return dataclasses.replace(spec, events=tuple(sorted(events, key=lambda e: e.at_s)))
