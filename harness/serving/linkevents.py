"""A scenario's ``[[network.events]]`` on the run clock, for both engines.

One timeline (``harness.network.schedule.timeline``) of the scenario's events, in the modelled
deployment's units: ``at_s`` and ``duration_s`` are model seconds after the run clock's zero, the
local-remote link's delay is ``[link] delay_ms`` (an event's ``delay_ms`` on that link is model ms too)
and rates are ``[network]``'s (``rate_factor`` is relative; ``rate_mbit`` counts against the
direction's own rate). ``simulate`` turns it into ``LinkState``s of its fluid links; ``serve`` divides
its times and that link's delays by the speed-up and applies it to the shaped network
(``harness.emulation.clusters``), as ``net up --hold`` applies a timeline.

The run clock's zero is the first request's scheduled send: in simulate its arrival, in a replay the
start of its schedule.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.config.links import ModelledLink
from harness.config.scenario import LOCAL, REMOTE

if TYPE_CHECKING:
    from harness.network.schedule import Change
    from harness.scenario import Scenario
    from harness.serving.transport import FluidLink

SERVED = frozenset({(LOCAL, REMOTE), (REMOTE, LOCAL)})  # the directions of the modelled link


def with_link_delay(table: Mapping[str, Any], delay_ms: float) -> dict[str, Any]:
    """A copy of a ``[network]`` table whose local-remote link has one-way ``delay_ms`` in both
    directions (jitter scaled by the same factor)."""
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


def model_timeline(scenario: Scenario) -> list[Change]:
    """Every change the scenario's events make, in model units (module docstring); empty without
    events."""
    net = scenario.config.network
    if net is None or not net.events:
        return []
    from harness.network.schedule import timeline  # pyroute2 comes along: only when there are events
    from harness.network.spec import parse_network

    real = scenario.config.link.delay_ms if scenario.config.link is not None else 0.0
    spec = parse_network(with_link_delay(scenario.section("network"), real), source=str(scenario.path))
    return timeline(spec.events, {(s, d): ls for s, d, ls in spec.directions()})


def base_specs(scenario: Scenario) -> dict[tuple[str, str], Any]:
    """Each direction's ``LinkSpec`` before any event (rates as written)."""
    net = scenario.config.network
    return {} if net is None else {(s, d): ls for s, d, ls in net.spec().directions()}


@dataclass(frozen=True)
class LinkState:
    """One direction of simulate's inter-site link from ``t_s`` (model seconds after the run clock's
    zero) on. ``returns=False``: the direction goes down here for good."""

    t_s: float
    src: str
    dst: str
    bandwidth_gbps: float
    delay_ms: float
    up: bool
    returns: bool = True


def fluid_states(scenario: Scenario, link: ModelledLink) -> tuple[LinkState, ...]:
    """The scenario's events as states of the modelled link ``link`` (simulate). A rate is the
    modelled bandwidth times the share of its direction's ``[network]`` rate in force; jitter, loss
    and events on other links are not modelled (``Scenario.warnings`` says so)."""
    changes = [c for c in model_timeline(scenario) if (c.src, c.dst) in SERVED]
    if not changes:
        return ()
    base = base_specs(scenario)
    kv_rate = base[(REMOTE, LOCAL)].rate_mbit
    last = {(c.src, c.dst): c for c in changes}
    out = []
    for c in changes:
        written = base[(c.src, c.dst)].rate_mbit or kv_rate
        share = 1.0 if c.spec.rate_mbit is None or not written else c.spec.rate_mbit / written
        final_down = last[(c.src, c.dst)] is c and not c.spec.up
        out.append(
            LinkState(
                c.t_s, c.src, c.dst, link.bandwidth_gbps * share, c.spec.delay_ms, c.spec.up, not final_down
            )
        )
    return tuple(out)


class LinkSchedule:
    """Applies ``LinkState``s to the fluid links they name, on the loop's clock from ``arm(t0)``."""

    def __init__(self, links: Mapping[tuple[str, str], FluidLink], states: Sequence[LinkState]) -> None:
        self.links = links
        self.states = [s for s in states if (s.src, s.dst) in links]
        self.zero_s: float | None = None

    def arm(self, t0: float) -> None:
        """Start the run clock at loop time ``t0`` (once; later calls change nothing)."""
        if self.zero_s is not None:
            return
        self.zero_s = t0
        loop = asyncio.get_running_loop()
        for s in self.states:
            link = self.links[(s.src, s.dst)]
            loop.call_at(t0 + s.t_s, self._apply, link, s)

    @staticmethod
    def _apply(link: FluidLink, s: LinkState) -> None:
        link.set_state(s.bandwidth_gbps, s.delay_ms, s.up, returns=s.returns)


def events_meta(scenario: Scenario, *, zero: str, applied: Any) -> dict[str, Any] | None:
    """meta.json's ``link_events`` (None without events): what the run clock's zero was, the events
    (``describe_events``) and the changes as ``applied`` (None: the run could not apply them)."""
    events = describe_events(scenario)
    return {"zero": zero, "events": events, "applied": applied} if events else None


def describe_events(scenario: Scenario) -> list[dict[str, Any]]:
    """The scenario's events for meta.json and the dashboard: model seconds after the run clock's zero
    (``end_s`` None: in force to the end), the directions, and what changes."""
    net = scenario.config.network
    if net is None:
        return []
    out = []
    for ev in net.spec().events:
        what = []
        for key, value in ev.changes:
            if key == "down":
                what.append("down" if value else "up")
            elif key == "rate_factor":
                what.append(f"rate ×{value:g}")
            elif key == "rate_mbit":
                what.append(f"rate {value:g} Mbit/s")
            else:
                what.append(f"{key.removesuffix('_ms').removesuffix('_pct')} {value:g}{_UNITS[key]}")
        out.append(
            {
                "start_s": ev.at_s,
                "end_s": None if ev.duration_s is None else ev.at_s + ev.duration_s,
                "directions": [f"{s}->{d}" for s, d in ev.directions],
                "change": ", ".join(what),
            }
        )
    return out


_UNITS = {"delay_ms": " ms", "jitter_ms": " ms", "loss_pct": "%"}
