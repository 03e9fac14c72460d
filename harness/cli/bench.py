"""``prfaas-bench bench SCENARIO``: the main job — plan, simulate, serve + replay, analyse, report."""

from __future__ import annotations

import click

from harness.analysis.tables import print_tables
from harness.bench import run_bench
from harness.cli._options import context_options, context_policy, prefix_option


@click.command("bench")
@click.argument("scenario", type=click.Path(dir_okay=False), default="workloads/paper-case-study.toml")
@click.option("--quick", is_flag=True, help="Small stages (the scenario's [bench.quick]); about 3 minutes.")
@click.option(
    "--out",
    "out_root",
    default="results",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the run directory (bench-<time>) is created.",
)
@click.option(
    "--netns/--no-netns",
    default=None,
    help="Sites in network namespaces on a shaped link (default when root), or loopback (labelled).",
)
@prefix_option("pfbbn-", "the emulated sites' namespaces, links and relays (distinct from serve's)")
@click.option(
    "--ladder/--no-ladder",
    default=True,
    help="Measure capacity over HTTP: replay and simulate each topology at [bench] ladder_shares of its "
    "simulated Λ_max (default), or skip that stage.",
)
@click.option("--quiet", is_flag=True, help="No progress bars (stage lines still print).")
@context_options
def command(
    scenario: str,
    quick: bool,
    out_root: str,
    netns: bool | None,
    prefix: str,
    ladder: bool,
    quiet: bool,
    clip: bool,
    drop: bool,
) -> None:
    """Plan, simulate and replay SCENARIO's topologies, then print the comparison and write report.html.

    \b
    1. plan      the paper's analytic model: Λ_max, t, N_p/N_d, sweeps
    2. simulate  Λ_max search in virtual time (queues, batching, caches, link contention)
    3. simulate  the replay's exact workload, for a paired comparison
    4. replay    the same requests over HTTP against emulated clusters, KV across a shaped link
    5. ladder    capacity over HTTP: each topology at a few rates around its simulated Λ_max,
                 replayed and simulated; Λ_max from the rungs and the PrfaaS gain with its interval
    6. analyze   tables, headline lines and a self-contained dashboard
    """
    result = run_bench(
        scenario,
        out_root=out_root,
        quick=quick,
        netns=netns,
        say=click.echo,
        warn=lambda line: click.echo(line, err=True),
        progress=not quiet,
        prefix=prefix,
        context=context_policy(clip, drop),
        with_ladder=ladder,
    )
    print_tables(result.analysis, with_headline=False)  # printed once, below
    click.echo("")
    click.echo(f"shaping backend: {result.backend}; finished in {result.seconds:.0f} s")
    click.echo(f"report: {result.report}")
    for line in result.headline:
        click.echo(line)
