"""Live link changes: a pure timeline of specs from a list of ``LinkEvent``s, and a small real-time
scheduler that applies it to a running ``Network``.

Overlapping events compose: at any time a direction's spec is its base spec with every active event
applied in start order, so an event ending restores exactly what the others leave in force.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from harness.network.spec import LinkEvent, LinkSpec

Key = tuple[str, str]


@dataclass(frozen=True)
class Change:
    """At ``t_s`` set direction ``src->dst`` to ``spec``."""

    t_s: float
    src: str
    dst: str
    spec: LinkSpec


def timeline(events: Sequence[LinkEvent], base: Mapping[Key, LinkSpec]) -> list[Change]:
    """Every change the events cause, in time order (pure)."""
    ordered = sorted(events, key=lambda e: e.at_s)
    bounds = sorted({e.at_s for e in ordered} | {e.at_s + e.duration_s for e in ordered if e.duration_s})
    current = dict(base)
    out = []
    for t in bounds:
        active = [e for e in ordered if e.at_s <= t and (e.duration_s is None or t < e.at_s + e.duration_s)]
        touched = {d for e in ordered if t in (e.at_s, e.at_s + (e.duration_s or 0)) for d in e.directions}
        for key in sorted(touched):
            spec = base[key]
            for e in active:
                if key in e.directions:
                    spec = e.apply(spec)
            if spec != current[key]:
                current[key] = spec
                out.append(Change(t, key[0], key[1], spec))
    return out


@dataclass(frozen=True)
class Lag:
    """How late one change took effect: ``late_s`` after its planned time, in a state planned to last
    ``lasts_s`` (until the next change of its direction; inf for the last)."""

    change: Change
    late_s: float
    lasts_s: float

    @property
    def share(self) -> float:
        """The part of its planned state the link spent in the old one instead."""
        return self.late_s / self.lasts_s


def worst_lag(changes: Sequence[Change], landed: Sequence[float], now: float) -> Lag | None:
    """Of the changes due by ``now``, the one that lost the largest share of its state (pure). A link cut
    planned for 5 s that lands 1 s late is a 4 s cut: 20%. ``landed[i]``: when ``changes[i]`` took
    effect, on the schedule's clock (they are applied in order, so a shorter list means the rest had
    not by ``now``: late by ``now - t_s`` so far). None when no change was due."""
    worst = None
    for i, ch in enumerate(changes):
        if ch.t_s > now:
            break
        nxt = next((c.t_s for c in changes[i + 1 :] if (c.src, c.dst) == (ch.src, ch.dst)), math.inf)
        at = landed[i] if i < len(landed) else now
        lag = Lag(ch, max(0.0, at - ch.t_s), nxt - ch.t_s)
        if worst is None or lag.share > worst.share:
            worst = lag
    return worst


class EventScheduler:
    """Applies a timeline on a background thread, on the wall clock from ``start()`` (or from the
    ``time.monotonic()`` instant it is given: a run clock's zero chosen elsewhere).

    A failure to apply a change stops the scheduler and is re-raised by ``join()``/``stop()``: a link
    that silently failed to change would spoil the benchmark.
    """

    def __init__(self, changes: Sequence[Change], apply: Callable[[Change], None]) -> None:
        self.changes = list(changes)
        self._apply = apply
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pfb-link-events", daemon=True)
        self._error: BaseException | None = None
        self.applied: list[tuple[float, Change]] = []  # (seconds after start when applied, change)
        self.t0 = 0.0

    def start(self, t0: float | None = None) -> EventScheduler:
        self.t0 = time.monotonic() if t0 is None else t0
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for ch in self.changes:
                if self._stop.wait(max(0.0, self.t0 + ch.t_s - time.monotonic())):
                    return
                self._apply(ch)
                self.applied.append((time.monotonic() - self.t0, ch))
        except BaseException as exc:
            self._error = exc

    def worst_lag(self) -> Lag | None:
        """``worst_lag`` of this schedule so far (None before ``start()`` or before the first change)."""
        if not self._thread.ident:
            return None
        return worst_lag(self.changes, [at for at, _ in list(self.applied)], time.monotonic() - self.t0)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
        if self._error is not None:
            raise self._error

    def stop(self, *, raise_error: bool = True) -> None:
        """Stop before the next change; re-raise a failed change unless ``raise_error=False``."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()
        if raise_error and self._error is not None:
            raise self._error
