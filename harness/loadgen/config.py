"""Value objects that describe a replay: where to send, how hard, how long to wait."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from harness.config.validity import ValidityBounds
from harness.errors import InputError
from harness.loadgen.conditions import RelayReader
from harness.loadgen.telemetry import DEFAULT_INTERVAL_S, DEFAULT_PATTERNS
from harness.traces.sessions import ThinkTime

APIS = ("completions", "chat")
ARRIVALS = ("trace", "poisson", "gamma", "constant")
_PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
# An fnmatch pattern that can match a Prometheus metric name: name characters, *, ? and [classes].
_METRIC_PATTERN = re.compile(r"(?:[A-Za-z0-9_:*?]|\[!?\]?[^\]]*\])+")


def metric_patterns(patterns: tuple[str, ...], *, where: str = "--scrape-metric") -> tuple[str, ...]:
    """``patterns`` if each can match a Prometheus metric name; else an InputError naming ``where`` (a
    pattern that matches nothing would only leave the run without the server's series)."""
    for pattern in patterns:
        if not _METRIC_PATTERN.fullmatch(pattern):
            raise InputError(
                f"{where} {pattern!r} can match no metric name: use letters, digits, '_' and ':', with "
                "fnmatch's *, ? and [...]"
            )
    return patterns


def _base_url(url: str, what: str) -> str:
    """``http://host:port`` plus any path prefix, without ``/v1/...``; InputError if not http(s)."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 -- raises on a port outside 0..65535 or not a number
    except ValueError as exc:
        raise InputError(f"{what} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"{what} must be an http(s) URL like http://127.0.0.1:8000, got {url!r}")
    path = parts.path.rstrip("/")
    for suffix in ("/v1/chat/completions", "/v1/completions", "/v1"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def redact_url(url: str) -> str:
    """The URL without user:password@ (never store credentials in results)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """One OpenAI-compatible target (one topology). With ``prefill_url`` and ``decode_url`` set, requests
    are driven as vLLM's PD proxy does (prefill leg, then decode leg) and ``url`` is not used."""

    name: str
    model: str
    url: str = ""
    api: str = "completions"
    prefill_url: str | None = None
    decode_url: str | None = None

    def __post_init__(self) -> None:
        if self.api not in APIS:
            raise InputError(f"--api must be one of {', '.join(APIS)}, got {self.api!r}")
        if not self.model:
            raise InputError(f"endpoint {self.name!r}: a --model name is required")
        if (self.prefill_url is None) != (self.decode_url is None):
            raise InputError("--prefill-url and --decode-url go together")
        if self.pd:
            object.__setattr__(self, "prefill_url", _base_url(self.prefill_url or "", "--prefill-url"))
            object.__setattr__(self, "decode_url", _base_url(self.decode_url or "", "--decode-url"))
        else:
            object.__setattr__(self, "url", _base_url(self.url, f"endpoint {self.name!r}"))

    @property
    def pd(self) -> bool:
        return self.prefill_url is not None

    @property
    def path(self) -> str:
        return _PATHS[self.api]

    def describe(self) -> dict[str, Any]:
        """For meta.json: URLs without credentials."""
        d = asdict(self)
        for k in ("url", "prefill_url", "decode_url"):
            if d[k]:
                d[k] = redact_url(d[k])
        return d


@dataclass(frozen=True, kw_only=True)
class Timeouts:
    """Seconds. ``first_token_s`` and ``total_s`` count from the actual send."""

    connect_s: float = 10.0
    first_token_s: float = 600.0
    total_s: float = 3600.0

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if not v > 0:
                raise InputError(f"timeout {k} must be positive, got {v}")


@dataclass(frozen=True, kw_only=True)
class LoadSpec:
    """How requests are timed.

    arrival="trace": the trace's own timestamps (already windowed and sped up). Other arrivals take
    the trace's requests in order (cycling when more are needed) at ``rate_rps``; ``gamma_cv`` is the
    gamma process's coefficient of variation (1 = Poisson; larger = burstier). ``rate_rps=inf`` with a
    ``concurrency`` is a closed loop; a finite rate with a concurrency is a rate with a cap (waiting for
    the cap counts as send lag). ``warmup_s``/``cooldown_s`` mark (never drop) the first/last seconds.
    """

    arrival: str = "trace"
    rate_rps: float | None = None
    gamma_cv: float = 2.0
    concurrency: int | None = None
    max_requests: int | None = None
    duration_s: float | None = None
    warmup_s: float = 0.0
    cooldown_s: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arrival not in ARRIVALS:
            raise InputError(f"--arrival must be one of {', '.join(ARRIVALS)}, got {self.arrival!r}")
        if self.arrival != "trace" and self.rate_rps is None:
            raise InputError(f"--arrival {self.arrival} needs --rate")
        if self.rate_rps is not None and not self.rate_rps > 0:
            raise InputError(f"--rate must be positive (or inf), got {self.rate_rps}")
        if self.concurrency is not None and self.concurrency < 1:
            raise InputError(f"--concurrency must be >= 1, got {self.concurrency}")
        if self.closed_loop and self.concurrency is None:
            raise InputError("--rate inf needs --concurrency (a closed loop)")
        if self.max_requests is not None and self.max_requests < 1:
            raise InputError(f"--max-requests must be >= 1, got {self.max_requests}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise InputError(f"--duration must be positive, got {self.duration_s}")
        if self.warmup_s < 0 or self.cooldown_s < 0:
            raise InputError("--warmup and --cooldown must be >= 0")
        if not self.gamma_cv > 0:
            raise InputError(f"--burstiness (gamma CV) must be positive, got {self.gamma_cv}")

    @property
    def closed_loop(self) -> bool:
        return self.rate_rps is not None and math.isinf(self.rate_rps)


@dataclass(frozen=True)
class RayPlacement:
    """Distributed replay's cluster (``harness.loadgen.rayworkers``): its ``address`` (``auto``,
    ``HOST:PORT``, ``ray://HOST:PORT``; None: a local Ray for the run), and the largest clock-offset
    bound accepted between the driver and a worker."""

    address: str | None = None
    max_clock_bound_s: float = 0.005

    def describe(self) -> dict[str, Any]:
        return {"address": self.address or "local", "max_clock_bound_s": self.max_clock_bound_s}


@dataclass(frozen=True, kw_only=True)
class ReplayConfig:
    """Everything a replay needs besides the trace and the output directory."""

    endpoints: tuple[Endpoint, ...]
    load: LoadSpec = field(default_factory=LoadSpec)
    timeouts: Timeouts = field(default_factory=Timeouts)
    workers: int = 1
    api_key_env: str = "OPENAI_API_KEY"
    tokenizer: str | None = None
    tokenize_url: str | None = None  # a server whose POST /tokenize fits the prompts before the run
    shaping_backend: str = "none"
    max_send_lag_s: float = 0.010  # p99 above this: "client saturated"
    run_id: str | None = None
    progress: bool = True
    extra_body: dict[str, Any] = field(default_factory=dict)
    meta_extra: dict[str, Any] = field(default_factory=dict)  # e.g. how the trace was cut, for meta.json
    # Told (endpoint name, t0) as each endpoint's run clock starts: t0 is the time.monotonic() of its
    # zero, the first request's scheduled send (bench starts the emulator's link events from it).
    on_start: Callable[[str, float], None] | None = field(default=None, compare=False)
    # Asked (endpoint name) as each endpoint's run ends: more conditions for its verdict (bench: how
    # late its link events landed, ``EmulatedClusters.event_lag``).
    on_end: Callable[[str], Mapping[str, Any]] | None = field(default=None, compare=False)
    # The verdict's bounds; its send-lag bound is ``max_send_lag_s`` (one figure in force).
    validity: ValidityBounds = field(default_factory=ValidityBounds)
    reset: bool = True  # reset each server's caches and counters before each endpoint's run
    site_urls: tuple[str, ...] = ()  # more server roots whose /metrics report a site's loop lag
    relay_lag: RelayReader | None = None  # the relays' lateness (``EmulatedClusters.relay_lag``)
    link_goodput: dict[str, Any] | None = None  # measured before the run: {"src->dst": {measured, expected}}
    scrape_interval_s: float = DEFAULT_INTERVAL_S  # each server's /metrics during the run; 0 = off
    scrape_metrics: tuple[str, ...] = DEFAULT_PATTERNS  # metric families kept (fnmatch patterns)
    # Session mode (``--sessions``): a later turn waits for its predecessor's end plus this think time.
    sessions: ThinkTime | None = None
    ray: RayPlacement | None = None  # load workers as Ray actors across a cluster (--ray-address)

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise InputError("at least one --endpoint is required")
        names = [e.name for e in self.endpoints]
        if len(set(names)) != len(names):
            raise InputError(f"endpoint names must be unique, got {names}")
        if self.workers < 1:
            raise InputError(f"--workers must be >= 1, got {self.workers}")
        if self.load.concurrency is not None and self.workers > self.load.concurrency:
            # each worker keeps at least one request in flight, so the cap would be exceeded
            raise InputError(
                f"--workers {self.workers} exceeds --concurrency {self.load.concurrency}; use at most that many"
            )
        if self.tokenizer and self.tokenize_url:
            raise InputError("use either --tokenizer FILE or --tokenize-url URL, not both")
        if self.sessions is not None:
            if self.load.arrival != "trace" or self.load.closed_loop:
                raise InputError("--sessions replays the trace's own timestamps: drop --rate/--arrival")
            if self.workers != 1 and self.ray is None:
                raise InputError(
                    "--sessions needs --workers 1 (a session's turns wait on each other), or --ray-address "
                    "(whose workers each get whole sessions)"
                )
        if self.ray is not None:
            if self.load.closed_loop:
                raise InputError(
                    "--ray-address shards an open-loop schedule: a closed loop (--rate inf) cannot"
                )
            if not self.ray.max_clock_bound_s > 0:
                raise InputError(
                    f"--max-clock-bound-ms must be > 0, got {self.ray.max_clock_bound_s * 1e3:g}"
                )
        if not (self.scrape_interval_s >= 0 and math.isfinite(self.scrape_interval_s)):
            raise InputError(
                f"--scrape-interval must be >= 0 seconds (0 = off), got {self.scrape_interval_s}"
            )
        metric_patterns(self.scrape_metrics)
        object.__setattr__(self, "site_urls", tuple(_base_url(u, "--metrics-url") for u in self.site_urls))
        if self.tokenize_url:
            object.__setattr__(self, "tokenize_url", _base_url(self.tokenize_url, "--tokenize-url"))

    def bounds(self) -> ValidityBounds:
        """The verdict's bounds in force (``validity`` with the send-lag bound of ``max_send_lag_s``)."""
        return replace(self.validity, send_lag_p99_ms=self.max_send_lag_s * 1e3)

    def describe(self) -> dict[str, Any]:
        """Configuration for meta.json: no API key, no URL credentials."""
        return {
            "endpoints": [e.describe() for e in self.endpoints],
            "load": asdict(self.load),
            "timeouts": asdict(self.timeouts),
            "workers": self.workers,
            "api_key_env": self.api_key_env,
            "tokenizer": self.tokenizer,
            "tokenize_url": redact_url(self.tokenize_url) if self.tokenize_url else None,
            "shaping_backend": self.shaping_backend,
            "max_send_lag_s": self.max_send_lag_s,
            "extra_body": self.extra_body,
            "validity": self.bounds().to_dict(),
            "reset": self.reset,
            "scrape_interval_s": self.scrape_interval_s,
            "scrape_metrics": list(self.scrape_metrics),
            "sessions": None if self.sessions is None else asdict(self.sessions),
            "ray": None if self.ray is None else self.ray.describe(),
        }
