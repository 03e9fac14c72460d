"""A sweep's figures (``prfaas-bench report SWEEP_DIR``): heatmaps of Λ_max and of the PrfaaS gain over
two of the sweep's axes, from its table (``OUT/sweep.parquet``, ``harness.sweep.store``).

Each cell is the mean over every other axis (seeds, say) of the points that finished; how many points
it averages and how many failed are on the cell, so a blank cell is never a silent gap.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from harness.errors import InputError

_LABELS = ("key", "point")  # the row's own columns before its axes; "status" ends them
# What a heatmap shows, best first within each kind: simulate's Λ_max search, else the planner's.
FIGURES = (
    ("Λ_max of PrfaaS (req/s)", ("max_rate.prfaas.lambda_max", "plan.prfaas.lambda_max")),
    ("PrfaaS gain over homogeneous (Λ_max ratio)",
     ("max_rate.prfaas_vs_homogeneous", "plan.prfaas_vs_homogeneous")),
)  # fmt: skip


@dataclass(frozen=True)
class Heatmap:
    """``value`` over ``x`` × ``y``: ``z[i][j]`` is the mean at ``ys[i]``, ``xs[j]`` (None: no point
    finished there), from ``count[i][j]`` points; ``failed[i][j]`` failed."""

    x: str
    y: str
    value: str
    xs: list[Any]
    ys: list[Any]
    z: list[list[float | None]]
    count: list[list[int]]
    failed: list[list[int]]


def sweep_axes(frame: pd.DataFrame) -> list[str]:
    """The axes a sweep varied: its label columns (between ``point`` and ``status``) with more than
    one value."""
    columns = list(frame.columns)
    labels = columns[len(_LABELS) : columns.index("status")] if "status" in columns else []
    return [c for c in labels if frame[c].astype(str).nunique() > 1]


def heatmap(frame: pd.DataFrame, x: str, y: str, value: str) -> Heatmap:
    """The mean of ``value`` per (``y``, ``x``) over the rows whose status is ok (see ``Heatmap``)."""
    for name in (x, y, value):
        if name not in frame.columns:
            raise InputError(
                f"no column {name!r} in the sweep (columns: {', '.join(map(str, frame.columns))})"
            )
    xs, ys = _ordered(frame[x]), _ordered(frame[y])
    ok = frame["status"] == "ok"
    z: list[list[float | None]] = []
    count: list[list[int]] = []
    failed: list[list[int]] = []
    for yv in ys:
        z_row, n_row, f_row = [], [], []
        for xv in xs:
            cell = (frame[x] == xv) & (frame[y] == yv)
            values = pd.to_numeric(frame.loc[cell & ok, value], errors="coerce").dropna()
            z_row.append(float(values.mean()) if len(values) else None)
            n_row.append(len(values))
            f_row.append(int((cell & ~ok).sum()))
        z.append(z_row)
        count.append(n_row)
        failed.append(f_row)
    return Heatmap(x, y, value, xs, ys, z, count, failed)


def _ordered(column: pd.Series) -> list[Any]:
    """An axis's values in order (numbers by size, otherwise as first met)."""
    values = list(dict.fromkeys(column.dropna().tolist()))
    return sorted(values) if all(isinstance(v, int | float) for v in values) else values


def figure(hm: Heatmap, title: str) -> go.Figure:
    """The heatmap as a Plotly figure: each cell shows its value, how many points it averages, failures."""
    text = [
        [
            ("–" if v is None else f"{v:.3g}")
            + (f" (n={n})" if n != 1 else "")
            + (f", {f} failed" if f else "")
            for v, n, f in zip(z_row, n_row, f_row, strict=True)
        ]
        for z_row, n_row, f_row in zip(hm.z, hm.count, hm.failed, strict=True)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=hm.z, x=[str(v) for v in hm.xs], y=[str(v) for v in hm.ys], text=text,
            texttemplate="%{text}", colorscale="Viridis",
            colorbar={"title": {"text": hm.value, "side": "right"}},
            hovertemplate=f"{hm.x}=%{{x}}<br>{hm.y}=%{{y}}<br>{hm.value}=%{{text}}<extra></extra>",
        ),
        layout={
            "template": "plotly_white", "height": 420, "title": {"text": title},
            "margin": {"l": 110, "r": 20, "t": 40, "b": 60},
            "xaxis": {"title": {"text": hm.x}, "type": "category"},
            "yaxis": {"title": {"text": hm.y}, "type": "category"},
        },
    )  # fmt: skip
    return fig


def sweep_figures(frame: pd.DataFrame, axes: Sequence[str] | None = None) -> list[tuple[str, go.Figure]]:
    """(anchor, figure) for each of ``FIGURES`` the sweep has a column for, over ``axes`` (x, y; default
    the sweep's first two varied axes, seeds last)."""
    axes = default_axes(frame) if axes is None else axes
    if len(axes) != 2:
        raise InputError(
            f"a heatmap needs two axes that the sweep varies; it varies {sweep_axes(frame) or 'none'}"
        )
    out = []
    for i, (title, candidates) in enumerate(FIGURES):
        value = next((c for c in candidates if c in frame.columns), None)
        if value is not None:
            out.append((f"sweep-{i}", figure(heatmap(frame, axes[0], axes[1], value), title)))
    points = pareto(frame)
    if len(points):
        out.append(("sweep-pareto", pareto_figure(points)))
    return out


def default_axes(frame: pd.DataFrame) -> list[str]:
    """The sweep's first two varied axes, seeds last."""
    return sorted(sweep_axes(frame), key=lambda a: a == "seed")[:2]


BANDWIDTH = "link.bandwidth_gbps"


@dataclass(frozen=True)
class BreakEven:
    """Where a mean gain first reaches 1 along the swept bandwidths: ``gbps`` interpolated linearly
    between the two bandwidths either side (``bound = "between"``); the lowest swept bandwidth when the
    gain is already ≥ 1 there (``"at or below"``); None when it never reaches 1 (``"above"``)."""

    gbps: float | None
    bound: str

    def text(self) -> str:
        if self.gbps is None:
            return "above the swept range"
        return f"{'≤ ' if self.bound == 'at or below' else ''}{self.gbps:.3g} Gbps"


def breakeven(hm: Heatmap) -> dict[Any, BreakEven]:
    """Per row of a heatmap whose x axis is the link bandwidth (e.g. per model): where its gain reaches 1."""
    if hm.x != BANDWIDTH:
        raise InputError(f"break-even needs {BANDWIDTH} as the x axis, got {hm.x}")
    out = {}
    for y, row in zip(hm.ys, hm.z, strict=True):
        points = [(float(x), z) for x, z in zip(hm.xs, row, strict=True) if z is not None]
        found = BreakEven(None, "above")
        for i, (x1, z1) in enumerate(points):
            if z1 >= 1:
                if i == 0:
                    found = BreakEven(x1, "at or below")
                else:
                    x0, z0 = points[i - 1]
                    found = BreakEven(x0 + (1 - z0) * (x1 - x0) / (z1 - z0), "between")
                break
        out[y] = found
    return out


def breakeven_table(frame: pd.DataFrame, axes: Sequence[str]) -> list[tuple[str, str]]:
    """(value of the other axis, break-even text) when one of ``axes`` is the link bandwidth and the
    sweep has a gain column; else nothing."""
    value = next((c for c in FIGURES[1][1] if c in frame.columns), None)
    if BANDWIDTH not in axes or value is None:
        return []
    other = next(a for a in axes if a != BANDWIDTH)
    return [(str(y), b.text()) for y, b in breakeven(heatmap(frame, BANDWIDTH, other, value)).items()]


_SIMULATED = re.compile(r"^(max_rate|simulate)\.(.+)\.ttft_p90_s$")


def pareto(frame: pd.DataFrame) -> pd.DataFrame:
    """Throughput per GPU-dollar against TTFT p90, one row per finished point and topology: columns
    point, topology, ttft_p90_s, requests_per_dollar (throughput × 3600 / the plan's cost per hour) and
    front (no other row has both a lower or equal TTFT p90 and more requests per dollar). From
    ``max_rate.*`` where the sweep ran the Λ_max search (its figures at Λ_max), else ``simulate.*``;
    the cost needs ``plan``. Empty when the sweep lacks either."""
    found = [m.groups() for c in frame.columns if (m := _SIMULATED.match(str(c)))]
    sources = [src for src in ("max_rate", "simulate") if any(s == src for s, _ in found)]
    rows = []
    ok = frame[frame["status"] == "ok"]
    for topo in dict.fromkeys(t for s, t in found if sources and s == sources[0]):
        cost = f"plan.{topo}.cost_per_hour"
        if cost not in frame.columns:
            continue
        for _, r in ok.iterrows():
            ttft, thr = r[f"{sources[0]}.{topo}.ttft_p90_s"], r[f"{sources[0]}.{topo}.throughput_rps"]
            if pd.notna(ttft) and pd.notna(thr) and r[cost] > 0:
                rows.append({"point": r["point"], "topology": topo, "ttft_p90_s": float(ttft),
                             "requests_per_dollar": float(thr) * 3600 / float(r[cost])})  # fmt: skip
    out = pd.DataFrame(rows, columns=["point", "topology", "ttft_p90_s", "requests_per_dollar"])
    best = -math.inf
    front = []
    for _, r in out.sort_values(["ttft_p90_s", "requests_per_dollar"], ascending=[True, False]).iterrows():
        front.append((r.name, r["requests_per_dollar"] > best))
        best = max(best, r["requests_per_dollar"])
    return out.assign(front=pd.Series(dict(front), dtype=bool)) if rows else out.assign(front=False)


def pareto_figure(points: pd.DataFrame) -> go.Figure:
    """Every (point, topology) as a dot, the front as a line through its dots."""
    fig = go.Figure(layout={
        "template": "plotly_white", "height": 420, "margin": {"l": 70, "r": 20, "t": 40, "b": 60},
        "title": {"text": "Throughput per GPU-dollar against TTFT p90 (Pareto front)"},
        "xaxis": {"title": {"text": "TTFT p90 (s)"}}, "yaxis": {"title": {"text": "requests per GPU-dollar"}},
    })  # fmt: skip
    for topo, group in points.groupby("topology", sort=False):
        fig.add_scatter(x=group["ttft_p90_s"], y=group["requests_per_dollar"], mode="markers", name=str(topo),
                        text=[f"point {p}" for p in group["point"]])  # fmt: skip
    front = points[points["front"]].sort_values("ttft_p90_s")
    fig.add_scatter(x=front["ttft_p90_s"], y=front["requests_per_dollar"], mode="lines", name="Pareto front",
                    line={"color": "#111", "dash": "dot"})  # fmt: skip
    return fig


def describe(frame: pd.DataFrame) -> str:
    """One HTML line: points, how many failed, the axes."""
    failed = int((frame["status"] == "failed").sum())
    axes = ", ".join(f"{a} ({frame[a].astype(str).nunique()})" for a in sweep_axes(frame))
    return html.escape(f"{len(frame)} points, {failed} failed; axes: {axes or 'none'}")
