"""``prfaas-bench replay``: replay a trace against OpenAI-compatible endpoints (see docs/replay.md)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys

import click
from click.core import ParameterSource

from harness.cli._options import api_key_env_option, context_options, context_policy, time_scale_option
from harness.config.validity import ValidityBounds
from harness.errors import InputError
from harness.loadgen import APIS, ARRIVALS, Endpoint, LoadSpec, ReplayConfig, Timeouts, replay, replay_sweep
from harness.loadgen.client import check_endpoints
from harness.loadgen.config import RayPlacement
from harness.loadgen.runner import check_credentials
from harness.loadgen.scenario import ReplaySection, parse_replay_section
from harness.loadgen.telemetry import DEFAULT_INTERVAL_S, DEFAULT_PATTERNS
from harness.loadgen.tokenize import server_context
from harness.model.presets import load_model
from harness.scenario import load_scenario
from harness.traces.context import fit_context
from harness.traces.readers import read_trace
from harness.traces.sessions import ThinkTime, session_plan
from harness.traces.specs import parse_window
from harness.traces.transforms import clip_lengths, rescale_rate, speedup, window


def _rates(text: str | None) -> list[float]:
    if text is None:
        return []
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--rate must be a number, 'inf', or a comma-separated list, got {text!r}") from None
    if not rates or any(not r > 0 for r in rates):
        raise InputError(f"--rate values must be positive, got {text!r}")
    return rates


def _endpoints(specs: tuple[str, ...], name: str | None, model: str, api: str, prefill, decode) -> tuple:
    if prefill or decode:
        if specs:
            raise InputError("use either --endpoint or --prefill-url/--decode-url, not both")
        return (Endpoint(name=name or "pd", model=model, api=api, prefill_url=prefill, decode_url=decode),)
    if not specs:
        raise InputError("give --endpoint URL (or NAME=URL, repeated), or --prefill-url and --decode-url")
    out = []
    for spec in specs:
        label, sep, url = spec.partition("=")
        if not sep or "://" in label:
            if len(specs) > 1:
                raise InputError(f"with several endpoints, name each as NAME=URL (got {spec!r})")
            label, url = name or "default", spec
        out.append(Endpoint(name=label, url=url, model=model, api=api))
    return tuple(out)


def _ray_placement(address: str | None, bound_ms: float | None) -> RayPlacement | None:
    """--ray-address and its clock bound; Ray missing is one line now, before any work."""
    if address is None:
        if bound_ms is not None:
            raise InputError("--max-clock-bound-ms needs --ray-address")
        return None
    from harness.loadgen.rayworkers import FLAG
    from harness.raycluster import check_ray

    check_ray(FLAG)
    placement = RayPlacement(None if address == "local" else address)
    if bound_ms is None:
        return placement
    return dataclasses.replace(placement, max_clock_bound_s=bound_ms / 1e3)


# flag -> [replay] key; a flag given on the command line wins over the scenario
_FROM_SCENARIO = {
    "model": "model", "api": "api", "trace_path": "trace", "speedup": "speedup", "shaping_backend": "shaping_backend",
    "warmup": "warmup_s", "cooldown": "cooldown_s", "seed": "seed", "scrape_interval": "scrape_interval_s",
    "scrape_metrics": "scrape_metrics", "think": "sessions",
}  # fmt: skip


def _apply_scenario(o: dict) -> ReplaySection | None:
    """Fill flags left at their defaults from the scenario's [replay] table; returns it if it names endpoints."""
    if not o["scenario_path"]:
        return None
    section = parse_replay_section(load_scenario(o["scenario_path"]))
    ctx = click.get_current_context()
    for flag, key in _FROM_SCENARIO.items():
        value = getattr(section, key)
        if value is not None and ctx.get_parameter_source(flag) in (None, ParameterSource.DEFAULT):
            o[flag] = str(value) if flag == "trace_path" else value
    if section.sessions is not None:
        o["sessions"] = True
    if section.window_s is not None and o["window"] is None:
        start, end = section.window_s  # the table gives [start, end); the flag is START:DUR
        o["window"] = f"{start}:{end - start}"
    return section if section.endpoints else None


def _scenario_bounds(path: str | None) -> ValidityBounds:
    """The scenario's [validity] bounds (defaults without a scenario)."""
    return load_scenario(path).config.validity if path else ValidityBounds()


def _scenario_context(path: str | None) -> int | None:
    """The context of the scenario's [model] preset, when there is one."""
    if not path:
        return None
    scenario = load_scenario(path)
    if scenario.config.model is None:
        return None
    return load_model(scenario.config.model.preset, base=scenario.path.parent).context_length


@click.command("replay")
@click.option(
    "--endpoint",
    "endpoints",
    multiple=True,
    metavar="[NAME=]URL",
    help="Server base URL; repeat as NAME=URL for several (one per topology, run in turn, paired).",
)
@click.option(
    "--scenario",
    "scenario_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Scenario file: its [replay] table gives endpoints and defaults (flags win).",
)
@click.option(
    "--model", default=None, help="Model name sent in every request (required here or in [replay])."
)
@click.option("--name", default=None, help="Topology name of a single endpoint (default: 'default').")
@click.option(
    "--api",
    type=click.Choice(APIS),
    default="completions",
    show_default=True,
    help="/v1/completions (prompt text) or /v1/chat/completions (one user message).",
)
@click.option(
    "--trace",
    "trace_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Trace file (format detected).",
)
@click.option("--format", "fmt", default=None, help="Trace format override.")
@click.option("--skip-bad", is_flag=True, help="Skip malformed trace lines (counted) instead of failing.")
@click.option(
    "--window",
    default=None,
    metavar="START:DUR",
    help="Keep requests arriving in [START, START+DUR) trace seconds (as `trace convert --window`).",
)
@click.option(
    "--speedup", type=float, default=1.0, show_default=True, help="Compress trace time by this factor."
)
@click.option("--trace-rate", type=float, default=None, help="Rescale trace time to this mean rate (req/s).")
@click.option(
    "--max-input", type=int, default=None, help="Clip input lengths to this many tokens (model context)."
)
@click.option(
    "--max-model-len",
    type=click.IntRange(min=1),
    default=None,
    help="The served model's context (tokens), for --clip/--drop and the refusal (default: the "
    "scenario's [model] preset, else unchecked; with --tokenize-url the server's max_model_len if smaller).",
)
@context_options
@click.option(
    "--arrival",
    type=click.Choice(ARRIVALS),
    default=None,
    help="Arrival process (default: trace, or poisson with --rate).",
)
@click.option(
    "--rate",
    default=None,
    metavar="R[,R...]",
    help="Offered rate, req/s ('inf' = closed loop with --concurrency); a list runs a sweep.",
)
@click.option(
    "--burstiness",
    type=float,
    default=2.0,
    show_default=True,
    help="Gamma arrivals: coefficient of variation.",
)
@click.option(
    "--concurrency",
    type=int,
    default=None,
    help="Closed loop (with --rate inf) or a cap on in-flight requests.",
)
@click.option(
    "--max-requests",
    type=int,
    default=None,
    help="Requests to send: the schedule's first N (with --rate or a closed loop the trace's rows are "
    "taken in order and cycle).",
)
@click.option("--duration", type=float, default=None, help="Seconds of schedule to run.")
@click.option("--warmup", type=float, default=0.0, help="Mark requests of the first S seconds as warmup.")
@click.option("--cooldown", type=float, default=0.0, help="Mark requests of the last S seconds as cooldown.")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for synthetic arrivals and prompt text."
)
@click.option(
    "--workers",
    type=int,
    default=1,
    show_default=True,
    help="Client processes sharing one schedule (with --ray-address: Ray actors, one per node).",
)
@click.option(
    "--ray-address",
    default=None,
    metavar="local|auto|HOST:PORT",
    help="Run the --workers as Ray actors across this cluster's nodes, each with a shard of the schedule "
    "(local: a Ray on this host for the run; pip install -e '.[ray]'; docs/replay.md).",
)
@click.option(
    "--max-clock-bound-ms",
    type=float,
    default=None,
    help="With --ray-address: refuse the run when a worker's clock offset cannot be bounded below this "
    "[default: 5].",
)
@click.option(
    "--timeout-connect",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds to open a connection (connect_timeout).",
)
@click.option(
    "--timeout-first-token",
    type=float,
    default=600.0,
    show_default=True,
    help="Seconds from the send to the first token before the request fails (first_token_timeout).",
)
@click.option(
    "--timeout-total",
    type=float,
    default=3600.0,
    show_default=True,
    help="Seconds from the send to the stream's end before the request fails (total_timeout).",
)
@click.option(
    "--prefill-url", default=None, help="Drive a PD pair directly (vLLM PD-proxy protocol): prefill server."
)
@click.option("--decode-url", default=None, help="... and decode server.")
@api_key_env_option
@click.option(
    "--tokenizer", default=None, type=click.Path(dir_okay=False), help="tokenizer.json: token-exact prompts."
)
@click.option(
    "--tokenize-url",
    default=None,
    metavar="URL",
    help="Server whose POST /tokenize (vLLM, SGLang) counts tokens: token-exact prompts, fitted before the run.",
)
@click.option(
    "--shaping-backend",
    default=None,
    help="What shaped the network, recorded in meta (netem/relay/app/none). Default: what the endpoint's "
    "model card declares (prfaas-bench serve's sites do), else none.",
)
@click.option(
    "--max-send-lag-ms",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Send-lag p99 above this: 'client saturated', and the run invalid (else [validity] send_lag_p99_ms).",
)
@click.option(
    "--reset/--no-reset",
    default=True,
    show_default=True,
    help="Reset each server's prefix caches and counters before each endpoint's run (POST /reset, vLLM's "
    "/reset_prefix_cache or SGLang's /flush_cache); --no-reset keeps the state (recorded in meta).",
)
@click.option(
    "--scrape-interval",
    type=click.FloatRange(min=0),
    default=DEFAULT_INTERVAL_S,
    show_default=True,
    help="Scrape each server's Prometheus /metrics every S seconds during the run, into "
    "server_metrics.parquet on the records' time axis (0 = off).",
)
@click.option(
    "--metrics-url",
    "metrics_urls",
    multiple=True,
    metavar="URL",
    help="Another server whose /metrics replay reads besides the endpoints' own (repeatable): e.g. the "
    "other sites `serve` lists, or the engines behind a proxy.",
)
@click.option(
    "--scrape-metric",
    "scrape_metrics",
    multiple=True,
    metavar="PATTERN",
    help="Metric families to keep from /metrics (fnmatch, repeatable; replaces the default list of "
    "vLLM's, SGLang's and the emulator's running/waiting/KV/prefix-cache/KV-transfer names; '*' keeps all).",
)
@click.option(
    "--sessions",
    is_flag=True,
    help="Session mode: a turn goes out only after its session's previous turn ended, plus its think "
    "time; its prompt is that turn's prompt and received answer plus new user text (docs/traces.md).",
)
@click.option(
    "--think",
    default="trace",
    show_default=True,
    metavar="trace|fixed:S|exp:MEAN",
    help="Session mode's think time: the trace's gap between the two turns, or seconds of trace time.",
)
@time_scale_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--quiet", is_flag=True, help="No progress bar; print only problems.")
@click.option(
    "--fail-on-error-rate", type=float, default=None, help="Exit 1 when the failed share exceeds X (0..1)."
)
def command(**o) -> None:
    """Replay a trace against OpenAI-compatible endpoints; records to --out (JSONL + Parquet + meta)."""
    ray = _ray_placement(o["ray_address"], o["max_clock_bound_ms"])
    scenario_endpoints = _apply_scenario(o)
    win = parse_window(o["window"]) if o["window"] is not None else None
    rates = _rates(o["rate"])
    if o["speedup"] <= 0 or not math.isfinite(o["speedup"]):
        raise InputError(f"--speedup must be a positive number, got {o['speedup']}")
    if o["fail_on_error_rate"] is not None and not 0 <= o["fail_on_error_rate"] <= 1:
        raise InputError("--fail-on-error-rate must be in [0, 1]")
    if not o["model"]:
        raise InputError("--model is required (or model = ... in the scenario's [replay])")
    if not o["trace_path"]:
        raise InputError("--trace is required (or trace = ... in the scenario's [replay] or [workload])")
    if scenario_endpoints is not None and not (o["endpoints"] or o["prefill_url"] or o["decode_url"]):
        endpoints = scenario_endpoints.build_endpoints(o["model"], o["api"])
    else:
        endpoints = _endpoints(
            o["endpoints"], o["name"], o["model"], o["api"], o["prefill_url"], o["decode_url"]
        )
    arrival = o["arrival"] or ("poisson" if rates and not math.isinf(rates[0]) else "trace")
    load = LoadSpec(
        arrival=arrival, rate_rps=rates[0] if rates else None, gamma_cv=o["burstiness"],
        concurrency=o["concurrency"], max_requests=o["max_requests"], duration_s=o["duration"],
        warmup_s=o["warmup"], cooldown_s=o["cooldown"], seed=o["seed"],
    )  # fmt: skip
    config = ReplayConfig(
        endpoints=endpoints, load=load, workers=o["workers"], api_key_env=o["api_key_env"],
        timeouts=Timeouts(connect_s=o["timeout_connect"], first_token_s=o["timeout_first_token"], total_s=o["timeout_total"]),
        tokenizer=o["tokenizer"], tokenize_url=o["tokenize_url"], shaping_backend=o["shaping_backend"] or "none", max_send_lag_s=o["max_send_lag_ms"] / 1e3,
        progress=not o["quiet"], meta_extra={"scenario": o["scenario_path"], "time_scale": o["time_scale"], "trace_args": {
            k: o[k] for k in ("trace_path", "fmt", "skip_bad", "window", "speedup", "trace_rate", "max_input")}},
    )  # fmt: skip
    bounds = _scenario_bounds(o["scenario_path"])
    if click.get_current_context().get_parameter_source("max_send_lag_ms") == ParameterSource.DEFAULT:
        o["max_send_lag_ms"] = bounds.send_lag_p99_ms
    config = dataclasses.replace(
        config, validity=bounds, reset=o["reset"], max_send_lag_s=o["max_send_lag_ms"] / 1e3,
        scrape_interval_s=o["scrape_interval"], scrape_metrics=tuple(o["scrape_metrics"]) or DEFAULT_PATTERNS,
        site_urls=tuple(o["metrics_urls"]), ray=ray,
    )  # fmt: skip
    policy = context_policy(o["clip"], o["drop"])
    context_tokens = o["max_model_len"] or _scenario_context(o["scenario_path"])
    context_from = "--max-model-len" if o["max_model_len"] else "scenario"
    api_key = os.environ.get(o["api_key_env"]) or None
    if o["tokenize_url"]:  # the server's own limit, asked before the run: rows beyond it never go out
        check_credentials(config)
        served = server_context(o["tokenize_url"], model=o["model"], api_key=api_key)
        if served is not None and (context_tokens is None or served < context_tokens):
            context_tokens, context_from = served, "server /tokenize max_model_len"
    if context_tokens is None and policy != "refuse":
        raise InputError(
            "--clip/--drop need the model's context: give --max-model-len (or a --scenario with [model], "
            "or --tokenize-url)"
        )
    trace = read_trace(o["trace_path"], o["fmt"], skip_bad=o["skip_bad"])
    if win is not None:
        trace = window(trace, *win)
    if o["max_input"] is not None:
        trace, _ = clip_lengths(trace, o["max_input"])
    if context_tokens is not None:
        trace, fit = fit_context(trace, context_tokens, policy, where=o["trace_path"])
        context = {**fit.as_dict(), "from": context_from}
        config = dataclasses.replace(config, meta_extra={**config.meta_extra, "context": context})
    if o["trace_rate"] is not None:
        trace = rescale_rate(trace, o["trace_rate"])
    trace = speedup(trace, o["speedup"])
    if o["sessions"]:  # think seconds are trace time, sped up like the timestamps
        think = ThinkTime.parse(o["think"])
        think = dataclasses.replace(think, seconds=think.seconds / o["speedup"])
        config = dataclasses.replace(config, sessions=think)
        session_plan(trace, think)  # a broken session is one line before any request goes out
    check_credentials(config)
    # before the schedule starts: a dead URL is one line, not a run of errors
    declared = check_endpoints(endpoints, api_key=api_key, timeouts=config.timeouts)
    if o["shaping_backend"] is None:  # not told: what the servers say (serve's sites), if they agree
        config = dataclasses.replace(config, shaping_backend=declared or "none")
    if len(rates) > 1:
        results = replay_sweep(trace, config, rates, o["out_dir"], quiet=o["quiet"])
    else:
        results = [replay(trace, config, o["out_dir"], quiet=o["quiet"])]
    if not o["quiet"]:
        for r in results:
            click.echo(
                json.dumps(
                    {
                        "run_dir": str(r.run_dir),
                        "run_id": r.run_id,
                        "error_rate": round(r.error_rate, 4),
                        "complete": r.complete,
                        "verdict": r.verdict,
                    }
                )
            )
    for r in results:
        if r.verdict.startswith("invalid"):
            click.echo(f"{r.run_dir}: {r.verdict}", err=True)
    failed = [r for r in results if r.all_failed]
    if failed:
        r = failed[0]
        errors = {k: v for s in r.summaries.values() for k, v in s["errors"].items()}
        top = max(errors, key=errors.__getitem__) if errors else "no requests"
        # Not a measurement of anything: the endpoint is wrong (bad input, exit 2), the records stay.
        raise InputError(f"every request failed ({top}); records in {r.run_dir}")
    worst = max(r.error_rate for r in results)
    if o["fail_on_error_rate"] is not None and worst > o["fail_on_error_rate"]:
        click.echo(f"error rate {worst:.3f} exceeds --fail-on-error-rate {o['fail_on_error_rate']}", err=True)
        sys.exit(1)
