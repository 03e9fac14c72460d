"""Whether a measured run can be trusted: measurements of the run's own conditions against stated bounds.

A replay measures the system under test only while the client keeps its schedule, the emulated sites
keep their clocks, the relay adds the delay it was told to, the link carries its rate, requests
succeed and nothing else takes the machine. ``verdict`` judges each of those (pure: a measurements
mapping and ``ValidityBounds`` in, a ``Verdict`` out). A figure that was not measured is ``unknown``
and never makes a run invalid by itself; docs/analysis.md states the bounds.

Measurements (every key optional, seconds / fractions / Mbit/s / ms as named)::

    send_lag_p99_s          the client's send lag p99
    loop_lag_p99_s          {site: event-loop lag p99 of that emulated site over the run}
    relay                   {"src->dst": {"delay_ms": configured, "achieved_ms_p99": measured}}
    link_goodput_mbit       {"src->dst": {"measured": Mbit/s, "expected": Mbit/s}}
    failed_share            failed requests / requests
    pd_no_kv_share          PD requests whose prefill server returned no kv_transfer_params / requests:
                            any makes the run invalid (no KV moved; the decode server prefilled again)
    cpu                     {"steal_share", "other_share"}: of all CPU time during the run
    client_stall_share      time the client's event loop stalled over 50 ms / the run's time
    client_stall_waited_s   of that, seconds its thread was runnable but had no CPU (or None)
    link_event_lag          {"change", "late_s", "lasts_s"}: of the link events applied during the run, the
                            change that landed latest for how long its state was planned to last
                            (model s; lasts_s None: to the run's end)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from harness.config.validity import ValidityBounds

VALID = "valid"
UNKNOWN = "unknown"

__all__ = [
    "TTFT_PATH_WAKEUPS",
    "UNKNOWN",
    "VALID",
    "ValidityBounds",
    "Verdict",
    "attainment_bounds",
    "combine",
    "verdict",
]


@dataclass(frozen=True)
class Verdict:
    """``valid`` with no reasons, or invalid with one line per broken bound; ``checks`` has every figure."""

    reasons: tuple[str, ...]
    checks: dict[str, Any]

    @property
    def valid(self) -> bool:
        return not self.reasons

    def text(self) -> str:
        """``valid`` or ``invalid: reason; reason``."""
        return VALID if self.valid else "invalid: " + "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.text(),
            "valid": self.valid,
            "reasons": list(self.reasons),
            "checks": self.checks,
        }


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


class _Judge:
    """Collects checks and reasons; a figure that is None is ``unknown``."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.checks: dict[str, Any] = {}

    def check(self, name: str, value: float | None, limit: float, text: str, *, low: bool = False) -> None:
        if value is None:
            self.checks[name] = UNKNOWN
            return
        broken = value < limit if low else value > limit
        self.checks[name] = {"value": value, "bound": limit, "ok": not broken}
        if broken:
            self.reasons.append(text)

    def each(self, name: str, per: Mapping[str, Any] | None) -> list[tuple[str, Any]]:
        """The entries of a per-site/per-direction figure, sorted; ``unknown`` when there are none."""
        if not per:
            self.checks[name] = UNKNOWN
        return sorted((per or {}).items())


def verdict(measurements: Mapping[str, Any], bounds: ValidityBounds | None = None) -> Verdict:
    """Judge ``measurements`` (module docstring) against ``bounds``."""
    b = bounds or ValidityBounds()
    j = _Judge()
    lag = _num(measurements.get("send_lag_p99_s"))
    j.check("send_lag_p99_ms", None if lag is None else lag * 1e3, b.send_lag_p99_ms,
            f"client send-lag p99 {_ms(lag)} > {b.send_lag_p99_ms:g} ms (the client fell behind its schedule)")  # fmt: skip
    for site, value in j.each("loop_lag_p99_ms", measurements.get("loop_lag_p99_s")):
        v = _num(value)
        j.check(f"loop_lag_p99_ms[{site}]", None if v is None else v * 1e3, b.loop_lag_p99_ms,
                f"site {site} event-loop lag p99 {_ms(v)} > {b.loop_lag_p99_ms:g} ms")  # fmt: skip
    for direction, r in j.each("relay_delay_error_ms", measurements.get("relay")):
        configured, achieved = _num(r.get("delay_ms")), _num(r.get("achieved_ms_p99"))
        err = None if configured is None or achieved is None else achieved - configured
        j.check(f"relay_delay_error_ms[{direction}]", err, b.relay_delay_error_ms,
                f"relay {direction} added {achieved} ms at p99 for {configured} ms configured "
                f"(error > {b.relay_delay_error_ms:g} ms)")  # fmt: skip
    for direction, r in j.each("relay_late_max_ms", measurements.get("relay")):
        top = _num(r.get("late_ms_max"))
        j.check(f"relay_late_max_ms[{direction}]", top, b.relay_late_max_ms,
                f"relay {direction} held a frame {top} ms past its due time (> {b.relay_late_max_ms:g} ms): "
                "the link stood still that long, and what crossed it then (KV) arrived late")  # fmt: skip
    for direction, g in j.each("link_goodput_share", measurements.get("link_goodput_mbit")):
        measured, expected = _num(g.get("measured")), _num(g.get("expected"))
        share = None if measured is None or not expected else measured / expected
        j.check(f"link_goodput_share[{direction}]", share, b.link_goodput_share,
                f"link {direction} carried {measured or 0:.0f} of {expected or 0:.0f} Mbit/s before the run "
                f"(< {b.link_goodput_share:.0%})", low=True)  # fmt: skip
    failed = _num(measurements.get("failed_share"))
    j.check("failed_share", failed, b.failed_share,
            f"{failed or 0:.1%} of requests failed (> {b.failed_share:.1%})")  # fmt: skip
    no_kv = _num(measurements.get("pd_no_kv_share"))
    j.check("pd_no_kv_share", no_kv, 0.0,
            f"{no_kv or 0:.0%} of PD requests moved no KV: the prefill server returned no kv_transfer_params "
            "(no KV connector), so the decode server prefilled again and TTFT is not a disaggregated one")  # fmt: skip
    cpu = measurements.get("cpu") or {}
    steal, other = _num(cpu.get("steal_share")), _num(cpu.get("other_share"))
    j.check("cpu_steal_share", steal, b.cpu_steal_share,
            f"CPU steal {steal or 0:.0%} of CPU time (> {b.cpu_steal_share:.0%})")  # fmt: skip
    j.check("cpu_other_share", other, b.cpu_other_share,
            f"other processes used {other or 0:.0%} of CPU time (> {b.cpu_other_share:.0%})")  # fmt: skip
    stalled, waited = (
        _num(measurements.get("client_stall_share")),
        _num(measurements.get("client_stall_waited_s")),
    )
    j.check("client_stall_share", stalled, b.client_stall_share,
            f"the client's event loop stalled {stalled or 0:.1%} of the run (> {b.client_stall_share:.0%}): "
            "tokens that arrived then were timestamped late"
            + ("" if waited is None else f" ({waited:.2f} s of it waiting for a CPU)"))  # fmt: skip
    ev = measurements.get("link_event_lag") or {}
    late, lasts = _num(ev.get("late_s")), _num(ev.get("lasts_s"))
    # lasts_s None: the change's state was to last to the run's end (nothing of it is lost)
    share = None if late is None else 0.0 if lasts is None else late / lasts if lasts else math.inf
    j.check("link_event_lag_share", share, b.link_event_lag_share,
            f"link change {ev.get('change')} landed {late or 0:.2f} s late, {share or 0:.0%} of the {lasts or 0:g} s "
            f"it was to last (> {b.link_event_lag_share:.0%}): the run met a shorter fault than planned")  # fmt: skip
    return Verdict(tuple(j.reasons), j.checks)


TTFT_PATH_WAKEUPS = 5
"""Event-loop wake-ups on the longest first-token path of the emulated clusters (a PrfaaS request):
the router receiving it, the prefill site admitting its leg, that site sending the last KV after the
prefill's planned end, the decode site receiving that KV, and the decode site writing the first token."""


def attainment_bounds(bounds: ValidityBounds, ttft_slo_s: float, time_scale: float = 1.0) -> ValidityBounds:
    """The bounds for a run judged only by SLO attainment against ``ttft_slo_s`` (model s; wall = model
    / ``time_scale``), such as a capacity-ladder rung of ``bench``: the send-lag and loop-lag bounds may
    rise to what shifts a first token by ``send_lag_slo_share`` of the TTFT bound in wall time, never
    below their plain values.

    Why they may scale with the SLO: sending a request δ late moves its arrival by δ, and in a
    work-conserving queue moving arrivals by at most δ moves every first token by at most δ. So a
    request's verdict against the TTFT bound can flip only when its TTFT lies within δ of the bound;
    at 1% of the bound that is a sliver of the distribution, while 10 ms is 40 model-ms at speed-up 4
    against a 30 s bound (0.13%). An emulated site's late wake-up delays one event of a request by its
    lateness; prefill batches and decode steps keep their planned times (docs/serve.md), so lateness
    does not accumulate along a queue, only along the ``TTFT_PATH_WAKEUPS`` wake-ups of one request's
    path: the loop-lag bound is the same share over that many. A relay that stands still δ delays the
    KV crossing then by at most δ, once per request: its stall bound is the send lag's."""
    budget_ms = bounds.send_lag_slo_share * ttft_slo_s / time_scale * 1e3
    return replace(
        bounds,
        send_lag_p99_ms=max(bounds.send_lag_p99_ms, budget_ms),
        loop_lag_p99_ms=max(bounds.loop_lag_p99_ms, budget_ms / TTFT_PATH_WAKEUPS),
        relay_late_max_ms=max(bounds.relay_late_max_ms, budget_ms),
    )


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1e3:.1f} ms"


def combine(verdicts: Mapping[str, str | None]) -> str:
    """One verdict for several (``label -> valid / invalid: … / unknown``, e.g. per topology): invalid
    with every reason, each prefixed by its label when there are several labels; else valid only when
    all are."""
    texts = {k: v for k, v in verdicts.items() if v is not None}
    labelled = len(texts) > 1
    reasons = [
        f"{label}: {reason}" if labelled else reason
        for label, text in texts.items()
        if text.startswith("invalid: ")
        for reason in text.removeprefix("invalid: ").split("; ")
    ]
    if reasons:
        return "invalid: " + "; ".join(dict.fromkeys(reasons))
    return VALID if texts and all(t == VALID for t in texts.values()) else UNKNOWN
