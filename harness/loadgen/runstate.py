"""One endpoint's measured run, bracketed: the state it started from, the conditions it ran under.

Before the schedule starts: reset the servers (unless ``--no-reset``), read the prefix-cache hits they
report (warm caches at the start are warned about and recorded), start serve's lag window, sample the
CPU and the relays. After the run: the same readings again; ``measurements`` turns them and the run's
own figures into what ``harness.validity.verdict`` judges.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.loadgen.conditions import (
    CpuSample,
    ResetFailed,
    cpu_sample,
    cpu_shares,
    read_metrics,
    read_relay,
    relay_window,
    reset_server,
    server_roots,
)
from harness.loadgen.config import Endpoint, ReplayConfig
from harness.pdproxy import NO_KV_TRANSFER


@dataclass
class RunStart:
    """What was read just before an endpoint's schedule started."""

    roots: list[str]
    metric_roots: list[str]
    headers: dict[str, str]
    reset: dict[str, str] = field(default_factory=dict)  # root -> reset path used, or why none
    cache_hits: dict[str, float | None] = field(default_factory=dict)  # root -> hit counter at start
    cpu: CpuSample | None = None
    relay: Mapping[str, Any] | None = None

    def warm(self, root: str) -> bool:
        """The server reports cache hits and was not reset just now. vLLM's hit counter counts over the
        server's life (its /reset_prefix_cache empties the cache, not the counter): after a reset it says
        nothing about the cache."""
        return bool(self.cache_hits.get(root)) and not self.reset.get(root, "").startswith("/")

    def describe(self) -> dict[str, Any]:
        """For meta.json: the reset done and the cache state the run started from."""
        warm = any(self.warm(r) for r in self.cache_hits)
        return {"reset": self.reset, "cache_hits_at_start": self.cache_hits, "warm_cache": warm}


def run_start(ep: Endpoint, config: ReplayConfig, warn: Callable[[str], None]) -> RunStart:
    """Reset (``config.reset``) and read the servers behind ``ep``; sample CPU and relays. Never raises."""
    roots = server_roots([ep.url, ep.prefill_url, ep.decode_url])
    key = os.environ.get(config.api_key_env)
    start = RunStart(
        roots=roots,
        metric_roots=list(dict.fromkeys(roots + server_roots(config.site_urls))),
        headers={"Authorization": f"Bearer {key}"} if key else {},
    )
    for root in roots if config.reset else ():
        try:
            start.reset[root] = reset_server(root, start.headers)
        except ResetFailed as exc:
            start.reset[root] = f"not reset: {exc}"
            warn(f"{exc}; the run starts from whatever state the server is in")
    for root in start.metric_roots:
        metrics = read_metrics(root, reset_lag=True, headers=start.headers)
        hits = None if metrics is None else metrics.cache_hits
        start.cache_hits[root] = hits
        if start.warm(root):
            warn(f"{root} reports {hits:g} prefix-cache hit tokens before the run: its caches are warm")
    start.cpu = cpu_sample()
    start.relay = read_relay(config.relay_lag)
    return start


def run_conditions(start: RunStart, config: ReplayConfig) -> dict[str, Any]:
    """The conditions over the run just ended (each ``None``/empty when it could not be read)."""
    lag: dict[str, float] = {}
    for root in start.metric_roots:
        metrics = read_metrics(root, headers=start.headers)
        if metrics is not None:
            lag.update(metrics.loop_lag_p99_s)
    return {
        "loop_lag_p99_s": lag,
        "cpu": cpu_shares(start.cpu, cpu_sample()),
        "relay": relay_window(start.relay, read_relay(config.relay_lag)),
        "link_goodput_mbit": config.link_goodput or {},
    }


def measurements(summary: Mapping[str, Any]) -> dict[str, Any]:
    """What the verdict judges, from an endpoint's summary (``RunStats.summary`` plus ``conditions``)."""
    n = summary["requests"]
    loop, elapsed = summary.get("client_loop"), summary.get("elapsed_s")
    return {
        "send_lag_p99_s": summary["send_lag_s"]["p99"],
        # of each client process's time (--workers: a stall in one delays only its requests)
        "client_stall_share": loop["stalled_s"] / (elapsed * max(loop["processes"], 1))
        if loop and elapsed
        else None,
        "client_stall_waited_s": loop["waited_s"] if loop else None,
        "failed_share": summary["failed"] / n if n else None,
        "pd_no_kv_share": summary["warnings"].get(NO_KV_TRANSFER, 0) / n if n else None,
        **summary.get("conditions", {}),
    }
