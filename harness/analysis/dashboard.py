"""One self-contained HTML dashboard: plotly.js embedded (works offline), a header naming the runs, a
headline card (Λ_max by plan, simulate and replay, the PrfaaS gain, the verdict, what ran where), the
summary and comparison tables, and every figure of :mod:`harness.analysis.figures`, each under its own
HTML heading (a heading wraps; a Plotly title would run under the toolbar in a narrow column)."""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from plotly.offline import get_plotlyjs

from harness import __version__
from harness.analysis.figures import all_figures
from harness.analysis.runs import Bundle
from harness.analysis.stages import run_stages, stage_order
from harness.analysis.sweepmaps import BANDWIDTH, breakeven_table, default_axes, describe, sweep_figures
from harness.analysis.tables import (
    BREAKDOWN_COLUMNS,
    MAIN_COLUMNS,
    fmt,
    headline,
    ratio_text,
    show_side_by_side,
    source_order,
    write_output,
)

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #222; background: #f6f7f9; }
header { background: #1f2937; color: #fff; padding: 16px 28px; }
header h1 { margin: 0 0 6px; font-size: 22px; }
header .runs { font-size: 13px; opacity: .85; }
.validity { padding: 10px 28px; font-size: 15px; color: #fff; }
.validity ul { margin: 4px 0 0; }
.validity.valid { background: #15803d; } .validity.invalid { background: #b91c1c; }
.validity.unknown { background: #b45309; }
main { padding: 16px 28px; }
section { background: #fff; border-radius: 8px; padding: 12px 16px; margin-bottom: 16px;
          box-shadow: 0 1px 2px rgba(0,0,0,.08); overflow-x: auto; }
h2 { font-size: 16px; margin: 4px 0 10px; }
table { border-collapse: collapse; font-size: 12.5px; }
th, td { padding: 4px 8px; border-bottom: 1px solid #e5e7eb; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
.grid { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 16px; }
@media (max-width: 1100px) { .grid { grid-template-columns: minmax(0, 1fr); } }
.note { color: #92400e; font-size: 13px; }
section.figure h2 { margin: 4px 0 2px; font-size: 14px; font-weight: 600; }
.card { border-left: 4px solid #2563eb; }
.card .gain { font-size: 18px; margin: 10px 0 6px; }
.card .gain strong { font-size: 22px; }
.card td.num { font-size: 16px; font-variant-numeric: tabular-nums; }
.card ul { margin: 6px 0; padding-left: 20px; font-size: 13px; }
"""
# The toolbar keeps what a reader uses (save as PNG, zoom, pan, reset): fewer buttons, less width.
_PLOTLY_CONFIG = {
    "displaylogo": False, "responsive": True,
    "modeBarButtonsToRemove": ["select2d", "lasso2d", "zoomIn2d", "zoomOut2d", "autoScale2d"],
}  # fmt: skip
BASELINE, SUBJECT = "homogeneous", "prfaas"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _tables(result: Mapping[str, Any]) -> str:
    topo = result["topologies"]
    main = _table(
        ["topology", "source", *(h for _, h, _ in MAIN_COLUMNS)],
        [[k, e["source"], *(fmt(e.get(c), kind) for c, _, kind in MAIN_COLUMNS)] for k, e in topo.items()],
    )
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in headline(result))
    parts = [f"<section><h2>Ratios at equal load</h2><ul>{lines}</ul></section>"] if lines else []
    if topo:
        parts.append(f"<section><h2>Per topology (latencies from the scheduled send)</h2>{main}</section>")
    brk = _table(
        ["topology", *(f"{h} p50" for _, h in BREAKDOWN_COLUMNS), "TTFT p50"],
        [[k, *(fmt(e.get(f"{c}_p50_s"), "s") for c, _ in BREAKDOWN_COLUMNS), fmt(e.get("ttft_p50_s"), "s")]
         for k, e in topo.items()],
    )  # fmt: skip
    if topo:
        parts.append(f"<section><h2>TTFT breakdown</h2>{brk}</section>")
    for source, comp in result["comparison"].items():
        rows = [
            [name, ratio_text(r["throughput_rps"]), ratio_text(r["goodput_rps"]), ratio_text(r["ttft_p50_s"]),
             ratio_text(r["ttft_p90_s"]), "–" if r["cost_per_hour"] is None else f"{r['cost_per_hour']:,.0f}",
             ratio_text(r["throughput_per_cost"])]
            for name, r in comp["rows"].items()
        ]  # fmt: skip
        t = _table(
            ["topology", "throughput", "goodput", "TTFT p50", "TTFT p90", "$/h", "throughput per $"], rows
        )
        parts.append(f"<section><h2>{html.escape(source)}: vs {html.escape(comp['baseline'])} "
                     f"(ratio [95% bootstrap CI])</h2>{t}</section>")  # fmt: skip
    side = result["side_by_side"]
    if show_side_by_side(side):
        rows = [
            [name, src, fmt(v.get("lambda_max_rps"), "f3"), fmt(v.get("throughput_rps"), "f3"),
             fmt(v.get("ttft_p90_s"), "s"), fmt(v.get("offload_share"), "pct"), fmt(v.get("egress_gbps"), "f2")]
            for name, per in side.items() for src, v in sorted(per.items(), key=lambda kv: source_order(kv[0]))
        ]  # fmt: skip
        t = _table(
            ["topology", "source", "Λ_max req/s", "throughput req/s", "TTFT p90", "offload", "egress Gb/s"],
            rows,
        )
        parts.append(f"<section><h2>Plan, simulate and replay side by side</h2>{t}</section>")
    if result["notes"]:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in result["notes"])
        parts.append(f'<section><h2>Notes</h2><ul class="note">{items}</ul></section>')
    return "\n".join(parts)


def lambda_max_by_stage(result: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """topology → {"plan", "simulate", "replay"} → {"value", "low", "high"} (req/s; None where unknown).

    plan: ``plan.topologies.<t>.lambda_max``; simulate: the Λ_max search (``capacity_ladder.lambda_max.<t>
    .simulate``, else ``side_by_side.<t>.simulate.lambda_max_rps``); replay: the capacity ladder over HTTP
    (``capacity_ladder.lambda_max.<t>.replay_ladder`` with its bracket ``capacity_ladder.sources.replay.<t>
    .low_rps``/``high_rps``), else a replay rate sweep (``lambda_max.replay.<t>.lambda_max_rps``)."""
    plan = (result.get("plan") or {}).get("topologies") or {}
    ladder = result.get("capacity_ladder") or {}
    side, swept = result.get("side_by_side") or {}, (result.get("lambda_max") or {}).get("replay") or {}
    rungs = (ladder.get("sources") or {}).get("replay") or {}
    names = [*plan, *(n for n in ladder.get("lambda_max") or {} if n not in plan)]
    names += [n for n in side if n not in names and "@" not in n]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for n in names:
        lad = (ladder.get("lambda_max") or {}).get(n) or {}
        sim = lad.get("simulate", ((side.get(n) or {}).get("simulate") or {}).get("lambda_max_rps"))
        rep = lad.get("replay_ladder", (swept.get(n) or {}).get("lambda_max_rps"))
        bracket = rungs.get(n) or {}
        out[n] = {
            "plan": {"value": (plan.get(n) or {}).get("lambda_max")},
            "simulate": {"value": sim},
            "replay": {"value": rep, "low": bracket.get("low_rps"), "high": bracket.get("high_rps")},
        }
    return out


def _rate(cell: Mapping[str, Any]) -> str:
    if cell.get("value") is None:
        return "–"
    lo, hi = cell.get("low"), cell.get("high")
    return f"{cell['value']:.2f}" + ("" if lo is None or hi is None else f" [{lo:.2f}–{hi:.2f}]")


def _gains(result: Mapping[str, Any], lams: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    # PrfaaS over homogeneous by stage: Λ_max ratios; replay's with the ladder's 95% interval.
    if SUBJECT not in lams or BASELINE not in lams:
        return []
    ladder_gain = ((result.get("capacity_ladder") or {}).get("gain") or {}).get(
        f"{SUBJECT}_vs_{BASELINE}"
    ) or {}
    out = []
    for stage in ("plan", "simulate", "replay"):
        a, b = lams[SUBJECT][stage]["value"], lams[BASELINE][stage]["value"]
        g = ladder_gain.get("replay_ladder") if stage == "replay" else None
        if isinstance(g, Mapping) and g.get("value") is not None:
            ci = "" if g.get("ci_low") is None else f" [{g['ci_low']:.2f}–{g['ci_high']:.2f}] (95% CI)"
            out.append(f"{stage} <strong>{g['value']:.2f}×</strong>{ci}")
        elif a and b:
            out.append(f"{stage} <strong>{a / b:.2f}×</strong>")
        else:
            out.append(f"{stage} –")
    return out


def _where(bundle: Bundle, result: Mapping[str, Any]) -> list[str]:
    # One line per stage: what ran, on what clock, how many requests at which offered rate.
    stages = run_stages(bundle)
    by_run = {r.run_id: r for r in bundle.runs}
    lines = []
    if result.get("plan"):
        lines.append(
            "plan: the paper's closed-form throughput model (§3.4), no queues, grid search over t and N_p/N_d"
        )
    for rid, label in sorted(stages.items(), key=lambda kv: stage_order(kv[1])):
        run = by_run[rid]
        entries = [e for e in result["topologies"].values() if e.get("run_id") == rid]
        n = sum(e.get("requests") or 0 for e in entries)
        rates = sorted({round(e["offered_rps"], 3) for e in entries if e.get("offered_rps") is not None})
        load = f"{n:,} requests" + (f" at {', '.join(f'{r:g}' for r in rates)} req/s" if rates else "")
        if run.source == "replay":
            scale = run.meta.get("time_scale")
            clock = f"real time over HTTP, link shaped by {run.backend or 'an unrecorded backend'}" + (
                f", emulator sped up {scale:g}× (read in model seconds)" if scale and scale != 1 else ""
            )
        elif run.meta.get("find_max_rate"):
            clock = "virtual time (the same serving stack), probes at rising rates"
        else:
            clock = "virtual time (the same serving stack)"
        lines.append(
            f"{label}: {clock}; {load} over {len(entries)} topolog{'y' if len(entries) == 1 else 'ies'}"
        )
    return lines


def headline_card(bundle: Bundle, result: Mapping[str, Any]) -> str:
    """The card at the top: Λ_max per topology by plan, simulate and replay, the PrfaaS gain over
    homogeneous (replay's with its 95% CI), the validity verdict, and what was measured where."""
    lams = lambda_max_by_stage(result)
    if not lams and not bundle.runs:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td>"
        + "".join(f'<td class="num">{html.escape(_rate(v[s]))}</td>' for s in ("plan", "simulate", "replay"))
        + "</tr>"
        for n, v in lams.items()
    )
    table = (
        "<table><thead><tr><th>Λ_max (req/s)</th><th>plan</th><th>simulate (Λ_max search)</th>"
        f"<th>replay over HTTP [bracket]</th></tr></thead><tbody>{rows}</tbody></table>"
        if rows
        else ""
    )
    gains = _gains(result, lams)
    gain = f'<div class="gain">PrfaaS vs homogeneous: {" · ".join(gains)}</div>' if gains else ""
    verdict = result.get("validity")
    verdict_text = "no measured run (plan and simulate only)" if verdict is None else str(verdict)
    if verdict_text.startswith("invalid: "):  # the banner above lists the reasons
        verdict_text = f"invalid ({len(verdict_text.split('; '))} reasons, listed above)"
    ladder = (result.get("capacity_ladder") or {}).get("validity")
    if ladder:
        verdict_text += f"; capacity ladder: {ladder}"
    where = "".join(f"<li>{html.escape(w)}</li>" for w in _where(bundle, result))
    return (
        f'<section class="card"><h2>Headline</h2>{table}{gain}'
        f"<div><strong>validity:</strong> {html.escape(verdict_text)}</div>"
        f"<div><strong>measured where:</strong><ul>{where}</ul></div></section>"
    )


def validity_banner(result: Mapping[str, Any]) -> str:
    """The measured runs' verdict across the top: red with every reason when invalid, green when
    valid, amber when unknown; nothing when no run was measured (plan and simulate only)."""
    verdict = result.get("validity")
    if not verdict:
        return ""
    if verdict == "valid":
        return '<div class="validity valid">valid: every measured run kept its [validity] bounds</div>'
    if not str(verdict).startswith("invalid"):
        return (
            f'<div class="validity unknown">validity {html.escape(str(verdict))}: no verdict recorded</div>'
        )
    reasons = "".join(
        f"<li>{html.escape(r)}</li>" for r in str(verdict).removeprefix("invalid: ").split("; ")
    )
    return (
        '<div class="validity invalid"><strong>invalid: these runs cannot support the comparison '
        f"below</strong><ul>{reasons}</ul></div>"
    )


def render_html(bundle: Bundle, result: Mapping[str, Any], *, title: str = "prfaas-bench report") -> str:
    """The whole page as one string (plotly.js inline)."""
    runs = (
        " · ".join(
            f"{r['run_id']} ({r['source']}{', ' + r['backend'] if r['backend'] else ''}"
            f"{'' if r['complete'] in (True, None) else ', INCOMPLETE'})"
            for r in result["runs"]
        )
        or "no runs (plan only)"
    )
    figures = "\n".join(_figure(anchor, fig) for anchor, fig in all_figures(bundle, result))
    return _page(
        title,
        f"runs: {html.escape(runs)}",
        validity_banner(result),
        f"{headline_card(bundle, result)}\n{_tables(result)}",
        figures,
    )


def render_sweep_html(
    frame: Any, axes: Sequence[str] | None = None, *, title: str = "prfaas-bench sweep"
) -> str:
    """A sweep's page (``OUT/sweep.parquet`` as a frame): heatmaps of Λ_max and of the PrfaaS gain over
    two axes (``harness.analysis.sweepmaps``)."""
    axes = default_axes(frame) if axes is None else axes
    figures = "\n".join(_figure(anchor, fig) for anchor, fig in sweep_figures(frame, axes))
    rows = breakeven_table(frame, axes)
    other = next((a for a in axes if a != BANDWIDTH), "")
    top = (
        "<section><h2>Break-even link bandwidth (PrfaaS gain = 1, interpolated between swept bandwidths)"
        f"</h2>{_table([other, 'break-even'], [list(r) for r in rows])}</section>"
        if rows
        else ""
    )
    return _page(title, f"sweep: {describe(frame)}", "", top, figures)


def _page(title: str, runs_line: str, banner: str, top: str, figures: str) -> str:
    """The page around its parts (``runs_line`` is HTML already escaped)."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<header><h1>{html.escape(title)}</h1>
<div class="runs">{runs_line}</div>
<div class="runs">prfaas-bench {__version__} · generated {time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}</div>
</header>
{banner}
<main>
{top}
<div class="grid">
<!-- a fixed column count: each figure is sized when its script runs, before later items exist -->
{figures}
</div>
</main></body></html>
"""


def _figure(anchor: str, fig: Any) -> str:
    # The figure's title becomes the section's heading; the figure keeps only its plot.
    title = fig.layout.title.text or ""
    fig.update_layout(title_text=None)
    div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=anchor, config=_PLOTLY_CONFIG)
    return f'<section class="figure"><h2>{html.escape(title)}</h2>{div}</section>'


def write_report(bundle: Bundle, result: Mapping[str, Any], out: str | Path, **kwargs: Any) -> Path:
    """Write the dashboard to ``out`` (parent directories created) and return its path."""
    return write_output(out, render_html(bundle, result, **kwargs))
