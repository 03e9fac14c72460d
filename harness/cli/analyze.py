"""``prfaas-bench analyze RUN...``: per-topology metrics, the baseline comparison and the side-by-side."""

from __future__ import annotations

import json
import sys

import click

from harness.analysis import analyze, load_bundle
from harness.analysis.tables import print_tables, write_csv
from harness.interop import EXPORTS, write_exports


@click.command("analyze")
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout (no tables).")
@click.option(
    "--csv", "csv_path", type=click.Path(dir_okay=False), help="Also write one CSV row per topology."
)
@click.option(
    "--name", help="Topology name for a single-topology run (default: the records' own, or 'default')."
)
@click.option(
    "--ttft-slo",
    type=click.FloatRange(min=0, min_open=True),
    help="TTFT bound, seconds (overrides the run's).",
)
@click.option(
    "--tpot-slo",
    type=click.FloatRange(min=0, min_open=True),
    help="TPOT bound, seconds (overrides the run's).",
)
@click.option("--baseline", help="Topology the others are compared with (default: 'homogeneous').")
@click.option(
    "--export",
    "export_fmt",
    type=click.Choice(sorted(EXPORTS)),
    help="Also write each run's topologies in this format: vllm (bench serve's --save-result "
    "--save-detailed JSON) or llm-d (benchmark report v0.2.1).",
)
@click.option("--export-dir", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Directory for --export files (<run>[-<topology>].<format>.json).")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--bootstrap", "n_boot", type=click.IntRange(min=100), default=1000, show_default=True,
              help="Bootstrap resamples for confidence intervals.")  # fmt: skip
def command(
    runs, as_json, csv_path, name, ttft_slo, tpot_slo, baseline, export_fmt, export_dir, seed, n_boot
) -> None:
    """Metrics per run and topology: throughput, goodput, TTFT/TPOT/ITL/E2E percentiles, the TTFT
    breakdown, offload share, link egress, cache hits, send lag; ratios vs the homogeneous baseline.

    A RUN is a run directory, a directory of them, or another tool's result file: vLLM bench serve's
    --save-result --save-detailed JSON, AIPerf's profile_export.jsonl, GuideLLM's benchmarks.json."""
    bundle = load_bundle(runs, name=name)
    if export_fmt:
        for path in write_exports(bundle, export_fmt, export_dir):
            click.echo(f"export: {path}", err=True)
    result = analyze(
        bundle, ttft_slo_s=ttft_slo, tpot_slo_s=tpot_slo, baseline=baseline, n_boot=n_boot, seed=seed
    )
    if csv_path:
        write_csv(result, csv_path)
    if as_json:
        json.dump(result, sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        print_tables(result)
