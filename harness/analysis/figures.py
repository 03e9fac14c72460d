"""The dashboard's Plotly figures. Each builder returns a figure; missing data gives a figure that
says what is missing instead of an error, so the page always has every panel. The timelines (latency
over time, link) shade the link events a run went through (its meta.json's ``link_events``).

Every trace and every bar is one run's one topology, named by topology and grouped in the legend by
its stage (:mod:`harness.analysis.stages`); colour is the topology's in every figure. Timelines of
several stages show one stage at a time, chosen with a selector: their clocks differ (a capacity
search runs for many model minutes, a paired run for one)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from harness.analysis import metrics as m
from harness.analysis.capacity import split_label
from harness.analysis.runs import Bundle
from harness.analysis.stages import Series, colour, run_stages, series, stage_order
from harness.analysis.summary import Slo
from harness.analysis.tables import source_order
from harness.analysis.telemetry import server_series

_LAYOUT: dict[str, Any] = {
    "template": "plotly_white",
    "height": 380,
    # the title is the dashboard's heading above the figure; the top margin holds the stage selector
    # (left) and the toolbar (right), so neither covers a title
    "margin": {"l": 60, "r": 20, "t": 40, "b": 50},
    "legend": {"x": 1.02, "xanchor": "left", "y": 1, "yanchor": "top", "font": {"size": 10},
               "groupclick": "toggleitem", "grouptitlefont": {"size": 11}},
}  # fmt: skip
# Line style by stage: measured solid, its simulated pair dashed, the Λ_max search dotted.
_DASH = {"replay": "solid", "paired simulate": "dash", "simulate": "dash", "capacity search": "dot"}
_SHOWN_FIRST = ("replay", "paired simulate", "simulate")  # the stage a selector opens on
_MAX_POINTS = 400  # per CDF / time line: keeps the page small without changing the picture
BREAKDOWN = (
    ("queue", m.ttft_queue), ("prefill", m.ttft_prefill), ("KV transfer (exposed)", m.ttft_transfer),
    ("first token", m.ttft_first_token),
)  # fmt: skip


def _fig(title: str, **layout: Any) -> go.Figure:
    return go.Figure(layout={**_LAYOUT, "title": {"text": title, "font": {"size": 14}}, **layout})


def missing(title: str, why: str) -> go.Figure:
    """A figure that renders and says why it has no data."""
    fig = _fig(title, xaxis={"visible": False}, yaxis={"visible": False})
    fig.add_annotation(text=why, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font={"size": 14})
    return fig


def _line(fig: go.Figure, s: Series, x: Any, y: Any, *, name: str | None = None, **kw: Any) -> None:
    """One run's one topology as a line: named by topology, grouped under its stage, coloured by topology."""
    line = {"color": colour(s.topology), "dash": _DASH.get(s.stage, "dashdot"), **kw.pop("line", {})}
    fig.add_scatter(
        x=x, y=y, mode=kw.pop("mode", "lines"), name=name or s.topology, legendgroup=s.stage,
        legendgrouptitle_text=s.stage, line=line, meta=s.stage, **kw,
    )  # fmt: skip


def _stage_selector(
    fig: go.Figure, layouts: Mapping[str, Mapping[str, Any]] | None = None, *, together: tuple[str, ...] = ()
) -> go.Figure:
    """Show one stage at a time, chosen in a dropdown, when the traces (``meta`` = stage) come from
    several; ``together`` is one view of stages drawn on the same axes (a replay and its simulated
    pair); ``layouts`` are layout changes per stage (e.g. its y-axis title). The figure grows to fit
    the longest legend of a view."""
    stages = sorted(dict.fromkeys(t.meta for t in fig.data), key=stage_order)
    layouts = layouts or {}
    pair = tuple(st for st in together if st in stages)
    views = [pair] if len(pair) > 1 else []
    views += [(st,) for st in stages if not (len(pair) > 1 and st in pair)]
    rows = max(len(v) + sum(t.meta in v for t in fig.data) for v in views)  # group titles + entries
    fig.update_layout(height=max(fig.layout.height or 0, 110 + 20 * rows))
    if len(views) < 2:
        for st in stages:
            fig.update_layout(layouts.get(st, {}))
        return fig
    first = next((v for s in _SHOWN_FIRST for v in views if s in v), views[0])
    buttons = [
        {"label": f"stage: {' + '.join(v)}", "method": "update",
         "args": [{"visible": [t.meta in v for t in fig.data]},
                  {"xaxis.autorange": True, "yaxis.autorange": True, **layouts.get(v[0], {})}]}
        for v in views
    ]  # fmt: skip
    for t in fig.data:
        t.visible = t.meta in first
    fig.update_layout(layouts.get(first[0], {}))
    fig.update_layout(
        updatemenus=[{"type": "dropdown", "buttons": buttons, "active": views.index(first), "x": 0,
                      "xanchor": "left", "y": 1, "yanchor": "bottom", "pad": {"b": 6}, "font": {"size": 11}}]
    )  # fmt: skip
    return fig


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(x) <= _MAX_POINTS:
        return x, y
    idx = np.unique(np.linspace(0, len(x) - 1, _MAX_POINTS).astype(int))
    return x[idx], y[idx]


_STAGE_COLOURS = {"plan": "#9ca3af", "capacity search": "#6366f1", "paired simulate": "#0ea5e9",
                  "simulate": "#0ea5e9", "replay": "#f59e0b"}  # fmt: skip


def throughput_bars(result: Mapping[str, Any], bundle: Bundle) -> go.Figure:
    """Per topology, one bar per stage: the plan's Λ_max, then each run's throughput (95% block-bootstrap
    CI) with its goodput marked on the bar. A bar is always one run; rate sweeps and ladder rungs are
    left to the SLO-attainment-vs-rate panel."""
    fig = _fig(
        "Throughput per topology and stage (error bars: 95% bootstrap CI; ▬ goodput)",
        barmode="group", scattermode="group", yaxis={"title": "req/s"},
    )  # fmt: skip
    stages = run_stages(bundle)
    plan = result.get("plan") or {}
    if plan.get("topologies"):
        names = list(plan["topologies"])
        fig.add_bar(name="plan Λ_max", x=names, y=[plan["topologies"][n].get("lambda_max") for n in names],
                    offsetgroup="plan", marker_color=_STAGE_COLOURS["plan"])  # fmt: skip
    by_stage: dict[str, list[Mapping[str, Any]]] = {}
    for e in result["topologies"].values():
        if split_label(e["topology"])[1] is None:
            by_stage.setdefault(stages.get(e.get("run_id"), e["source"]), []).append(e)
    for label in sorted(by_stage, key=stage_order):
        if label.startswith("replay ×"):
            continue
        es = by_stage[label]
        y = [e["throughput_rps"] for e in es]
        err_hi = [
            (e["throughput_ci_high"] or v) - v if v is not None else 0 for e, v in zip(es, y, strict=True)
        ]
        err_lo = [
            v - (e["throughput_ci_low"] or v) if v is not None else 0 for e, v in zip(es, y, strict=True)
        ]
        x = [e["topology"] for e in es]
        fig.add_bar(
            name=label, x=x, y=y, offsetgroup=label, marker_color=_STAGE_COLOURS.get(label.split(" (")[0]),
            error_y={"type": "data", "array": err_hi, "arrayminus": err_lo},
        )  # fmt: skip
        fig.add_scatter(
            name="goodput", x=x, y=[e["goodput_rps"] for e in es], offsetgroup=label, mode="markers",
            legendgroup="goodput", legendrank=2000, showlegend=not any(t.name == "goodput" for t in fig.data),
            marker={"symbol": "line-ew-open", "size": 16, "color": "#111827", "line": {"width": 3}},
        )  # fmt: skip
    if not fig.data:
        return missing(fig.layout.title.text, "no requests or plan results in these runs")
    return fig


def cdf(bundle: Bundle, fn: Callable[[pd.DataFrame], np.ndarray], title: str, unit: str = "s") -> go.Figure:
    """Empirical CDF of a per-request metric, one line per run and topology (grouped by stage); a
    replay and its paired simulation are drawn together, other stages one at a time."""
    fig = _fig(title, xaxis={"title": unit}, yaxis={"title": "fraction of requests", "range": [0, 1]})
    for s in series(bundle):
        v = fn(s.records)
        v = np.sort(v[np.isfinite(v)])
        if len(v):
            x, y = _thin(v, np.arange(1, len(v) + 1) / len(v))
            _line(fig, s, x, y)
    if not fig.data:
        return missing(title, "no successful requests with this metric in these runs")
    return _stage_selector(fig, together=("paired simulate", "replay"))


def link_event_spans(bundle: Bundle) -> tuple[list[tuple[float, float | None, str]], tuple[float, float]]:
    """The link events the runs went through, as (start, end or None, label) on the records' time axis,
    and the span of time those runs cover.

    Event times count from the run clock's zero, the first request's scheduled send, which is the
    earliest ``scheduled_s`` of each topology's records (model seconds: replay times are scaled).
    Runs that could not apply their events (``applied`` null) contribute nothing."""
    spans: dict[tuple[float, float | None, str], None] = {}
    lo, hi = np.inf, -np.inf
    for run in bundle.runs:
        meta = run.meta.get("link_events")
        if not isinstance(meta, Mapping) or meta.get("applied") is None:
            continue
        for _, df in run.records.groupby("topology", sort=True):
            zero = np.nanmin(m.col(df, "scheduled_s")) if len(df) else np.nan
            if not np.isfinite(zero):
                continue
            lo, hi = min(lo, zero), max(hi, np.nanmax(np.append(m.col(df, "last_token_s"), zero)))
            for ev in meta.get("events") or ():
                end = ev.get("end_s")
                label = f"{'/'.join(ev.get('directions') or ())} {ev.get('change', '')}".strip()
                key = (round(zero + ev["start_s"], 3), None if end is None else round(zero + end, 3), label)
                spans[key] = None
    return list(spans), (float(lo), float(hi))


def _mark_link_events(fig: go.Figure, bundle: Bundle) -> go.Figure:
    """Shade each link event's interval (a line where it has no end), labelled with what changed, and
    open the time axis on the runs that went through them (autoscale shows every run)."""
    spans, (lo, hi) = link_event_spans(bundle)
    if spans:
        fig.update_xaxes(range=[lo, hi])
    for i, (x0, x1, label) in enumerate(spans):
        colour = "crimson" if label.endswith("down") else "darkorange"
        where = "top left" if i % 2 == 0 else "bottom left"  # overlapping labels alternate
        if x1 is None:
            fig.add_vline(x=x0, line={"color": colour, "dash": "dash"}, annotation_text=label,
                          annotation_position=where, annotation_font_size=10)  # fmt: skip
        else:
            fig.add_vrect(x0=x0, x1=x1, fillcolor=colour, opacity=0.15, line_width=0, annotation_text=label,
                          annotation_position=where, annotation_font_size=10)  # fmt: skip
    return fig


def ttft_bins(df: pd.DataFrame, bins: int = 40) -> tuple[list[float], np.ndarray, np.ndarray] | None:
    """(bin centres, TTFT p50, TTFT p90) in time bins of the scheduled send; None under two requests."""
    t, v = m.col(df, "scheduled_s"), m.ttft(df)
    keep = np.isfinite(t) & np.isfinite(v)
    if keep.sum() < 2:
        return None
    g = pd.DataFrame({"bin": pd.cut(t[keep], bins), "v": v[keep]}).groupby("bin", observed=True)["v"]
    return [iv.mid for iv in g.median().index], g.median().to_numpy(), g.quantile(0.9).to_numpy()


def latency_over_time(bundle: Bundle, bins: int = 40) -> go.Figure:
    """TTFT p50 (solid) and p90 (dotted) in time bins of the scheduled send; one stage at a time."""
    title = "Latency over time (TTFT by scheduled send time)"
    fig = _fig(title, xaxis={"title": "scheduled send (s)"}, yaxis={"title": "TTFT (s)"})
    for s in series(bundle):
        if (binned := ttft_bins(s.records, bins)) is None:
            continue
        centers, p50, p90 = binned
        _line(fig, s, centers, p50, name=f"{s.topology} p50", line={"dash": "solid"})
        _line(fig, s, centers, p90, name=f"{s.topology} p90", line={"dash": "dot"})
    if not fig.data:
        return missing(title, "no successful requests in these runs")
    return _stage_selector(_mark_link_events(fig, bundle))


def _timeseries_columns(
    bundle: Bundle, words: tuple[str, ...]
) -> Iterator[tuple[Series, list[str], pd.DataFrame]]:
    """Per run and topology: the time-series columns naming one of ``words`` that are ever non-zero
    (an idle direction adds a flat line and a legend entry, nothing else), and the rows sorted by time."""
    for s in series(bundle):
        ts = s.run.timeseries
        part = None if ts is None else ts[ts["topology"] == s.topology].sort_values("time_s")
        cols = [] if part is None else [
            c for c in part.columns if c != "time_s" and any(w in c.lower() for w in words)
            and pd.api.types.is_numeric_dtype(part[c]) and part[c].fillna(0).ne(0).any()
        ]  # fmt: skip
        yield s, cols, part if part is not None else pd.DataFrame()


def server_timeline(bundle: Bundle, bins: int = 40) -> go.Figure:
    """The servers' own series under the client's TTFT, on one shared time axis: TTFT p50 (top), running
    (solid) and waiting (dotted) requests, KVCache usage. One legend entry per run's topology, grouped
    under its stage, coloured by topology."""
    title = "Servers' /metrics under the client's TTFT (requests running —, waiting ···)"
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.05, row_heights=[0.4, 0.3, 0.3])
    fig.update_layout(**{**_LAYOUT, "height": 560}, title={"text": title, "font": {"size": 14}})
    for s in series(bundle):
        if s.run.server_metrics is None:
            continue
        found = server_series(s.run.server_metrics)
        found = found[found["topology"] == s.topology]
        if found.empty:
            continue
        group = {
            "legendgroup": s.stage,
            "legendgrouptitle_text": s.stage,
            "name": s.topology,
            "meta": s.stage,
        }
        shown = {"showlegend": True}
        if (binned := ttft_bins(s.records, bins)) is not None:
            fig.add_scatter(x=binned[0], y=binned[1], mode="lines+markers", line={"color": colour(s.topology)},
                            hovertemplate="TTFT p50 %{y:.3f} s", **group, **shown, row=1, col=1)  # fmt: skip
            shown = {"showlegend": False}
        t = found["time_s"].to_numpy(float)
        for row, col, dash, what in ((2, "running", None, "running"), (2, "waiting", "dot", "waiting"),
                                     (3, "kv_usage", None, "KV usage")):  # fmt: skip
            if col not in found or not found[col].notna().any():
                continue
            y = found[col].to_numpy(float) * (100 if col == "kv_usage" else 1)
            fig.add_scatter(x=t, y=y, mode="lines", line={"color": colour(s.topology), "dash": dash, "shape": "hv"},
                            hovertemplate=f"{what} %{{y:.3g}}", **group, **shown, row=row, col=1)  # fmt: skip
            shown = {"showlegend": False}
    if not fig.data:
        return missing(title, "no server metrics in these runs (replay scrapes /metrics: --scrape-interval)")
    fig.update_yaxes(title_text="TTFT p50 (s)", row=1, col=1)
    fig.update_yaxes(title_text="requests", row=2, col=1)
    fig.update_yaxes(title_text="KV usage (%)", row=3, col=1)
    fig.update_xaxes(title_text="time on the run clock (s)", row=3, col=1)
    return _mark_link_events(fig, bundle)


def egress_from_records(df: pd.DataFrame, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Cross-site KV Gbit/s per ``step`` window, each transfer spread evenly over its start..end."""
    cross = df[m.cross_site(df)]
    s, e, b = m.col(cross, "kv_transfer_start_s"), m.col(cross, "kv_transfer_end_s"), m.col(cross, "kv_bytes")
    keep = np.isfinite(s) & np.isfinite(e) & np.isfinite(b) & (e > s)
    s, e, b = s[keep], e[keep], b[keep]
    if not len(s):
        return np.empty(0), np.empty(0)
    edges = np.arange(s.min() // step * step, e.max() + step, step)
    lo, hi = edges[:-1], edges[1:]
    overlap = np.clip(np.minimum(hi[None, :], e[:, None]) - np.maximum(lo[None, :], s[:, None]), 0, None)
    gbits = (overlap * (b * 8 / 1e9 / (e - s))[:, None]).sum(axis=0)
    return lo, gbits / step


def link_utilisation(bundle: Bundle) -> go.Figure:
    """Link columns of timeseries.parquet; for a run without them, cross-site KV egress rebuilt from its
    records. One stage at a time."""
    title = "Link utilisation over time"
    fig = _fig(title, xaxis={"title": "time (s)"})
    units: dict[str, str] = {}
    for s, cols, part in _timeseries_columns(bundle, ("link", "egress", "util", "gbps")):
        for c in cols:
            x, y = _thin(part["time_s"].to_numpy(float), part[c].to_numpy(float))
            direction = c.replace("link_utilisation ", "").replace("link_utilization ", "")
            _line(fig, s, x, y, name=f"{s.topology} {direction}", line={"dash": "solid"})
            fraction = "util" in c
            units[s.stage] = "utilisation (fraction of link rate)" if fraction else "Gbit/s (or as named)"
        if cols:
            continue
        df = s.records
        x, y = egress_from_records(df, step=max(m.duration(df) / 200, 1e-3) if len(df) else 1.0)
        if len(x) and y.any():
            x, y = _thin(x, y)
            _line(fig, s, x, y, name=f"{s.topology} KV egress", line={"dash": "solid"})
            units[s.stage] = "Gbit/s (KV egress from the records)"
    if not fig.data:
        return missing(title, "no link time series and no cross-site KV transfers in these runs")
    if all("records" in u for u in units.values()):
        fig.layout.title.text = f"{title}: cross-site KV egress from the records"
    layouts = {st: {"yaxis.title.text": u} for st, u in units.items()}
    return _stage_selector(_mark_link_events(fig, bundle), layouts)


def queue_depths(bundle: Bundle) -> go.Figure:
    """Queue columns of timeseries.parquet (requests waiting: prefill queues, decode pending); for a run
    without them, requests waiting for prefill rebuilt from its records. One stage at a time."""
    title = "Queue depths over time"
    fig = _fig(title, xaxis={"title": "time (s)"}, yaxis={"title": "requests waiting"})
    from_records = []
    for s, cols, part in _timeseries_columns(bundle, ("queue", "pending", "inflight", "in_flight")):
        for c in cols:
            x, y = _thin(part["time_s"].to_numpy(float), part[c].to_numpy(float))
            _line(fig, s, x, y, name=f"{s.topology} {c.replace('_', ' ')}", line={"dash": "solid"})
        if cols:
            continue
        sched, start = m.col(s.records, "scheduled_s"), m.col(s.records, "prefill_start_s")
        keep = np.isfinite(sched) & np.isfinite(start)
        if not keep.any():
            continue
        times = np.concatenate([sched[keep], start[keep]])
        steps = np.concatenate([np.ones(keep.sum()), -np.ones(keep.sum())])
        order = np.argsort(times, kind="stable")
        x, y = _thin(times[order], np.cumsum(steps[order]))
        _line(fig, s, x, y, line={"shape": "hv", "dash": "solid"})
        from_records.append(s.stage)
    if not fig.data:
        return missing(title, "no queue time series and no prefill start times in these runs")
    stages = {t.meta for t in fig.data}
    if stages <= set(from_records):
        fig.layout.title.text = f"{title}: waiting for prefill, from the records"
    elif from_records:
        stages_text = ", ".join(dict.fromkeys(from_records))
        fig.layout.title.text = f"{title} ({stages_text}: waiting for prefill, from the records)"
    return _stage_selector(fig)


def breakdown_means(df: pd.DataFrame) -> tuple[dict[str, float], float, int] | None:
    """Mean of each TTFT part, and the mean TTFT, over the requests that report all four parts; the
    parts add up to that TTFT request by request, so their means do too. None when no request does."""
    parts = {name: fn(df) for name, fn in BREAKDOWN}
    keep = np.isfinite(m.ttft(df))
    for v in parts.values():
        keep &= np.isfinite(v)
    if not keep.any():
        return None
    return (
        {n: float(v[keep].mean()) for n, v in parts.items()},
        float(m.ttft(df)[keep].mean()),
        int(keep.sum()),
    )


def breakdown_bars(bundle: Bundle) -> go.Figure:
    """Mean TTFT split into queue, prefill, exposed KV transfer and first token, one bar per run and
    topology (stage, then topology); ◆ marks the mean TTFT of the same requests, where the bar ends."""
    title = "TTFT breakdown (mean over requests that report all four parts; ◆ their mean TTFT)"
    rows: list[tuple[Series, dict[str, float], float, int]] = []
    for s in series(bundle):
        if (found := breakdown_means(s.records)) is not None:
            rows.append((s, *found))
    if not rows:
        return missing(
            title, "no prefill/transfer timestamps in these runs (the endpoint did not report them)"
        )
    y = [[s.stage for s, *_ in rows], [s.topology for s, *_ in rows]]
    fig = _fig(
        title, barmode="stack", height=max(380, 130 + 24 * len(rows)), xaxis={"title": "s"},
        yaxis={"autorange": "reversed"},
    )  # fmt: skip
    for name, _ in BREAKDOWN:
        fig.add_bar(name=name, y=y, x=[parts[name] for _, parts, _, _ in rows], orientation="h")
    fig.add_scatter(
        name="mean TTFT", y=y, x=[ttft for *_, ttft, _ in rows], mode="markers",
        text=[f"{n} requests" for *_, n in rows], marker={"symbol": "diamond", "size": 9, "color": "#111827"},
    )  # fmt: skip
    return fig


SWEEPS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "threshold": ("Λ_max vs routing threshold t", ("threshold_tokens", "threshold", "t"), "t (tokens)"),
    "split": ("Λ_max vs N_p / N_d split", ("n_p", "split"), "N_p (prefill instances; N_d = the rest)"),
    "bandwidth": (
        "Λ_max vs inter-site link bandwidth",
        ("bandwidth_gbps", "link_gbps", "bandwidth"),
        "Gbit/s",
    ),
}
_LAMBDA_COLUMNS = ("lambda_max", "lambda_max_rps")


def sweep(bundle: Bundle, kind: str) -> go.Figure:
    """Λ_max against one planner parameter, from ``plan_sweep_<kind>.csv``; one line per topology."""
    title, x_names, x_title = SWEEPS[kind]
    df = bundle.sweeps(kind)
    if df is None:
        return missing(title, f"no plan_sweep_{kind}.csv in these runs (run the planner's sweep)")
    y_col = next((c for c in _LAMBDA_COLUMNS if c in df.columns), None)
    x_col = next((c for c in x_names if c in df.columns), None)
    if y_col is None or x_col is None:
        return missing(title, f"plan_sweep_{kind}.csv lacks a Λ_max or {x_names[0]} column")
    fig = _fig(title, xaxis={"title": x_title}, yaxis={"title": "Λ_max (req/s)"})
    groups = df.groupby("topology", sort=True) if "topology" in df.columns else [("Λ_max", df)]
    for name, part in groups:
        extra: dict[str, Any] = {}
        if kind == "split" and "n_d" in part.columns:  # hover shows the split; x stays numeric N_p
            extra = {"text": part["n_p"].astype(int).astype(str) + "/" + part["n_d"].astype(int).astype(str),
                     "hovertemplate": "N_p/N_d %{text}: Λ_max %{y:.3f} req/s"}  # fmt: skip
        fig.add_scatter(x=part[x_col], y=part[y_col], mode="lines+markers", name=str(name), **extra)
    if kind == "bandwidth":
        fig.update_xaxes(type="log")
    return fig


def _search_probes(bundle: Bundle | None) -> Iterator[tuple[str, list[Mapping[str, Any]], float]]:
    """(label, probes sorted by rate, attainment target) of every topology a ``simulate --find-max-rate``
    searched."""
    for run in bundle.runs if bundle is not None else ():
        summary = run.meta.get("summary") if run.meta.get("find_max_rate") else None
        for name, entry in (summary or {}).items():
            probes = entry.get("probes") if isinstance(entry, Mapping) else None
            if isinstance(probes, list) and probes:
                lam = entry.get("lambda_max")
                label = f"{name} (capacity search): Λ_max {'–' if lam is None else f'{lam:.3g}'} req/s"
                yield label, sorted(probes, key=lambda p: p["rate_rps"]), Slo.from_meta(run.meta).attainment


def attainment_vs_rate(result: Mapping[str, Any], bundle: Bundle | None = None) -> go.Figure:
    """Measured SLO attainment against offered rate (rate sweeps, bench's capacity ladder in replay and
    simulate, and every probe of a Λ_max search; the ladder's and the search's achieved/offered
    throughput over the measured window on a second axis), the target, and where Λ_max falls."""
    title = "SLO attainment vs offered rate (measured Λ_max)"
    fig = _fig(
        title,
        xaxis={"title": "offered rate (req/s)"},
        yaxis={"title": "SLO attainment"},
        yaxis2={"title": "achieved / offered", "overlaying": "y", "side": "right", "showgrid": False},
        # below the plot, not beside it: the right-hand side holds the second axis
        legend={
            "orientation": "h",
            "x": 0,
            "xanchor": "left",
            "y": 0,
            "yref": "container",
            "yanchor": "bottom",
        },
    )
    target = None
    for source, per in sorted(result.get("lambda_max", {}).items(), key=lambda kv: source_order(kv[0])):
        for name, found in per.items():
            lam = found["lambda_max_rps"]
            label = f"{name} ({source}): Λ_max {'–' if lam is None else f'{lam:.3g}'} req/s"
            fig.add_scatter(x=found["rates_rps"], y=found["attainment"], mode="lines+markers", name=label)
            target = found["target"]
    ladder = result.get("capacity_ladder") or {}
    for source, per in sorted((ladder.get("sources") or {}).items(), key=lambda kv: source_order(kv[0])):
        for name, fit in per.items():  # bench's capacity ladder: attainment, and achieved/offered on y2
            rungs, lam = fit["rungs"], fit["lambda_max_rps"]
            label = f"{name} ({source} ladder): Λ_max {'–' if lam is None else f'{lam:.3g}'} req/s"
            verdicts = [f"x{r['share']:g}: {'pass' if r['passed'] else r['reason']}" for r in rungs]
            style = {"legendgroup": label, "text": verdicts, "mode": "lines+markers"}
            fig.add_scatter(
                x=[r["rate_rps"] for r in rungs], y=[r["attainment"] for r in rungs], name=label, **style,
                line={"dash": "solid" if source == "replay" else "dash"},
                marker={"symbol": ["circle" if r["passed"] else "x" for r in rungs]},
            )  # fmt: skip
            fig.add_scatter(
                x=[r["rate_rps"] for r in rungs], y=[r["achieved_rps"] / r["offered_rps"] for r in rungs],
                name=f"{label.split(':')[0]}: achieved / offered", yaxis="y2", showlegend=False,
                line={"dash": "dot"}, **style,
            )  # fmt: skip
        target = target or ladder.get("target")
    for label, probes, search_target in _search_probes(bundle):
        rates = [p["rate_rps"] for p in probes]
        verdicts = ["pass" if p["passed"] else f"{p['reason']}: {p['detail']}" for p in probes]
        fig.add_scatter(
            x=rates, y=[p["attainment"] for p in probes], mode="lines+markers", name=label, text=verdicts,
            marker={"symbol": ["circle" if p["passed"] else "x" for p in probes]},
        )  # fmt: skip
        fig.add_scatter(
            x=rates, y=[p["achieved_rps"] / p["offered_rps"] for p in probes], mode="lines+markers",
            name=f"{label.split(' (')[0]}: achieved / offered", yaxis="y2", line={"dash": "dot"}, text=verdicts,
        )  # fmt: skip
        target = target or search_target
    if target is None:
        return missing(
            title,
            "no rate sweep or Λ_max search in these runs "
            "(simulate --rate-sweep or --find-max-rate, replay --rate a,b,c)",
        )
    fig.add_hline(y=target, line={"dash": "dot", "color": "gray"}, annotation_text=f"target {target:g}")
    return fig


def all_figures(bundle: Bundle, result: Mapping[str, Any]) -> list[tuple[str, go.Figure]]:
    """Every dashboard panel, in page order, as (anchor id, figure)."""
    return [
        ("throughput", throughput_bars(result, bundle)),
        ("ttft-cdf", cdf(bundle, m.ttft, "TTFT CDF (from the scheduled send)")),
        ("tpot-cdf", cdf(bundle, m.tpot, "TPOT CDF (excludes TTFT)")),
        ("latency-time", latency_over_time(bundle)),
        ("server-timeline", server_timeline(bundle)),
        ("link", link_utilisation(bundle)),
        ("queues", queue_depths(bundle)),
        ("breakdown", breakdown_bars(bundle)),
        *((f"sweep-{k}", sweep(bundle, k)) for k in SWEEPS),
        ("attainment", attainment_vs_rate(result, bundle)),
    ]
