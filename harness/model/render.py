"""Plain-text tables for ``plan``: the paper's Table 6 layout and sweep frames. Pure: data in, str out."""

from __future__ import annotations

import math

import pandas as pd

from harness.model.study import PlanReport
from harness.traces.context import ContextFit


def _num(value, fmt: str = "{:.2f}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def _grid(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_plan(report: PlanReport) -> str:
    """Table 6 of the paper for this deployment, one column per topology, plus egress and cost."""
    d = report.deployment
    link = f"{d.link.bandwidth_gbps:g} Gbps link" if d.link else "no inter-site link"
    remote = f", remote {d.gpus_per_instance}x{d.remote.name}" if d.remote else ""
    head = "\n".join(
        [
            f"{d.name}: {d.model.name}, local {d.gpus_per_instance}x{d.local.name}{remote}, {link}",
            f"workload {d.workload.kind}: mean input {d.workload.lengths.mean():,.0f} tokens, "
            f"output {d.workload.output_tokens} tokens, TPOT SLO {d.slo.tpot_ms:g} ms",
            *describe_workload(d.describe_workload()),
        ]
    )
    homog = report.first("homogeneous")
    plans = list(report.topologies.values())
    rows = [["", *(tp.name for tp in plans)]]

    def row(label, cell):
        rows.append([label, *(cell(tp) for tp in plans)])

    row("kind", lambda tp: tp.result.kind)
    row("t (tokens)", lambda tp: _num(tp.result.threshold_tokens, "{:,.0f}"))
    row(
        "N_prfaas / N_p / N_d",
        lambda tp: " / ".join(
            str(n) if n else "-" for n in (tp.result.n_prfaas, tp.result.n_p, tp.result.n_d)
        ),
    )
    row(
        "Θ_prfaas / Θ_pd-p / Θ_pd-d (req/s)",
        lambda tp: " / ".join(
            _num(x) for x in (tp.result.theta_prfaas, tp.result.theta_pd_p, tp.result.theta_pd_d)
        ),
    )
    row("Λ_max (req/s)", lambda tp: _num(tp.result.lambda_max))
    if homog:
        row("vs homogeneous", lambda tp: _num(tp.result.lambda_max / homog.result.lambda_max, "{:.2f}x"))
    row("bottleneck", lambda tp: tp.result.bottleneck)
    row("offloaded share", lambda tp: _num(tp.result.offload_share, "{:.3f}"))
    if any(tp.result.token_hit_ratio is not None for tp in plans):
        row(
            "cache hits (tokens / blocks)",
            lambda tp: (
                f"{_num(tp.result.token_hit_ratio, '{:.1%}')} / {_num(tp.result.block_hit_ratio, '{:.1%}')}"
            ),
        )
    row("decode BS_max / instance", lambda tp: str(tp.result.bs_max))
    if d.link:
        row(
            "egress (Gbps, % of link)",
            lambda tp: (
                f"{tp.result.egress_gbps:.1f} ({100 * tp.result.egress_gbps / d.link.bandwidth_gbps:.0f}%)"
            ),
        )
    row("GPU cost ($/h)", lambda tp: _num(tp.cost_per_hour))
    row("requests per $", lambda tp: _num(tp.requests_per_dollar, "{:.1f}"))
    if homog:
        row(
            "vs homogeneous per $",
            lambda tp: _num(tp.requests_per_dollar / homog.requests_per_dollar, "{:.2f}x"),
        )
    tail = f"\nnot in the analytic model: {', '.join(report.skipped)}" if report.skipped else ""
    return f"{head}\n\n{_grid(rows)}{tail}"


def describe_workload(workload: dict) -> list[str]:
    """Plain-text lines for ``Deployment.describe_workload()``: the prefill lengths the planner used,
    the reuse it found, and what the context rule did."""
    pl = workload["prefill_lengths"]
    if pl["distribution"] == "raw":
        lines = [f"prefill lengths: raw ({pl['why']})"]
    else:
        cap = pl["cache_capacity_gib"]
        size = "an unbounded" if cap is None else f"a {cap:,g} GiB ({pl['cache_blocks']:,}-block)"
        lines = [
            f"prefill lengths: incremental, after {size} LRU prefix cache per site, in arrival order",
            f"  mean {pl['mean_uncached_tokens']:,.0f} of {pl['mean_input_tokens']:,.0f} tokens; one site seeing "
            f"every request hits {pl['token_hit_ratio']:.1%} of tokens, {pl['block_hit_ratio']:.1%} of blocks; "
            f"prfaas routes by the {pl['prfaas_cache']} cache",
        ]
        if pl["prefix_cache"] == "hybrid":
            every = pl["state_checkpoint_every_blocks"]
            where = "each prompt's last full block" + (f" and every {every} blocks" if every else "")
            lines.append(
                f"  hybrid model: a hit ends where a prefill saved its linear state ({where}); "
                f"{pl['state_bytes'] / 2**20:,.0f} MiB per state, out of the same capacity"
            )
    lines.append(f"prefill time per class: {pl['prefill_time']}")
    if workload["context"] is not None:
        fit = workload["context"]
        lines.append(f"context: {ContextFit(**fit).describe()}")
    return lines


_FORMATS = {
    "lambda_max": "{:.3f}",
    "vs_homogeneous": "{:.2f}x",
    "offload_share": "{:.3f}",
    "egress_gbps": "{:.2f}",
    "link_utilization": "{:.0%}",
    "threshold_tokens": "{:,.0f}",
    "l_long": "{:,.0f}",
    "l_short": "{:,.0f}",
    "bandwidth_gbps": "{:g}",
    "error": "{:+.1%}",
}


def render_frame(frame: pd.DataFrame) -> str:
    """A sweep DataFrame as an aligned text table (floats rounded for reading; the CSV keeps them)."""
    rows = [list(frame.columns)]
    for rec in frame.to_dict("records"):
        rows.append(
            [
                _num(v, _FORMATS.get(k, "{:.3f}")) if v is None or isinstance(v, float) else str(v)
                for k, v in rec.items()
            ]
        )
    return _grid(rows)
