"""A scenario's ``[replay]`` table, resolved for ``replay --scenario``: endpoints (one per topology) and
replay defaults.

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
    scrape_interval_s = 0.5                  # each server's /metrics during the run; 0 = off
    scrape_metrics = ["vllm:num_requests_*"] # metric families kept (default: running/waiting/KV/cache)
    [replay.endpoints]
    prfaas = "http://127.0.0.1:18000/prfaas/v1"
    homogeneous = "http://127.0.0.1:18000/homogeneous/v1"
    pd = { prefill_url = "http://127.0.0.1:8100", decode_url = "http://127.0.0.1:8200" }

The table is typed and validated with the whole scenario (``harness/config/runs.py``). Command-line
flags given explicitly override these values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from harness.config.base import where
from harness.config.runs import EndpointTable, ReplayTable
from harness.errors import InputError, ScenarioError
from harness.loadgen.config import Endpoint, metric_patterns
from harness.scenario import Scenario


@dataclass(frozen=True, kw_only=True)
class ReplaySection:
    """What ``[replay]`` says, with the trace path resolved; None where it says nothing."""

    source: str
    model: str | None = None
    api: str | None = None
    trace: Path | None = None
    window_s: tuple[float, float] | None = None
    speedup: float | None = None
    shaping_backend: str | None = None
    warmup_s: float | None = None
    cooldown_s: float | None = None
    seed: int | None = None
    scrape_interval_s: float | None = None
    scrape_metrics: tuple[str, ...] | None = None
    sessions: str | None = None  # [workload] sessions: session mode's think time
    endpoints: Mapping[str, EndpointTable] = field(default_factory=dict)

    def build_endpoints(self, model: str, api: str) -> tuple[Endpoint, ...]:
        """Endpoints with the given model and API unless an endpoint table names its own; a bad URL is
        named by its key in ``[replay.endpoints]``."""
        out = []
        for name, ep in self.endpoints.items():
            try:
                out.append(
                    Endpoint(
                        name=name,
                        model=ep.model or model,
                        api=ep.api or api,
                        url=ep.url or "",
                        prefill_url=ep.prefill_url,
                        decode_url=ep.decode_url,
                    )
                )
            except InputError as exc:
                raise ScenarioError(
                    str(exc), where=where(self.source, ("replay", "endpoints"), (name,))
                ) from None
        return tuple(out)


def parse_replay_section(scenario: Scenario) -> ReplaySection:
    """``[replay]`` of a loaded scenario (``[workload].trace`` is the default trace)."""
    table = scenario.config.replay or ReplayTable()
    trace = table.trace or getattr(scenario.config.workload, "trace", None)
    window = table.window_s
    return ReplaySection(
        source=str(scenario.path),
        model=table.model,
        sessions=getattr(scenario.config.workload, "sessions", None),
        api=table.api,
        trace=(scenario.path.parent / trace) if trace else None,
        window_s=(window[0], window[1]) if window else None,
        speedup=table.speedup,
        shaping_backend=table.shaping_backend,
        warmup_s=table.warmup_s,
        cooldown_s=table.cooldown_s,
        seed=table.seed,
        scrape_interval_s=table.scrape_interval_s,
        scrape_metrics=metric_patterns(
            tuple(table.scrape_metrics), where=where(str(scenario.path), ("replay",), ("scrape_metrics",))
        )
        if table.scrape_metrics
        else None,
        endpoints=table.endpoints,
    )
