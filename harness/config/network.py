"""The ``[network]`` table: sites, links (one ``LinkSpec`` per direction) and live events.

Pure data and validation; nothing here touches the kernel (``harness.network`` does).

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
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from harness.config.base import Bool, FieldError, Float, NonNegative, Positive, Str, given, nested, table
from harness.config.links import DelayMs, LimitPackets, LinkSpec, LossPct, Mtu, RateMbit

SITE_NAME = re.compile(r"^[a-z][a-z0-9]{0,7}$")  # "pfb-to-" + 8 chars fits IFNAMSIZ (15)
DEFAULT_SUBNET = "10.77.0.0/16"
MAX_SITES = 16  # each site is a namespace, an address and its routes

SiteName = Annotated[Str, Field(pattern=SITE_NAME.pattern)]
SitePair = Annotated[list[Str], Field(min_length=2, max_length=2)]


@table
class DirectionTable:
    """Shaping fields of one direction; unset fields come from the link's common fields."""

    rate_mbit: RateMbit | None = None
    delay_ms: DelayMs | None = None
    jitter_ms: DelayMs | None = None
    loss_pct: LossPct | None = None
    limit_packets: LimitPackets | None = None
    mtu: Mtu | None = None

    def given(self) -> dict[str, Any]:
        """The shaping fields set here (for a link: its common ones, not ``between`` or the sides)."""
        return given(self, DirectionTable)


@table
class LinkTable(DirectionTable):
    """One ``[[network.links]]``: its common fields, and per-direction overrides."""

    between: SitePair
    forward: DirectionTable | None = None
    reverse: DirectionTable | None = None


@table
class EventTable:
    """One ``[[network.events]]``: at ``at_s`` change the named directions; restore after ``duration_s``."""

    at_s: NonNegative
    link: SitePair
    duration_s: Positive | None = None
    direction: Literal["forward", "reverse", "both"] = "both"
    rate_mbit: RateMbit | None = None
    rate_factor: Annotated[Float, Field(gt=0, le=1000)] | None = None
    delay_ms: DelayMs | None = None
    jitter_ms: DelayMs | None = None
    loss_pct: LossPct | None = None
    down: Bool | None = None

    def changes(self) -> tuple[tuple[str, Any], ...]:
        return tuple((k, getattr(self, k)) for k in EVENT_FIELDS if getattr(self, k) is not None)

    @model_validator(mode="after")
    def _changes_something(self) -> EventTable:
        if not self.changes():
            raise FieldError((), f"an event needs one of {', '.join(EVENT_FIELDS)}")
        return self


EVENT_FIELDS = ("rate_mbit", "rate_factor", "delay_ms", "jitter_ms", "loss_pct", "down")


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
                raise FieldError("rate_factor", "needs a direction with rate_mbit set")
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


@table
class NetworkTable:
    """The ``[network]`` table as written; ``spec()`` is the network it describes."""

    sites: Annotated[list[SiteName], Field(min_length=1, max_length=MAX_SITES)]
    subnet: Str = DEFAULT_SUBNET
    links: list[LinkTable] = dataclasses.field(default_factory=list)
    events: list[EventTable] = dataclasses.field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> NetworkTable:
        self.spec()  # sites, links and events must refer to each other correctly
        return self

    def spec(self) -> NetworkSpec:
        """The network: per-direction specs merged from common fields, events checked against links."""
        if len(set(self.sites)) != len(self.sites):
            raise FieldError("sites", "site names must be unique")
        try:
            subnet = ipaddress.IPv4Network(self.subnet)
        except ValueError as exc:
            raise FieldError("subnet", str(exc)) from None
        if subnet.prefixlen != 16 or not subnet.is_private:
            raise FieldError("subnet", f"must be a private /16, got {subnet}")
        links: list[Link] = []
        for i, lt in enumerate(self.links):
            a, b = self._pair(lt.between, ("links", i, "between"))
            if any({ln.a, ln.b} == {a, b} for ln in links):
                raise FieldError(("links", i, "between"), f"duplicate link {a}<->{b}")
            common = lt.given()
            nested(("links", i), partial(LinkSpec, **common))
            fwd, rev = (
                nested(("links", i, side), partial(LinkSpec, **{**common, **(d.given() if d else {})}))
                for side, d in (("forward", lt.forward), ("reverse", lt.reverse))
            )
            links.append(Link(a, b, fwd, rev))
        spec = NetworkSpec(tuple(self.sites), tuple(links), subnet)
        events = tuple(self._event(ev, spec, ("events", i)) for i, ev in enumerate(self.events))
        return dataclasses.replace(spec, events=tuple(sorted(events, key=lambda e: e.at_s)))

    def _pair(self, pair: list[str], loc: tuple[str | int, ...]) -> tuple[str, str]:
        a, b = pair
        for s in (a, b):
            if s not in self.sites:
                raise FieldError(loc, f"unknown site {s!r}; sites are {', '.join(self.sites)}")
        if a == b:
            raise FieldError(loc, "a link needs two different sites")
        return a, b

    def _event(self, ev: EventTable, spec: NetworkSpec, loc: tuple[str | int, ...]) -> LinkEvent:
        a, b = self._pair(ev.link, (*loc, "link"))
        try:
            spec.link(a, b)
        except KeyError:
            raise FieldError((*loc, "link"), f"no link between {a} and {b}") from None
        dirs = {"forward": ((a, b),), "reverse": ((b, a),), "both": ((a, b), (b, a))}[ev.direction]
        event = LinkEvent(ev.at_s, dirs, ev.changes(), ev.duration_s)
        for src, dst in dirs:  # the changed spec must be valid now, not mid-run
            nested(loc, partial(event.apply, spec.link(src, dst).spec(src, dst)))
        return event
