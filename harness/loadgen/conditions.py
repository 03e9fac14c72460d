"""The conditions a replay ran under, read at the edges of each measured run: CPU, server state, relay.

Everything here is I/O that never fails a run: a server that cannot be reached, a ``/metrics`` without
the figure or a kernel without ``/proc/stat`` gives ``None`` (an ``unknown`` in the verdict) and, where a
user should hear of it, a warning line. ``harness.validity`` judges what this collects.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from harness.loadgen.plainhttp import fetch_text

# Resets in the order tried: serve's own, vLLM's, SGLang's. The first that answers 2xx wins.
RESET_PATHS = ("/reset", "/reset_prefix_cache", "/flush_cache")
RESET_BUSY_WAIT_S = 10.0
# Prefix-cache hit counters: serve's (tokens), vLLM's (tokens, two spellings over versions).
_HIT_METRICS = (
    "prfaas_cache_hit_tokens_total",
    "vllm:prefix_cache_hits_total",
    "vllm:gpu_prefix_cache_hits_total",
)
_LAG = re.compile(r'^prfaas_loop_lag_seconds\{[^}]*quantile="0\.99"[^}]*\}\s+(\S+)', re.M)
_SITE = re.compile(r'site="([^"]*)"')


# ---------------------------------------------------------------------------- CPU
@dataclass(frozen=True)
class CpuSample:
    """Jiffies: the whole machine's (total, busy, steal) from /proc/stat and this process tree's; and the
    tree's threads' nanoseconds on a CPU and runnable but waiting for one (``/proc/*/task/*/schedstat``)."""

    total: int
    busy: int
    steal: int
    own: int
    run_ns: int = 0
    wait_ns: int = 0


def _own_usage() -> tuple[int, int, int]:
    """(utime+stime of this process, its reaped children and its live descendants; their threads'
    ns on a CPU; their threads' ns waiting for one). Threads that ended meanwhile drop out of the
    nanoseconds, so a share of the two is over the threads alive at both samples, nearly."""
    by_parent: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended meanwhile
        pid = int(entry.name)
        by_parent.setdefault(int(fields[1]), []).append(pid)
        # fields[0] is the state (field 3); utime, stime, cutime, cstime are fields 14-17
        ticks[pid] = sum(int(f) for f in fields[11:15])
    total, run_ns, wait_ns, stack = 0, 0, 0, [os.getpid()]
    while stack:
        pid = stack.pop()
        total += ticks.get(pid, 0)
        stack.extend(by_parent.get(pid, ()))
        for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            if (figures := schedstat_ns(task)) is not None:
                run_ns += figures[0]
                wait_ns += figures[1]
    return total, run_ns, wait_ns


def schedstat_ns(path: Path) -> tuple[int, int] | None:
    """(on-CPU ns, runnable-but-waiting ns) from a thread's ``schedstat``; None when the thread ended
    meanwhile or the kernel keeps no schedstats."""
    try:
        on_cpu, waiting, _ = (int(v) for v in path.read_text().split())
    except (OSError, ValueError):
        return None
    return on_cpu, waiting


def cpu_sample() -> CpuSample | None:
    """Now; None without a Linux /proc."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            parts = [int(v) for v in fh.readline().split()[1:]]
        own, run_ns, wait_ns = _own_usage()
    except (OSError, ValueError, IndexError):
        return None
    parts += [0] * (8 - len(parts))
    user, nice, system, _idle, _iowait, irq, softirq, steal = parts[:8]
    busy = user + nice + system + irq + softirq
    return CpuSample(total=sum(parts[:8]), busy=busy, steal=steal, own=own, run_ns=run_ns, wait_ns=wait_ns)


def cpu_shares(before: CpuSample | None, after: CpuSample | None) -> dict[str, Any] | None:
    """Shares of all CPU time between two samples: stolen, and used by processes outside this tree.

    A server under test that is not a child of this process (a ``serve`` started elsewhere) counts as
    "other": the figure is about this host's load, so read it with that in mind.
    """
    if before is None or after is None or after.total <= before.total:
        return None
    total = after.total - before.total
    other = max(0, (after.busy - before.busy) - (after.own - before.own))
    ran, waited = max(0, after.run_ns - before.run_ns), max(0, after.wait_ns - before.wait_ns)
    return {
        "steal_share": round((after.steal - before.steal) / total, 4),
        "other_share": round(min(1.0, other / total), 4),
        # Of the time this tree's threads wanted a CPU, the share they waited for one: starvation,
        # whoever caused it (others, or the tree's own processes), unlike other_share, which also
        # counts work that only used CPU time this tree left idle.
        "wait_share": round(waited / (ran + waited), 4) if ran + waited else None,
        "cores": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
    }


# ---------------------------------------------------------------------------- servers
def server_roots(urls: Iterable[str | None]) -> list[str]:
    """``scheme://host:port`` of each URL, once each, in order."""
    roots: dict[str, None] = {}
    for url in urls:
        if url:
            parts = urlsplit(url)
            roots[f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"] = None
    return list(roots)


def reset_server(
    root: str, headers: Mapping[str, str] | None = None, *, busy_wait_s: float = RESET_BUSY_WAIT_S
) -> str:
    """POST the first reset the server knows (``RESET_PATHS``); returns the path used, or raises
    ``ResetFailed`` with why (a server without any reset: every path 404/405).

    A path the server has but refuses is asked again every 0.2 s for up to ``busy_wait_s``: SGLang
    answers 400 while any request is queued or running, and the previous run's last requests can still
    be leaving its scheduler after their final chunk reached the client.
    """
    tried = []
    for path in RESET_PATHS:
        deadline = time.monotonic() + busy_wait_s
        while True:
            status, text = fetch_text(root + path, method="POST", headers=headers)
            if 200 <= status < 300:
                return path
            if status == 0:
                raise ResetFailed(f"{root} unreachable ({text})")
            if status in (404, 405) or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        if status not in (404, 405):
            raise ResetFailed(f"{root}{path} answered HTTP {status} for {busy_wait_s:g} s")
        tried.append(path)
    raise ResetFailed(f"{root} has no cache reset ({', '.join(tried)}: 404)")


class ResetFailed(Exception):
    """A server could not be reset (a warning for the run, never an error)."""


@dataclass(frozen=True)
class ServerMetrics:
    """What one server's /metrics said: loop lag p99 by site (serve only), prefix-cache hits."""

    loop_lag_p99_s: dict[str, float]
    cache_hits: float | None


def read_metrics(
    root: str, *, reset_lag: bool = False, headers: Mapping[str, str] | None = None
) -> ServerMetrics | None:
    """Scrape ``root/metrics`` (``?reset_lag=1`` starts serve's lag window afresh); None when it fails."""
    status, text = fetch_text(root + "/metrics" + ("?reset_lag=1" if reset_lag else ""), headers=headers)
    if status != 200:
        return None
    lag: dict[str, float] = {}
    for m in _LAG.finditer(text):
        site = _SITE.search(m.group(0))
        try:
            lag[site.group(1) if site else root] = float(m.group(1))
        except ValueError:
            continue
    hits = None
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in _HIT_METRICS:
            try:
                hits = (hits or 0.0) + float(line.rsplit(" ", 1)[1])
            except (ValueError, IndexError):
                continue
    return ServerMetrics(lag, hits)


# ---------------------------------------------------------------------------- relay
RelayReader = Callable[[], Mapping[str, Any]]


def relay_window(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> dict[str, Any]:
    """The relays' added delay over a run, ``"src->dst" -> {"delay_ms", "achieved_ms_p99", ...}``, from
    two readings of a relay reader (``EmulatedClusters.relay_lag``: histograms with ``since`` and
    ``summary``). Empty when there is no relay or no reading."""
    if not before or not after:
        return {}
    out = {}
    for direction, hist in after.items():
        earlier = before.get(direction)
        try:
            window = hist.since(earlier) if earlier is not None else hist
            summary = dict(window.summary())
        except (AttributeError, TypeError, ValueError):
            continue
        if summary.get("frames"):
            out[str(direction)] = summary
    return out


def read_relay(reader: RelayReader | None) -> Mapping[str, Any] | None:
    """One reading of ``reader``; None without one or when it fails (the relay ended, say)."""
    if reader is None:
        return None
    try:
        return reader()
    except (OSError, RuntimeError, ValueError):
        return None


# ---------------------------------------------------------------------------- link
def link_goodput(net: Any, *, seconds: float = 1.0) -> dict[str, dict[str, float]]:
    """A short bulk-TCP check of every rate-limited, loss-free direction of a shaped network (``Network``
    of ``harness.network``), before a run: ``"src->dst" -> {"measured", "expected"}`` Mbit/s. Empty without
    a kernel-shaped network; a direction that cannot carry the check measures 0."""
    if net is None or not getattr(net, "kernel_backed", False):
        return {}
    from harness.errors import CapabilityError
    from harness.network.measure import expected_goodput_mbit, goodput_mbit

    out = {}
    for ln in net.spec.links:
        for src, dst in ((ln.a, ln.b), (ln.b, ln.a)):
            spec = net.link_spec(src, dst)
            if spec.rate_mbit is None or spec.loss_pct:
                continue
            try:
                got = goodput_mbit(net, src, dst, seconds=seconds)
            except (OSError, TimeoutError, CapabilityError):
                got = 0.0
            expected = expected_goodput_mbit(spec.rate_mbit, spec.mtu)
            out[f"{src}->{dst}"] = {"measured": round(got, 1), "expected": round(expected, 1)}
    return out
