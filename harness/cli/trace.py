"""``prfaas-bench trace``: inspect, convert and synthesise request traces."""

from __future__ import annotations

import json

import click
from click.core import ParameterSource

from harness.errors import InputError
from harness.jsonsafe import json_safe
from harness.traces import transforms
from harness.traces.native import write_native
from harness.traces.readers import FORMATS, read_trace_report
from harness.traces.rows import ReadReport
from harness.traces.sessions import infer_sessions, session_plan
from harness.traces.specs import (
    AGENTIC_OUTPUT,
    AGENTIC_RESULT,
    ARRIVAL_FORMS,
    LENGTH_FORMS,
    parse_agentic,
    parse_arrivals,
    parse_lengths,
    parse_sessions,
    parse_system_prompts,
    parse_window,
)
from harness.traces.stats import DEFAULT_ABOVE, TraceStats, trace_stats
from harness.traces.synth import SynthSpec, synthesize

_format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="Trace format; detected from the extension and first line when omitted.",
)
_skip_bad_option = click.option(
    "--skip-bad", is_flag=True, help="Skip malformed lines (and count them) instead of stopping at the first."
)
_keep_failed_option = click.option(
    "--keep-failed",
    is_flag=True,
    help="BurstGPT: keep failed requests (Response tokens 0) with output 1; they are dropped by default.",
)


@click.group("trace")
def command() -> None:
    """Read, inspect, transform and synthesise request traces.

    \b
    Formats read: mooncake (JSONL), azure (2023/2024 CSV), burstgpt (CSV), native (Parquet).
    Everything written is native Parquet; see docs/traces.md.
    """


def _read(path: str, fmt: str | None, skip_bad: bool, keep_failed: bool):
    trace, report = read_trace_report(path, fmt, skip_bad=skip_bad, keep_failed=keep_failed)
    _echo_report(report)
    return trace, report


def _echo_report(report: ReadReport) -> None:
    if report.skipped:
        click.echo(f"skipped {report.skipped} bad line(s) in {report.path}; first:", err=True)
        for example in report.skipped_examples:
            click.echo(f"  {example}", err=True)
    if report.failed_dropped:
        click.echo(f"dropped {report.failed_dropped} failed request(s) (use --keep-failed to keep)", err=True)


def _thresholds(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"--above: expected comma-separated token counts, got {text!r}") from None
    if not values or min(values) < 0:
        raise InputError(f"--above: expected non-negative token counts, got {text!r}")
    return values


@command.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False))
@_format_option
@click.option(
    "--above",
    default=",".join(map(str, DEFAULT_ABOVE)),
    show_default=True,
    help="Report the share of requests whose input exceeds each of these token counts.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@_skip_bad_option
@_keep_failed_option
@click.option(
    "--sessions",
    is_flag=True,
    help="Also the session plan: sessions (as given, else inferred from hash_ids), turns, gaps between "
    "turns, new user tokens per turn (docs/traces.md, Sessions).",
)
def inspect_cmd(
    file: str, fmt: str | None, above: str, as_json: bool, skip_bad: bool, keep_failed: bool, sessions: bool
) -> None:
    """Statistics of FILE: lengths, arrivals, prefix reuse, share of long requests."""
    thresholds = _thresholds(above)
    trace, report = _read(file, fmt, skip_bad, keep_failed)
    stats = trace_stats(trace, thresholds)
    plan = session_plan(trace).summary() if sessions else None
    if as_json:
        out = stats.to_dict() | {
            "format": report.format,
            "skipped_lines": report.skipped,
            "failed_dropped": report.failed_dropped,
            "failed_kept": report.failed_kept,
        }
        if plan is not None:
            out["session_plan"] = plan | {"inferred": trace.session_id is None}
        click.echo(json.dumps(json_safe(out), indent=2, allow_nan=False))
    else:
        click.echo(_table(stats, report))
        if plan is not None:
            click.echo(_sessions_line(plan, inferred=trace.session_id is None))


def _sessions_line(p: dict, *, inferred: bool) -> str:
    how = "inferred from hash_ids" if inferred else "as given"
    line = (
        f"session plan    {p['sessions']:,} sessions ({how}), {p['multi_turn_sessions']:,} with more than one "
        f"turn; {p['later_turns']:,} later turns, up to turn {p['max_turn']}"
    )
    if p["later_turns"]:
        line += (
            f"\n                gap between turns p50 {p['think_p50_s']:,.1f} s  p90 {p['think_p90_s']:,.1f} s; "
            f"new user tokens p50 {p['user_tokens_p50']:,.0f}"
        )
    return line


def _table(s: TraceStats, report: ReadReport) -> str:
    def lengths(name: str, ls) -> str:
        return (
            f"{name:<15} mean {ls.mean:>9,.0f}  median {ls.median:>9,.0f}  p90 {ls.p90:>9,.0f}  "
            f"p99 {ls.p99:>9,.0f}  max {ls.max:>9,}"
        )

    lines = [
        f"trace           {s.source} ({report.format})",
        f"requests        {s.requests:,}"
        + (f"  ({report.skipped} bad lines skipped)" if report.skipped else ""),
        f"span            {s.span_s:,.1f} s   mean rate {s.rate_rps:.3f} req/s",
        f"inter-arrival   mean {s.interarrival_mean_s:.4f} s   CV {s.interarrival_cv:.2f}",
        lengths("input tokens", s.input_tokens),
        lengths("output tokens", s.output_tokens),
        f"prefix reuse    {s.prefix_reuse:.1%} of {s.block_tokens}-token blocks seen before (unbounded cache)",
    ]
    if s.sessions:
        lines.append(f"sessions        {s.sessions:,}")
    lines += [f"input > {t:<7,} {share:6.1%}" for t, share in s.share_above.items()]
    return "\n".join(lines)


def _sample_size(text: str) -> dict:
    try:
        value = float(text)
    except ValueError:
        raise InputError(
            f"--sample: expected a count (e.g. 1000) or a fraction (e.g. 0.1), got {text!r}"
        ) from None
    if "." in text or "e" in text.lower():
        return {"fraction": value}
    return {"n": int(value)}


@command.command("convert")
@click.argument("src", type=click.Path(dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False))
@_format_option
@_skip_bad_option
@_keep_failed_option
@click.option(
    "--window", metavar="START:DUR", help="Keep arrivals in [START, START+DUR) seconds; START becomes 0."
)
@click.option(
    "--sample", metavar="N|FRAC", help="Keep N requests, or a fraction like 0.25, chosen with --seed."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --sample.")
@click.option(
    "--clip",
    type=click.IntRange(min=1),
    metavar="N",
    help="Cap input lengths at N tokens (block ids cut to match).",
)
@click.option(
    "--clip-output", type=click.IntRange(min=1), metavar="N", help="Cap output lengths at N tokens."
)
@click.option(
    "--speedup", type=float, metavar="X", help="Replay X times faster (divide every arrival time by X)."
)
@click.option(
    "--rate",
    type=float,
    metavar="R",
    help="Scale time so the mean rate is R req/s (exclusive with --speedup).",
)
@click.option(
    "--sessions",
    is_flag=True,
    help="Write session_id and turn inferred from hash_ids when SRC has none (docs/traces.md, Sessions).",
)
def convert_cmd(
    src: str,
    dst: str,
    fmt: str | None,
    skip_bad: bool,
    keep_failed: bool,
    window: str | None,
    sample: str | None,
    seed: int,
    clip: int | None,
    clip_output: int | None,
    speedup: float | None,
    rate: float | None,
    sessions: bool,
) -> None:
    """Read SRC (any format), transform it, and write DST as native Parquet.

    Transforms apply in this order: --window, --sample, --sessions, --clip/--clip-output, --speedup or
    --rate.

    \b
    Example: the busiest 10 minutes of Mooncake, twice as fast, clipped to a 128K context:
      prfaas-bench trace convert conversation_trace.jsonl busy.parquet \\
          --window 600:600 --speedup 2 --clip 130048
    """
    if speedup is not None and rate is not None:
        raise InputError("--speedup and --rate both set the time scale; give only one")
    win = parse_window(window) if window else None  # a typo fails before a long read
    trace, _ = _read(src, fmt, skip_bad, keep_failed)
    if win is not None:
        span = trace.duration_s
        trace = transforms.window(trace, *win)
        if len(trace) == 0:
            raise InputError(
                f"--window {window} selects no requests from {src} (arrivals span 0 to {span:.1f} s)"
            )
    if sample:
        trace = transforms.sample(trace, seed=seed, **_sample_size(sample))
    if sessions and trace.session_id is None:  # on the rows kept, before lengths and times change
        trace = infer_sessions(trace)
    clipped = 0
    if clip is not None or clip_output is not None:
        trace, clipped = transforms.clip_lengths(trace, clip, clip_output)
    if speedup is not None:
        trace = transforms.speedup(trace, speedup)
    if rate is not None:
        trace = transforms.rescale_rate(trace, rate)
    write_native(trace, dst)
    note = f", {clipped:,} clipped" if clip is not None or clip_output is not None else ""
    click.echo(f"wrote {dst}: {len(trace):,} requests over {trace.duration_s:,.1f} s{note}")


@command.command("synth")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--requests", "-n", type=click.IntRange(min=1), required=True, help="Number of requests.")
@click.option(
    "--lengths",
    default="lognormal:mu=9.9,sigma=1,lo=128,hi=131072",
    show_default=True,
    help=f"Input lengths: {LENGTH_FORMS}. empirical:FILE resamples FILE's input lengths.",
)
@click.option(
    "--output",
    default="fixed:1024",
    show_default=True,
    help="Output lengths, same forms as --lengths (empirical uses FILE's output lengths).",
)
@click.option(
    "--arrival", required=True, help=f"Arrival process: {ARRIVAL_FORMS} (RATE in req/s, CV of the gaps)."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed and options, same trace.")
@click.option(
    "--system-prompts",
    metavar="count=K,tokens=L[,share=F][,zipf=S]",
    help="K shared system prompts of L tokens; a share F of requests carry one, chosen ∝ 1/rank^S.",
)
@click.option(
    "--sessions",
    metavar="turns=T[,concurrent=C | ,think=S][,max=N]",
    help="Multi-turn sessions: mean T turns, C open at once (or: --arrival starts sessions, and each turn "
    "comes an exponential think time of mean S seconds after the last); each turn's prompt grows by the "
    "last answer and a new user message (--turn-lengths), ending before it would pass N tokens.",
)
@click.option(
    "--agentic",
    metavar="steps=T[,think=S][,max=N]",
    help="Agent sessions: --arrival starts them; mean T steps, each a short tool call (--output, default "
    f"{AGENTIC_OUTPUT}) whose result (--turn-lengths, default {AGENTIC_RESULT}) grows the context, the "
    "next step an exponential S seconds later (default 0.5). Instead of --sessions.",
)
@click.option(
    "--turn-lengths",
    default="uniform:64,1024",
    show_default=True,
    help="Length of each follow-up user message in a session (same forms as --lengths); with --agentic, "
    "of each tool result.",
)
@click.option(
    "--block-tokens",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Tokens per prefix block.",
)
def synth_cmd(
    out: str,
    requests: int,
    lengths: str,
    output: str,
    arrival: str,
    seed: int,
    system_prompts: str | None,
    sessions: str | None,
    agentic: str | None,
    turn_lengths: str,
    block_tokens: int,
) -> None:
    """Write a synthetic trace to OUT (native Parquet).

    \b
    Example: the PrfaaS paper's case-study workload at 3 req/s:
      prfaas-bench trace synth paper.parquet -n 20000 --arrival poisson:3 \\
          --lengths lognormal:mu=9.9,sigma=1,lo=128,hi=131072 --output fixed:1024 --seed 1
    """
    if agentic is not None:  # an agent's defaults where the flags were left at theirs
        if sessions:
            raise InputError("give --sessions or --agentic, not both")
        defaults = {"output": AGENTIC_OUTPUT, "turn_lengths": AGENTIC_RESULT}
        ctx = click.get_current_context()
        output, turn_lengths = (
            defaults[k] if ctx.get_parameter_source(k) == ParameterSource.DEFAULT else v
            for k, v in (("output", output), ("turn_lengths", turn_lengths))
        )
    turns = parse_lengths(turn_lengths, "--turn-lengths")
    spec = SynthSpec(
        requests=requests,
        lengths=parse_lengths(lengths, "--lengths"),
        arrivals=parse_arrivals(arrival, "--arrival"),
        outputs=parse_lengths(output, "--output", column="output"),
        system_prompts=parse_system_prompts(system_prompts) if system_prompts else None,
        sessions=parse_agentic(agentic, turns)
        if agentic
        else parse_sessions(sessions, turns)
        if sessions
        else None,
        block_tokens=block_tokens,
    )
    trace = synthesize(spec, seed)
    write_native(trace, out)
    click.echo(f"wrote {out}: {len(trace):,} requests over {trace.duration_s:,.1f} s (seed {seed})")
