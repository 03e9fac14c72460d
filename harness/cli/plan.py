"""``prfaas-bench plan SCENARIO``: the PrfaaS paper's analytic throughput model, its grid search and sweeps."""

from __future__ import annotations

import json

import click

from harness.cli._options import context_options, context_policy, parse_floats, warn
from harness.errors import ScenarioError
from harness.jsonsafe import json_safe
from harness.model.calibration import calibration_frame
from harness.model.deployment import deployment_from_scenario, with_overrides
from harness.model.render import describe_workload, render_frame, render_plan
from harness.model.study import (
    DEFAULT_BANDWIDTHS_GBPS,
    bandwidth_breakpoints,
    plan_deployment,
    sweep_bandwidth,
    sweep_split,
    sweep_threshold,
)
from harness.scenario import load_scenario


@click.command("plan")
@click.argument("scenario", type=click.Path(dir_okay=False), required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option(
    "--sweep",
    type=click.Choice(["bandwidth", "threshold", "split"]),
    help="Λ_max versus link bandwidth, routing threshold t (Fig. 5b) or N_p/N_d split (Fig. 5a).",
)
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Also write the table as CSV.")
@click.option("--model", help="Override [model] preset (a preset name or a TOML path).")
@click.option("--bandwidth-gbps", type=float, help="Override [link] bandwidth_gbps.")
@click.option("--bandwidths", help="Gbps values for --sweep bandwidth, comma-separated (default 1..400).")
@click.option("--thresholds", help="Token thresholds for --sweep threshold, comma-separated.")
@context_options
@click.option(
    "--calibration", is_flag=True, help="Print the cost model against the paper's figures and exit."
)
def command(
    scenario, as_json, sweep, csv_path, model, bandwidth_gbps, bandwidths, thresholds, clip, drop, calibration
) -> None:
    """Best N_p/N_d split and threshold t per topology, Λ_max, ratios, link egress and cost (Table 6).

    \b
    prfaas-bench plan workloads/paper-case-study.toml
    prfaas-bench plan workloads/paper-case-study.toml --sweep bandwidth --model minimax-m2.5 --csv bw.csv
    prfaas-bench plan --calibration
    """
    if calibration:
        _emit(calibration_frame(), as_json, csv_path, "cost model versus the PrfaaS paper")
        return
    if scenario is None:
        raise ScenarioError("plan needs a SCENARIO file (e.g. workloads/paper-case-study.toml)")
    gbps_values = parse_floats(bandwidths, "--bandwidths") if bandwidths else None
    t_values = parse_floats(thresholds, "--thresholds") if thresholds else None
    context = context_policy(clip, drop)
    loaded = load_scenario(scenario)
    deployment = with_overrides(
        deployment_from_scenario(loaded, context=context), model=model, bandwidth_gbps=bandwidth_gbps
    )
    warn(loaded.warnings("plan"))
    if sweep is None:
        report = plan_deployment(deployment)
        if csv_path:
            import pandas as pd

            _write_csv(
                pd.DataFrame([tp.as_dict() for tp in report.topologies.values()]).drop(columns="extra"),
                csv_path,
            )
        if as_json:
            click.echo(json.dumps(json_safe(report.as_dict()), indent=2))
        else:
            click.echo(render_plan(report))
        return
    extra = {}
    if sweep == "bandwidth":
        frame = sweep_bandwidth(deployment, gbps_values or DEFAULT_BANDWIDTHS_GBPS)
        extra = bandwidth_breakpoints(deployment)
    elif sweep == "threshold":
        frame = sweep_threshold(deployment, t_values)
    else:
        frame = sweep_split(deployment)
    workload = deployment.describe_workload()
    title = "\n".join(
        [
            f"{deployment.name}: Λ_max versus {sweep}, model {deployment.model.name}",
            *describe_workload(workload),
        ]
    )
    meta = {"sweep": sweep, "model": deployment.model.name, "workload": workload}
    _emit(frame, as_json, csv_path, title, {**meta, **extra})


def _emit(frame, as_json: bool, csv_path: str | None, title: str, extra: dict | None = None) -> None:
    """Write ``frame`` as CSV if asked, then print it as JSON (``rows`` plus ``extra``) or a table."""
    extra = extra or {}
    if csv_path:
        _write_csv(frame, csv_path)
    if as_json:
        rows = json.loads(frame.to_json(orient="records"))
        click.echo(json.dumps(json_safe({**extra, "rows": rows}), indent=2))
        return
    click.echo(f"{title}\n")
    click.echo(render_frame(frame))
    for key, value in extra.items():
        if key.endswith("_gbps"):
            click.echo(f"{key}: {'-' if value is None else f'{value:.1f}'}")


def _write_csv(frame, path: str) -> None:
    """Write ``frame`` to ``path``; an unwritable path is the user's to fix, so name it in one line."""
    try:
        frame.to_csv(path, index=False)
    except OSError as exc:
        raise ScenarioError(f"cannot write ({exc.strerror or exc})", where=f"--csv {path}") from None
