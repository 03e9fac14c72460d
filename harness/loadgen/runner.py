"""``replay()``: one trace, one schedule, every endpoint in turn, records streamed into one run directory."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from harness.errors import InputError
from harness.loadgen.client import stream_options
from harness.loadgen.config import Endpoint, ReplayConfig, redact_url
from harness.loadgen.driver import WorkerSetup, drive
from harness.loadgen.progress import Progress, print_summary
from harness.loadgen.rayworkers import RayWorkers
from harness.loadgen.runstate import measurements, run_conditions, run_start
from harness.loadgen.schedule import Schedule, build_schedule
from harness.loadgen.sse import PRFAAS_FIELDS, PRFAAS_KEY
from harness.loadgen.stalls import watched
from harness.loadgen.stats import RunStats
from harness.loadgen.telemetry import Scraper
from harness.loadgen.tokenize import prepare_prompts
from harness.loadgen.workers import run_workers
from harness.records import RunWriter, new_run_id
from harness.servermetrics import TelemetryLog
from harness.traces.frame import Trace
from harness.traces.prompts import PromptFits, PromptSynth
from harness.traces.sessions import session_plan
from harness.validity import UNKNOWN, combine, verdict

_LEAD_S = 0.05


@dataclass(frozen=True)
class ReplayResult:
    """Where the records went and what each endpoint's run looked like (``RunStats.summary()``)."""

    run_dir: Path
    run_id: str
    summaries: dict[str, dict[str, Any]]
    complete: bool = True
    verdict: str = UNKNOWN  # "valid" | "invalid: reasons" (``harness.validity``)

    @property
    def error_rate(self) -> float:
        n = sum(s["requests"] for s in self.summaries.values())
        return sum(s["failed"] for s in self.summaries.values()) / n if n else 0.0

    @property
    def all_failed(self) -> bool:
        """Not one request of any endpoint succeeded (an unreachable endpoint, a server that died)."""
        return all(s["requests"] == s["failed"] for s in self.summaries.values())


def replay(
    trace: Trace,
    config: ReplayConfig,
    out_dir: str | Path,
    *,
    quiet: bool = False,
    prompt_fits: PromptFits | None = None,
) -> ReplayResult:
    """Replay ``trace`` (already windowed/sped up) against every endpoint of ``config``, one after another,
    with the same schedule and prompts (paired). Records go to ``out_dir`` as they finish; Ctrl-C keeps
    them and marks the run incomplete (KeyboardInterrupt is re-raised).

    With ``config.tokenize_url`` (a server's /tokenize) or ``config.tokenizer`` (a tokenizer.json) the
    prompts are fitted before the schedule starts, so the run itself never tokenizes (``prompt_fits``
    reuses an earlier fitting of the same trace rows, as a sweep does).
    """
    check_credentials(config)
    schedule = build_schedule(trace, config.load)
    plan = None if config.sessions is None else session_plan(trace, config.sessions, seed=config.load.seed)
    preparation = None
    if (config.tokenize_url or config.tokenizer) and prompt_fits is None:
        prompt_fits, preparation = _fit_prompts(trace, _rows(schedule), config, quiet)
    run_id = config.run_id or new_run_id("replay")
    meta = {
        "command": "replay",
        "source": "replay",
        "run_id": run_id,
        "topologies": [e.name for e in config.endpoints],
        "config": config.describe(),
        "seed": config.load.seed,
        "shaping_backend": config.shaping_backend,
        "trace": {"source": trace.source, "requests": len(trace), "span_s": trace.duration_s},
        "schedule": {"requests": len(schedule), "closed_loop": schedule.closed_loop},
        "sessions": None if plan is None else {"sessions": plan.sessions, **asdict(config.sessions)},
        "prompts": {
            "tokenizer": config.tokenizer,
            "tokenize_url": config.describe()["tokenize_url"],
            "token_exact": prompt_fits is not None,
            "preparation": preparation.describe() if preparation else None,
        },
        # continuous_usage_stats asks for the running completion_tokens on every chunk (tokens per chunk);
        # each record's tokens_per_chunk_max is None where the server sent no such counts.
        "stream_options": stream_options(config.extra_body),
        "breakdown_wire_format": {
            "key": PRFAAS_KEY,
            "fields": {k: v.__name__ for k, v in PRFAAS_FIELDS.items()},
        },
        **config.meta_extra,
    }
    summaries: dict[str, dict[str, Any]] = {}
    saturated: dict[str, bool] = {}
    verdicts: dict[str, str] = {}
    # Ray's workers are placed and their clocks checked before the run directory exists: a refusal writes nothing
    pool = RayWorkers(config.ray, config.workers) if config.ray is not None else contextlib.nullcontext()
    with pool as ray_workers, RunWriter(out_dir, meta) as writer, _telemetry(writer.run_dir) as telemetry:
        for ep in config.endpoints:
            stats = RunStats()
            start = run_start(ep, config, _warner(ep.name))
            scraper = _scraper(ep, config, start.metric_roots, start.headers, telemetry)
            ended = False
            try:
                _run_endpoint(
                    ep, trace, schedule, config, writer, stats, prompt_fits, run_id, quiet, scraper, plan,
                    ray_workers,
                )  # fmt: skip
                ended = True
            finally:
                if scraper is not None:
                    scraper.stop(last=ended)  # after Ctrl-C, no last scrape: stop at once
                summary = stats.summary()
                if scraper is not None:
                    summary["server_metrics"] = scraper.describe()
                if ray_workers is not None:
                    summary["ray"] = ray_workers.describe()
                p99 = summary["send_lag_s"]["p99"]
                saturated[ep.name] = p99 is not None and p99 > config.max_send_lag_s
                summary["client_saturated"] = saturated[ep.name]
                # A closed loop bounded only by --duration schedules no count: it is done when time is up.
                load = config.load
                timed = schedule.closed_loop and load.max_requests is None and load.duration_s is not None
                summary["scheduled"] = None if timed else len(schedule)
                summary["start_state"] = start.describe()
                if stats.first is not None and stats.first[1]:  # the first request hit a cache: warm
                    summary["start_state"]["warm_cache"] = True
                    _warner(ep.name)(
                        f"the first request found {stats.first[1]} cached prompt tokens: the server's cache "
                        "was warm at the start"
                    )
                summary["conditions"] = {
                    **run_conditions(start, config),
                    **(config.on_end(ep.name) if config.on_end is not None else {}),
                }
                judged = verdict(measurements(summary), config.bounds())
                summary["validity"] = judged.to_dict()
                verdicts[ep.name] = judged.text()
                summaries[ep.name] = summary
                writer.update_meta(
                    summaries=summaries,
                    client_saturated=any(saturated.values()),
                    validity={"verdict": combine(verdicts), "by_topology": verdicts},
                )
                print_summary(
                    ep.name, summary, quiet=quiet, saturated=saturated[ep.name], bound_s=config.max_send_lag_s
                )
        # Complete means every scheduled request of every endpoint ended (ok or failed), uninterrupted.
        missing = {
            n: s["scheduled"] - s["requests"]
            for n, s in summaries.items()
            if s["scheduled"] is not None and s["requests"] < s["scheduled"]
        }
        complete = not missing
        writer.close(
            complete=complete,
            reason=None
            if complete
            else "unfinished requests: " + ", ".join(f"{n} {k}" for n, k in missing.items()),
        )
    return ReplayResult(writer.run_dir, run_id, summaries, complete, combine(verdicts))


@contextlib.contextmanager
def _telemetry(run_dir: Path):
    """The run's server-metrics log, turned into Parquet however the run ends."""
    log = TelemetryLog(run_dir)
    try:
        yield log
    finally:
        log.close()


def _scraper(ep: Endpoint, config: ReplayConfig, roots, headers, log: TelemetryLog) -> Scraper | None:
    if not config.scrape_interval_s:
        return None
    return Scraper(
        log.append, ep.name, roots, interval_s=config.scrape_interval_s, patterns=config.scrape_metrics,
        headers=headers, warn=_warner(ep.name),
    )  # fmt: skip


def _warner(name: str) -> Callable[[str], None]:
    """Warnings about a run's state print even with --quiet: they are problems."""

    def warn(line: str) -> None:
        print(f"{name}: warning: {line}", file=sys.stderr)

    return warn


def check_credentials(config: ReplayConfig) -> None:
    """URL credentials and an API key would both be the Authorization header: refuse before any work."""
    if not os.environ.get(config.api_key_env):
        return
    for ep in config.endpoints:
        for url in (ep.url, ep.prefill_url, ep.decode_url):
            if url and "@" in urlsplit(url).netloc:
                raise InputError(
                    f"endpoint {ep.name!r}: {redact_url(url)} carries user:password@ and ${config.api_key_env} "
                    "is set too; both would be the Authorization header, so give only one"
                )


def replay_sweep(
    trace: Trace, config: ReplayConfig, rates: list[float], out_dir: str | Path, *, quiet: bool = False
) -> list[ReplayResult]:
    """One run per offered rate, each in ``out_dir/rate-<r>``; same trace rows, same prompts."""
    subs = [replace(config, load=_rate_load(config, rate), run_id=None) for rate in rates]
    fits = None
    if config.tokenize_url or config.tokenizer:  # fit once, for every row any rate's schedule uses
        rows = np.unique(np.concatenate([_rows(build_schedule(trace, sub.load)) for sub in subs]))
        fits, _ = _fit_prompts(trace, rows, config, quiet)
    results = []
    for rate, sub in zip(rates, subs, strict=True):
        tag = "inf" if math.isinf(rate) else f"{rate:g}"
        results.append(replay(trace, sub, Path(out_dir) / f"rate-{tag}", quiet=quiet, prompt_fits=fits))
    return results


def _rate_load(config: ReplayConfig, rate: float):
    arrival = "poisson" if config.load.arrival == "trace" else config.load.arrival
    return replace(config.load, rate_rps=rate, arrival=arrival)


def _rows(schedule: Schedule) -> np.ndarray:
    """Trace rows a schedule can send (a closed loop cycles through the trace)."""
    if schedule.row is not None:
        return np.unique(schedule.row)
    return np.arange(min(schedule.count, schedule.trace_len))


def _fit_prompts(trace: Trace, rows: np.ndarray, config: ReplayConfig, quiet: bool):
    apis = {e.api for e in config.endpoints}
    if len(apis) > 1:
        raise InputError("token-exact prompts need one --api for every endpoint (the special tokens differ)")
    api = apis.pop()
    fits, prep = prepare_prompts(
        trace, rows, url=config.tokenize_url, tokenizer=config.tokenizer, model=config.endpoints[0].model,
        api=api, salt=config.load.seed, api_key=os.environ.get(config.api_key_env) or None,
    )  # fmt: skip
    where = f"{config.describe()['tokenize_url']}/tokenize" if config.tokenize_url else config.tokenizer
    if not quiet:
        print(
            f"prompts: {prep.rows} fitted to {where} with {prep.calls} counts in {prep.seconds:.1f}s; "
            f"{prep.special.count} special tokens per prompt taken off",
            file=sys.stderr,
        )
    if config.tokenizer and api == "chat":
        print(
            "warning: a tokenizer.json has no chat template: the server's template tokens are not taken "
            "off (--tokenize-url counts them)",
            file=sys.stderr,
        )
    if prep.short_rows:
        print(
            f"warning: {prep.short_rows} prompts are no longer than the server's {prep.special.count} "
            "special tokens: sent with one token of text",
            file=sys.stderr,
        )
    return fits, prep


def _run_endpoint(
    ep: Endpoint, trace, schedule: Schedule, config, writer, stats, fits, run_id, quiet, scraper, plan=None,
    ray_workers: RayWorkers | None = None,
) -> None:  # fmt: skip
    api_key = os.environ.get(config.api_key_env) or None

    def setup(t0: float, wall_offset_s: float) -> WorkerSetup:
        if config.on_start is not None:
            config.on_start(ep.name, t0)
        if scraper is not None:
            scraper.start(t0)
        return WorkerSetup(
            run_id=run_id,
            t0=t0,
            wall_offset_s=wall_offset_s,
            timeouts=config.timeouts,
            api_key=api_key,
            extra_body=config.extra_body,
            seed=config.load.seed,
            prompt_fits=fits,
            sessions=plan,
        )

    def on_record(rec) -> None:
        writer.write(rec)
        stats.add(rec)

    with Progress(ep.name, len(schedule), enabled=config.progress and not quiet) as progress:
        stats.started = time.monotonic()
        tick = lambda d: progress.update(stats, d - stats.completed)  # noqa: E731
        if ray_workers is not None:
            stats.client_loop = ray_workers.run(ep, trace, schedule, setup, on_record, tick, plan)
            return
        if config.workers > 1:
            stats.client_loop = run_workers(config.workers, ep, trace, schedule, setup, on_record, tick)
            return
        synth = PromptSynth(fits=fits, block_tokens=trace.block_tokens, salt=config.load.seed)
        counters = {"dispatched": 0}

        async def main() -> None:
            t0 = time.monotonic() + _LEAD_S  # a little ahead: the first request is not late by setup time
            ticker = asyncio.create_task(_tick(progress, stats, counters))
            with watched(t0) as watch:
                try:
                    await drive(
                        ep, trace, schedule, setup(t0, time.time() + _LEAD_S), on_record, synth, counters
                    )
                finally:
                    ticker.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await ticker
                    stats.client_loop = watch.summary()

        asyncio.run(main())


async def _tick(progress: Progress, stats: RunStats, counters: dict[str, int]) -> None:
    while True:
        progress.update(stats, counters["dispatched"] - stats.completed)
        await asyncio.sleep(0.25)
