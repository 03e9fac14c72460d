"""``prfaas-bench simulate SCENARIO``: the serving stack as a discrete-event simulation in virtual time."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from harness.cli._options import context_options, context_policy, parse_floats, parse_names, warn
from harness.errors import ScenarioError
from harness.jsonsafe import json_safe
from harness.scenario import load_scenario
from harness.serving.config import prepare
from harness.serving.run import SimulateRequest, simulate, topology_rows
from harness.traces.sessions import ThinkTime


def _fmt(value, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


@click.command("simulate")
@click.argument("scenario", type=click.Path(dir_okay=False))
@click.option(
    "--trace",
    "trace_path",
    type=click.Path(dir_okay=False),
    help="Replay this trace file (else the scenario's workload).",
)
@click.option(
    "--trace-timestamps", is_flag=True, help="Use the trace's own arrival times (the default with --trace)."
)
@click.option("--rate", type=float, help="Poisson arrivals at R requests/s.")
@click.option("--rate-sweep", help="Comma-separated rates; one run per rate and topology.")
@click.option(
    "--requests",
    type=click.IntRange(min=1),
    help="Number of requests (synthetic), or the first N of the trace; a --find-max-rate probe takes "
    "at least 40 TTFT bounds of arrivals.",
)
@click.option("--duration", type=float, help="Seconds of arrivals to simulate.")
@click.option(
    "--topology", "topologies", help="Comma-separated topology names (default: all in the scenario)."
)
@click.option(
    "--find-max-rate",
    is_flag=True,
    help="Search for the highest Poisson rate that meets the SLO attainment in steady state.",
)
@click.option(
    "--ttft-slo",
    type=float,
    help="TTFT bound in seconds for the SLO (default [slo] ttft_s, else [simulate] ttft_slo_s).",
)
@click.option("--attainment", type=float, help="SLO attainment target (default [slo] attainment, 0.99).")
@click.option(
    "--seed", type=int, help="Seed for synthetic lengths and Poisson arrivals (default [simulate] seed)."
)
@context_options
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="results",
    show_default=True,
    help="Where the run directory is created.",
)
@click.option(
    "--sessions",
    is_flag=True,
    help="Session mode: a turn starts only after its session's previous turn ended, plus its think time "
    "(default from [workload] sessions; docs/traces.md).",
)
@click.option(
    "--think",
    default=None,
    metavar="trace|fixed:S|exp:MEAN",
    help="Session mode's think time (default: trace).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def command(
    scenario, trace_path, trace_timestamps, rate, rate_sweep, requests, duration, topologies, find_max_rate,
    ttft_slo, attainment, seed, clip, drop, sessions, think, out_dir, as_json,
) -> None:  # fmt: skip
    """Simulate each topology of SCENARIO in virtual time; write records, a time series and meta.json."""
    if rate is not None and rate_sweep is not None:
        raise ScenarioError("give --rate or --rate-sweep, not both")
    if trace_timestamps and (rate is not None or rate_sweep is not None):
        raise ScenarioError("--trace-timestamps keeps the trace's arrival times; drop --rate/--rate-sweep")
    if duration is not None and not (duration > 0 and math.isfinite(duration)):
        raise ScenarioError(f"--duration must be > 0 s, got {duration:g}")
    rates = parse_floats(rate_sweep, "--rate-sweep") if rate_sweep else ((rate,) if rate is not None else ())
    context = context_policy(clip, drop)
    loaded = load_scenario(scenario)
    warnings = loaded.warnings("simulate")
    setup = prepare(loaded, topologies=parse_names(topologies), warnings=warnings, context=context)
    warn(warnings)
    trace = None
    if trace_path is not None or setup.deployment.workload.trace_path is not None:
        from harness.traces.readers import read_trace

        trace = read_trace(trace_path or setup.deployment.workload.trace_path)
    elif trace_timestamps:
        raise ScenarioError('--trace-timestamps needs a trace (--trace FILE or [workload] kind = "trace")')
    from_scenario = getattr(loaded.config.workload, "sessions", None)
    think_time = None
    if sessions or from_scenario is not None or think is not None:
        think_time = ThinkTime.parse(think or from_scenario or "trace")
    result = simulate(
        setup,
        SimulateRequest(
            trace=trace,
            trace_timestamps=not rates,
            rates=rates,
            requests=requests,
            duration_s=duration,
            find_max_rate=find_max_rate,
            ttft_slo_s=ttft_slo,
            attainment=attainment,
            seed=seed,
            context=context,
            out_dir=Path(out_dir),
            sessions=think_time,
        ),
    )
    if as_json:
        click.echo(json.dumps(json_safe(result), indent=2, sort_keys=True))
        return
    header = (
        f"{'topology':<18} {'Np/Nd/Nprf':>10} {'t':>7} {'rate':>6} {'thr/s':>6} {'attain':>6} "
        f"{'TTFT50 s':>8} {'TTFT90 s':>8} {'TPOT50 ms':>9} {'offload':>7}"
    )
    if find_max_rate:
        header += f" {'Λmax sim':>8} {'Λmax plan':>9}"
    click.echo(header)
    for row in topology_rows(result):
        split = f"{row['n_p']}/{row['n_d']}/{row['n_prfaas']}"
        line = (
            f"{row['topology']:<18} {split:>10} {_fmt(row['threshold_tokens'], '.0f'):>7} {_fmt(row.get('rate_rps')):>6} "
            f"{_fmt(row.get('throughput_rps')):>6} {_fmt(row.get('slo_attainment'), '.1%'):>6} "
            f"{_fmt(row.get('ttft_p50_s')):>7} {_fmt(row.get('ttft_p90_s')):>7} "
            f"{_fmt((row.get('tpot_p50_s') or math.nan) * 1e3, '.1f'):>9} {_fmt(row.get('offload_share'), '.0%'):>7}"
        )
        if find_max_rate:
            line += f" {_fmt(row.get('lambda_max'), '.2f'):>8} {_fmt(row['planner_lambda_max'], '.2f'):>9}"
        click.echo(line)
    if find_max_rate:
        _echo_probes(result)
    click.echo(f"run directory: {result['run_dir']}")


def _echo_probes(result) -> None:
    """Every probe of the Λ_max search, in the order run, with why it failed."""
    click.echo(
        f"\nprobes: {'topology':<12} {'rate':>7} {'n':>6} {'attain':>7} {'ach/off':>7} {'queue/s':>8} "
        f"{'bound/s':>8}  verdict"
    )
    for name, entry in result["topologies"].items():
        for p in entry.get("probes") or []:
            verdict = "pass" if p["passed"] else f"{p['reason']}: {p['detail']}"
            click.echo(
                f"        {name:<12} {p['rate_rps']:>7.3f} {p['requests']:>6} {_fmt(p['attainment'], '.1%'):>7} "
                f"{_fmt(p['achieved_rps'] / p['offered_rps'], '.1%'):>7} {p['queue_slope_rps']:>+8.3g} "
                f"{p['queue_slope_bound_rps']:>8.3g}  {verdict}"
            )
