"""``prfaas-bench compare BASELINE CURRENT --max-regression 5%``: the CI regression check."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from harness.analysis import analyze, load_bundle
from harness.analysis.regression import check_regression, parse_bound, to_markdown
from harness.analysis.tables import write_output
from harness.errors import InputError
from harness.interop import is_foreign
from harness.jsonsafe import json_safe


def _result(path: str, seed: int) -> dict[str, Any]:
    # A run directory or another tool's result file is analysed; any other file is taken as saved
    # `analyze --json` output.
    p = Path(path)
    if p.is_file() and not is_foreign(p):
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"not analyze --json output ({exc})", where=str(p)) from None
        if not isinstance(data, dict) or not isinstance(data.get("topologies"), dict):
            raise InputError("not analyze --json output (no 'topologies' object)", where=str(p))
        return data
    return analyze(load_bundle([p]), seed=seed, n_boot=100)


@click.command("compare")
@click.argument("baseline", type=click.Path())
@click.argument("current", type=click.Path())
@click.option("--max-regression", "bound", default="5%", show_default=True,
              help="Largest tolerated worsening, relative to the baseline (5% or 0.05).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the check as JSON instead of Markdown.")
@click.option("--markdown", "md_path", type=click.Path(dir_okay=False), help="Also write the Markdown here.")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Bootstrap seed when analysing run dirs."
)
@click.option(
    "--allow-invalid",
    is_flag=True,
    help="Compare even when a side's validity verdict is invalid (the verdict is still printed).",
)
def command(baseline, current, bound, as_json, md_path, seed, allow_invalid) -> None:
    """Compare CURRENT with BASELINE (run directories, saved `analyze --json` files, or result files of
    vLLM bench serve, AIPerf or GuideLLM). Exits 1 when
    throughput/goodput fell, or latency percentiles / the failed share rose, beyond the bound; refuses
    (exit 2) a side whose validity verdict is invalid unless --allow-invalid."""
    max_regression = parse_bound(bound)  # before the (slower) analysis, so a typo fails at once
    results = {}
    for label, path in (("baseline", baseline), ("current", current)):
        results[label] = _result(path, seed)
        verdict = str(results[label].get("validity") or "")
        if verdict.startswith("invalid"):
            if not allow_invalid:
                raise InputError(f"{label} run is {verdict} (--allow-invalid to compare anyway)", where=path)
            click.echo(f"warning: {path}: {label} run is {verdict}", err=True)
    report = check_regression(results["baseline"], results["current"], max_regression)
    md = to_markdown(report, baseline_label=baseline, current_label=current)
    if md_path:
        write_output(md_path, md)
    if as_json:
        # worse_by is ±inf for a change from 0: null in JSON (the verdict stays in `regressed`).
        json.dump(json_safe(report.to_dict()), sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        click.echo(md, nl=False)
    sys.exit(1 if report.failed else 0)
