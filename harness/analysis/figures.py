"""The dashboard's Plotly figures. Each builder returns a figure; missing data gives a figure that
says what is missing instead of an error, so the page always has every panel. The timelines (latency
over time, link) shade the link events a run went through (its meta.json's ``link_events``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from harness.analysis import metrics as m
from harness.analysis.runs import Bundle, Run
from harness.analysis.summary import Slo
from harness.analysis.tables import source_order

_LAYOUT: dict[str, Any] = {
    "template": "plotly_white",
    "height": 380,
    "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
    "legend": {"orientation": "h", "y": -0.2, "font": {"size": 10}},
}
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


def _series(bundle: Bundle) -> Iterator[tuple[str, Run, pd.DataFrame]]:
    """(label, run, measured successful records) per run and topology."""
    multi = len(bundle.runs) > 1
    for run in sorted(bundle.runs, key=lambda r: source_order(r.source)):
        for name, df in run.records.groupby("topology", sort=True):
            df = m.measured(df)
            label = f"{name} ({run.source})" if multi else str(name)
            yield label, run, df[m.ok_mask(df)]


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(x) <= _MAX_POINTS:
        return x, y
    idx = np.unique(np.linspace(0, len(x) - 1, _MAX_POINTS).astype(int))
    return x[idx], y[idx]


def throughput_bars(result: Mapping[str, Any]) -> go.Figure:
    """Throughput (95% block-bootstrap CI) and goodput per topology, grouped by source; plan Λ_max."""
    fig = _fig(
        "Throughput per topology (error bars: 95% bootstrap CI)", barmode="group", yaxis={"title": "req/s"}
    )
    entries = sorted(result["topologies"].values(), key=lambda e: source_order(e["source"]))
    plan = result.get("plan") or {}
    if plan.get("topologies"):
        names = list(plan["topologies"])
        fig.add_bar(name="plan Λ_max", x=names, y=[plan["topologies"][n].get("lambda_max") for n in names])
    for source in dict.fromkeys(e["source"] for e in entries):
        es = [e for e in entries if e["source"] == source]
        y = [e["throughput_rps"] for e in es]
        err_hi = [
            (e["throughput_ci_high"] or v) - v if v is not None else 0 for e, v in zip(es, y, strict=True)
        ]
        err_lo = [
            v - (e["throughput_ci_low"] or v) if v is not None else 0 for e, v in zip(es, y, strict=True)
        ]
        fig.add_bar(
            name=f"{source} throughput", x=[e["topology"] for e in es], y=y,
            error_y={"type": "data", "array": err_hi, "arrayminus": err_lo},
        )  # fmt: skip
        fig.add_bar(name=f"{source} goodput", x=[e["topology"] for e in es], y=[e["goodput_rps"] for e in es])
    if not fig.data:
        return missing(fig.layout.title.text, "no requests or plan results in these runs")
    return fig


def cdf(bundle: Bundle, fn: Callable[[pd.DataFrame], np.ndarray], title: str, unit: str = "s") -> go.Figure:
    """Empirical CDF of a per-request metric, one line per topology (and source)."""
    fig = _fig(title, xaxis={"title": unit}, yaxis={"title": "fraction of requests", "range": [0, 1]})
    for label, _, df in _series(bundle):
        v = np.sort(fn(df)[np.isfinite(fn(df))])
        if len(v):
            y = np.arange(1, len(v) + 1) / len(v)
            x, y = _thin(v, y)
            fig.add_scatter(x=x, y=y, mode="lines", name=label)
    return fig if fig.data else missing(title, "no successful requests with this metric in these runs")


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


def latency_over_time(bundle: Bundle, bins: int = 40) -> go.Figure:
    """TTFT p50 (solid) and p90 (dotted) in time bins of the scheduled send."""
    title = "Latency over time (TTFT by scheduled send time)"
    fig = _fig(title, xaxis={"title": "scheduled send (s)"}, yaxis={"title": "TTFT (s)"})
    for label, _, df in _series(bundle):
        t, v = m.col(df, "scheduled_s"), m.ttft(df)
        keep = np.isfinite(t) & np.isfinite(v)
        if keep.sum() < 2:
            continue
        frame = pd.DataFrame({"bin": pd.cut(t[keep], bins), "v": v[keep]})
        g = frame.groupby("bin", observed=True)["v"]
        centers = [iv.mid for iv in g.median().index]
        fig.add_scatter(x=centers, y=g.median().to_numpy(), mode="lines", name=f"{label} p50")
        fig.add_scatter(x=centers, y=g.quantile(0.9).to_numpy(), mode="lines", name=f"{label} p90",
                        line={"dash": "dot"})  # fmt: skip
    return (
        _mark_link_events(fig, bundle) if fig.data else missing(title, "no successful requests in these runs")
    )


def _timeseries_columns(bundle: Bundle, words: tuple[str, ...]) -> Iterator[tuple[str, str, pd.DataFrame]]:
    multi = len(bundle.runs) > 1
    for run in bundle.runs:
        ts = run.timeseries
        if ts is None:
            continue
        cols = [c for c in ts.columns if c != "time_s" and any(w in c.lower() for w in words)
                and pd.api.types.is_numeric_dtype(ts[c])]  # fmt: skip
        for name, part in ts.groupby("topology", sort=True):
            for c in cols:
                yield f"{name}{f' ({run.source})' if multi else ''}: {c}", c, part.sort_values("time_s")


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
    """Link columns of timeseries.parquet; else cross-site KV egress rebuilt from the records."""
    title = "Link utilisation over time"
    fig = _fig(title, xaxis={"title": "time (s)"})
    columns = list(_timeseries_columns(bundle, ("link", "egress", "util", "gbps")))
    fractions = all("util" in c for _, c, _ in columns)
    fig.update_yaxes(title="utilisation (fraction of link rate)" if fractions else "Gbit/s (or as named)")
    for label, c, part in columns:
        x, y = _thin(part["time_s"].to_numpy(float), part[c].to_numpy(float))
        short = label.replace("link_utilisation ", "").replace("link_utilization ", "")
        fig.add_scatter(x=x, y=y, mode="lines", name=short)
    if not fig.data:
        fig.layout.title.text = f"{title}: cross-site KV egress from the records"
        fig.update_yaxes(title="Gbit/s")
        for label, _, df in _series(bundle):
            x, y = egress_from_records(df, step=max(m.duration(df) / 200, 1e-3) if len(df) else 1.0)
            if len(x) and y.any():
                x, y = _thin(x, y)
                fig.add_scatter(x=x, y=y, mode="lines", name=label)
    return (
        _mark_link_events(fig, bundle)
        if fig.data
        else missing(title, "no link time series and no cross-site KV transfers in these runs")
    )


def queue_depths(bundle: Bundle) -> go.Figure:
    """Queue columns of timeseries.parquet; else requests waiting for prefill, from the records."""
    title = "Queue depths over time"
    fig = _fig(title, xaxis={"title": "time (s)"}, yaxis={"title": "requests"})
    for label, c, part in _timeseries_columns(bundle, ("queue", "batch", "inflight", "in_flight")):
        x, y = _thin(part["time_s"].to_numpy(float), part[c].to_numpy(float))
        fig.add_scatter(x=x, y=y, mode="lines", name=label)
    if not fig.data:
        fig.layout.title.text = f"{title}: waiting for prefill, from the records"
        for label, _, df in _series(bundle):
            sched, start = m.col(df, "scheduled_s"), m.col(df, "prefill_start_s")
            keep = np.isfinite(sched) & np.isfinite(start)
            if not keep.any():
                continue
            times = np.concatenate([sched[keep], start[keep]])
            steps = np.concatenate([np.ones(keep.sum()), -np.ones(keep.sum())])
            order = np.argsort(times, kind="stable")
            x, y = _thin(times[order], np.cumsum(steps[order]))
            fig.add_scatter(x=x, y=y, mode="lines", line={"shape": "hv"}, name=label)
    return (
        fig if fig.data else missing(title, "no queue time series and no prefill start times in these runs")
    )


def breakdown_bars(bundle: Bundle) -> go.Figure:
    """Mean TTFT split into queue, prefill, exposed KV transfer and first token (means add up)."""
    title = "TTFT breakdown (mean seconds; the parts add up to mean TTFT)"
    fig = _fig(title, barmode="stack", yaxis={"title": "s"})
    labels, parts = [], {name: [] for name, _ in BREAKDOWN}
    for label, _, df in _series(bundle):
        vals = {name: fn(df) for name, fn in BREAKDOWN}
        if not any(np.isfinite(v).any() for v in vals.values()):
            continue
        labels.append(label)
        for name, v in vals.items():
            parts[name].append(float(np.nanmean(v)) if np.isfinite(v).any() else 0.0)
    if not labels:
        return missing(
            title, "no prefill/transfer timestamps in these runs (the endpoint did not report them)"
        )
    for name, ys in parts.items():
        fig.add_bar(name=name, x=labels, y=ys)
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
                label = f"{name} ({run.source} search): Λ_max {'–' if lam is None else f'{lam:.3g}'} req/s"
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
        ("throughput", throughput_bars(result)),
        ("ttft-cdf", cdf(bundle, m.ttft, "TTFT CDF (from the scheduled send)")),
        ("tpot-cdf", cdf(bundle, m.tpot, "TPOT CDF (excludes TTFT)")),
        ("latency-time", latency_over_time(bundle)),
        ("link", link_utilisation(bundle)),
        ("queues", queue_depths(bundle)),
        ("breakdown", breakdown_bars(bundle)),
        *((f"sweep-{k}", sweep(bundle, k)) for k in SWEEPS),
        ("attainment", attainment_vs_rate(result, bundle)),
    ]
