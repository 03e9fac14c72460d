"""The ``[replay]`` table of a scenario file: endpoints (one per topology) and replay defaults.

    [replay]
    model = "kimi-1t-hybrid"
    api = "completions"                      # or "chat"
    trace = "../shared/traces/x.jsonl"       # relative to the scenario file; else [workload].trace
    window_s = [0, 60]                       # trace seconds, [start, end)
    speedup = 10
    shaping_backend = "relay"
    warmup_s = 5
    cooldown_s = 5
    seed = 0
    [replay.endpoints]
    prfaas = "http://127.0.0.1:18000/prfaas/v1"
    homogeneous = "http://127.0.0.1:18000/homogeneous/v1"
    pd = { prefill_url = "http://127.0.0.1:8100", decode_url = "http://127.0.0.1:8200" }

Command-line flags given explicitly override these values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import InputError, ScenarioError
from harness.loadgen.config import Endpoint
from harness.scenario import Scenario

_KEYS = {
    "model",
    "api",
    "trace",
    "window_s",
    "speedup",
    "shaping_backend",
    "warmup_s",
    "cooldown_s",
    "seed",
    "endpoints",
}


@dataclass(frozen=True, kw_only=True)
class ReplaySection:
    """What ``[replay]`` says; None where it says nothing."""

    model: str | None = None
    api: str | None = None
    trace: Path | None = None
    window_s: tuple[float, float] | None = None
    speedup: float | None = None
    shaping_backend: str | None = None
    warmup_s: float | None = None
    cooldown_s: float | None = None
    seed: int | None = None
    endpoints: dict[str, Mapping[str, Any]] = field(default_factory=dict)

    def build_endpoints(self, model: str, api: str) -> tuple[Endpoint, ...]:
        """Endpoints with the given model and API unless an endpoint table names its own."""
        out = []
        for name, spec in self.endpoints.items():
            # str(): a non-string URL then fails Endpoint's URL check in one line, not with a traceback
            prefill, decode = spec.get("prefill_url"), spec.get("decode_url")
            out.append(
                Endpoint(
                    name=name,
                    model=str(spec.get("model", model)),
                    api=str(spec.get("api", api)),
                    url=str(spec.get("url", "")),
                    prefill_url=None if prefill is None else str(prefill),
                    decode_url=None if decode is None else str(decode),
                )
            )
        return tuple(out)


def _num(raw: Mapping[str, Any], key: str, where: str, typ: type = float) -> Any:
    value = raw.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (typ is int and not isinstance(value, int))
    ):
        raise ScenarioError(f"{key} must be a {typ.__name__}, got {value!r}", where=where)
    return typ(value)


def parse_replay_section(scenario: Scenario) -> ReplaySection:
    """Parse and check ``[replay]`` (and ``[workload].trace`` as the default trace)."""
    raw = scenario.section("replay")
    where = scenario.where("replay")
    unknown = set(raw) - _KEYS
    if unknown:
        raise ScenarioError(f"unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}", where=where)
    endpoints: dict[str, Mapping[str, Any]] = {}
    table = raw.get("endpoints", {})
    if not isinstance(table, Mapping):
        raise ScenarioError(
            "endpoints must be a table of NAME = URL or NAME = {url|prefill_url+decode_url}", where=where
        )
    for name, spec in table.items():
        if isinstance(spec, str):
            spec = {"url": spec}
        if not isinstance(spec, Mapping):
            raise ScenarioError(f"endpoint {name!r} must be a URL string or a table", where=where)
        endpoints[str(name)] = spec
    trace = raw.get("trace") or scenario.section("workload").get("trace")
    window = raw.get("window_s")
    if window is not None and not (
        isinstance(window, list)
        and len(window) == 2
        and all(isinstance(x, int | float) and not isinstance(x, bool) for x in window)
        and 0 <= window[0] < window[1]
    ):
        raise ScenarioError(
            f"window_s must be [start, end] seconds, 0 <= start < end, got {window!r}", where=where
        )
    return ReplaySection(
        model=raw.get("model"),
        api=raw.get("api"),
        trace=(scenario.path.parent / str(trace)) if trace else None,
        window_s=(float(window[0]), float(window[1])) if window else None,
        speedup=_num(raw, "speedup", where),
        shaping_backend=raw.get("shaping_backend"),
        warmup_s=_num(raw, "warmup_s", where),
        cooldown_s=_num(raw, "cooldown_s", where),
        seed=_num(raw, "seed", where, int),
        endpoints=endpoints,
    )


def check_endpoints(section: ReplaySection, model: str, api: str, where: str) -> tuple[Endpoint, ...]:
    """``build_endpoints`` with errors that name the scenario table."""
    try:
        return section.build_endpoints(model, api)
    except InputError as exc:
        raise ScenarioError(str(exc), where=where) from None
