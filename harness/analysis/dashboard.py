"""One self-contained HTML dashboard: plotly.js embedded (works offline), a header naming the runs,
the summary and comparison tables, and every figure of :mod:`harness.analysis.figures`."""

from __future__ import annotations

import html
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from plotly.offline import get_plotlyjs

from harness import __version__
from harness.analysis.figures import all_figures
from harness.analysis.runs import Bundle
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
"""


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
    parts = [f"<section><h2>Headline</h2><ul>{lines}</ul></section>"] if lines else []
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
    figures = "\n".join(
        '<section class="figure">'
        + fig.to_html(full_html=False, include_plotlyjs=False, div_id=anchor,
                      config={"displaylogo": False, "responsive": True})
        + "</section>"
        for anchor, fig in all_figures(bundle, result)
    )  # fmt: skip
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<header><h1>{html.escape(title)}</h1>
<div class="runs">runs: {html.escape(runs)}</div>
<div class="runs">prfaas-bench {__version__} · generated {time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}</div>
</header>
{validity_banner(result)}
<main>
{_tables(result)}
<div class="grid">
<!-- a fixed column count: each figure is sized when its script runs, before later items exist -->
{figures}
</div>
</main></body></html>
"""


def write_report(bundle: Bundle, result: Mapping[str, Any], out: str | Path, **kwargs: Any) -> Path:
    """Write the dashboard to ``out`` (parent directories created) and return its path."""
    return write_output(out, render_html(bundle, result, **kwargs))
