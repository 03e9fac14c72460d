"""``prfaas-bench report RUN... -o report.html``: the self-contained Plotly dashboard."""

from __future__ import annotations

from pathlib import Path

import click

from harness.analysis import analyze, load_bundle
from harness.analysis.dashboard import render_sweep_html, write_report
from harness.analysis.tables import write_output
from harness.cli._options import parse_names
from harness.errors import ScenarioError


@click.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), default="report.html", show_default=True,
              help="HTML file to write.")  # fmt: skip
@click.option("--name", help="Topology name for a single-topology run.")
@click.option("--ttft-slo", type=click.FloatRange(min=0, min_open=True), help="TTFT bound, seconds.")
@click.option("--tpot-slo", type=click.FloatRange(min=0, min_open=True), help="TPOT bound, seconds.")
@click.option("--baseline", help="Topology the others are compared with (default: 'homogeneous').")
@click.option("--title", default="prfaas-bench report", show_default=True, help="Page title.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option(
    "--axes",
    metavar="X,Y",
    help="For a sweep directory: the two axes of its heatmaps (default: the first two it varies).",
)
def command(runs, out, name, ttft_slo, tpot_slo, baseline, title, seed, axes) -> None:
    """One HTML page (plotly.js embedded, works offline): throughput with CIs, TTFT/TPOT CDFs, latency,
    link utilisation and queues over time, the TTFT breakdown, and Λ_max sweeps from the planner.

    A `sweep` output directory instead gives heatmaps of Λ_max and of the PrfaaS gain over two axes."""
    if len(runs) == 1 and (Path(runs[0]) / "sweep.parquet").is_file():
        import pandas as pd

        frame = pd.read_parquet(Path(runs[0]) / "sweep.parquet")
        chosen = parse_names(axes)
        path = write_output(out, render_sweep_html(frame, chosen, title=title))
        click.echo(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)")
        return
    if axes is not None:
        raise ScenarioError("--axes is for a sweep directory (one holding sweep.parquet)")
    bundle = load_bundle(runs, name=name)
    result = analyze(bundle, ttft_slo_s=ttft_slo, tpot_slo_s=tpot_slo, baseline=baseline, seed=seed)
    path = write_report(bundle, result, out, title=title)
    click.echo(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)")
