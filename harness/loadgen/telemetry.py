"""Server telemetry on the client's timeline: each server's Prometheus ``/metrics``, scraped during a run.

A scraper thread per endpoint run reads every server root behind the endpoint every ``interval_s``
seconds, keeps the samples whose metric family matches ``patterns`` (running and waiting requests,
KV-cache usage, prefix-cache queries and hits, KV transfers; vLLM's, SGLang's and the emulator's names)
and appends them to ``server_metrics.jsonl`` in the run directory as they arrive, one line per sample:

    {"time_s": 1.23, "topology": "prfaas", "server": "http://127.0.0.1:8000",
     "metric": "vllm:num_requests_running", "labels": "{\\"site\\": \\"local\\"}", "value": 3.0}

``time_s`` is on the records' run clock (seconds after the endpoint's t0, the midpoint of the scrape
pass over the endpoint's servers).
``harness.servermetrics`` holds the file format; an interrupted run keeps what the log holds.

The scraper is a thread of its own, not a task on the client's event loop: a slow or dead server (a
short timeout bounds each scrape) or a long exposition to parse never delays a send or a token
timestamp. A server without ``/metrics`` (404, or text that is not Prometheus exposition), or one no
scrape reached, is one warning in meta.json and no series, never a failed run.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from fnmatch import translate
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from harness.loadgen.plainhttp import fetch_text

DEFAULT_INTERVAL_S = 0.5
# Metric families kept by default (fnmatch patterns on the family name; counters without ``_total``).
DEFAULT_PATTERNS = (
    # vLLM 0.32, names read from a live server (gpu_* are older spellings); external_* and
    # prompt_tokens_by_source{source="external_kv_transfer"} count KV a connector brought in, nixl_* its
    # transfers, num_requests_kv_fetch_by_stage the requests waiting for them
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc", "vllm:prefix_cache_queries", "vllm:prefix_cache_hits",
    "vllm:gpu_prefix_cache_queries", "vllm:gpu_prefix_cache_hits", "vllm:external_prefix_cache_*",
    "vllm:prompt_tokens_by_source", "vllm:num_requests_kv_fetch_by_stage", "vllm:nixl_*",
    # SGLang, its documented production and disaggregation metrics
    "sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage", "sglang:cache_hit_rate",
    "sglang:cached_tokens", "sglang:num_prefill_*_queue_reqs", "sglang:num_decode_*_queue_reqs",
    "sglang:kv_transfer_*", "sglang:num_transfer_failed_reqs",
    # the emulated clusters' own KV-transfer and link figures (they expose vLLM's names for the rest)
    "prfaas_kv_bytes_sent", "prfaas_kv_bytes_received", "prfaas_kv_transfers_in_flight",
    "prfaas_link_utilisation",
)  # fmt: skip


class NotPrometheus(ValueError):
    """A ``/metrics`` response that is not Prometheus text exposition."""


_SUFFIXES = ("_total", "_created", "_bucket", "_count", "_sum")


def _family(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _matcher(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    regex = re.compile("|".join(f"(?:{translate(p)})" for p in patterns) or "(?!)")
    return lambda name: regex.match(name) is not None


def _relevant(text: str, keep: Callable[[str], bool]) -> str:
    """The lines of ``text`` that can belong to a kept family (the parser then reads a few lines, not a
    vLLM exposition's 50 kB: about 2 ms instead of 20)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("#"):
            words = line.split(None, 3)
            name = words[2] if len(words) > 2 and words[1] in ("HELP", "TYPE") else ""
        else:
            name = line.split("{", 1)[0].strip().split(" ", 1)[0]
        if name and (keep(name) or keep(_family(name))):
            lines.append(line)
    return "\n".join(lines) + "\n"


def parse_samples(text: str, patterns: Iterable[str]) -> list[tuple[str, str, float]]:
    """(sample name, labels as sorted JSON, value) of every sample whose family matches ``patterns``.

    Raises ``NotPrometheus`` when ``text`` does not parse or holds no metric family at all."""
    keep = _matcher(tuple(patterns))
    relevant = _relevant(text, keep)
    if not relevant.strip():  # nothing kept: is it Prometheus text at all?
        relevant = text
    out = []
    families = 0
    try:
        for family in text_string_to_metric_families(relevant):
            families += 1
            if not keep(family.name):
                continue
            for s in family.samples:
                if s.name.endswith("_created"):  # a counter's creation time, not a figure
                    continue
                out.append((s.name, json.dumps(s.labels, sort_keys=True), float(s.value)))
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise NotPrometheus(f"not Prometheus text ({exc.__class__.__name__}: {str(exc)[:80]})") from None
    if not families:
        raise NotPrometheus("no metric families in the response")
    return out


@dataclass
class ServerScrapes:
    """What scraping one server root gave over one endpoint's run (for meta.json)."""

    scrapes: int = 0
    samples: int = 0
    failed: int = 0
    warning: str | None = None

    def describe(self) -> dict[str, Any]:
        return asdict(self)


class Scraper:
    """Scrapes ``roots`` for one endpoint's run on a thread of its own; ``start(t0)`` once the run clock
    has its zero, ``stop()`` (idempotent) takes a last scrape and joins."""

    def __init__(
        self,
        sink: Callable[[list[dict[str, Any]]], None],
        topology: str,
        roots: Iterable[str],
        *,
        interval_s: float,
        patterns: Iterable[str],
        headers: Mapping[str, str] | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.sink, self.topology, self.roots = sink, topology, list(roots)
        self.interval_s, self.patterns = interval_s, tuple(patterns)
        self.headers = dict(headers or {})
        self.warn = warn or (lambda _line: None)
        self.timeout_s = min(2.0, max(0.2, 2 * interval_s))
        self.servers = {r: ServerScrapes() for r in self.roots}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def scrape_once(self) -> None:
        """One pass over every root still worth scraping (a root found without /metrics is dropped).

        Every sample of a pass gets the pass's midpoint, so the servers' figures add up per pass."""
        begin = time.monotonic()
        got = [
            (root, state, *fetch_text(root + "/metrics", headers=self.headers, timeout_s=self.timeout_s))
            for root, state in self.servers.items()
            if state.warning is None
        ]
        at = (begin + time.monotonic()) / 2 - self._t0
        for root, state, status, text in got:
            if status == 0:  # unreachable or slow this time: count it, try again next tick
                state.failed += 1
                continue
            try:
                if status != 200:
                    raise NotPrometheus(f"HTTP {status}")
                samples = parse_samples(text, self.patterns)
            except NotPrometheus as exc:
                state.warning = f"{root}/metrics: {exc}; no server series for it"
                self.warn(state.warning)
                continue
            state.scrapes += 1
            state.samples += len(samples)
            if samples:
                rows = [
                    {"time_s": round(at, 4), "topology": self.topology, "server": root,
                     "metric": name, "labels": labels, "value": value}
                    for name, labels, value in samples
                ]  # fmt: skip
                self.sink(rows)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.scrape_once()
            next_at = max(next_at + self.interval_s, time.monotonic())  # a slow scrape skips ticks
            self._stop.wait(next_at - time.monotonic())

    def start(self, t0: float) -> None:
        """Scrape from now on, timed against ``t0`` (the run clock's zero, ``time.monotonic()``)."""
        self._t0 = t0
        if self.roots and self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"scrape-{self.topology}", daemon=True)
            self._thread.start()

    def stop(self, *, last: bool = True) -> None:
        """Stop the thread; ``last`` takes one more scrape after the run (the state it ended in)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if last:
            self.scrape_once()
        for root, state in self.servers.items():
            if state.warning is None and state.failed and not state.scrapes:
                state.warning = (
                    f"{root}/metrics: no scrape answered ({state.failed} failed); no server series"
                )
                self.warn(state.warning)
            elif state.warning is None and state.scrapes and not state.samples:
                state.warning = f"{root}/metrics: none of its metrics matched the list kept; no server series"
                self.warn(state.warning)

    def describe(self) -> dict[str, Any]:
        """For meta.json: each server's scrape count, samples, failures and warning (if any)."""
        return {r: s.describe() for r, s in self.servers.items()}
