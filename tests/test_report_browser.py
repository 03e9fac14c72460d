"""The dashboard in real headless Chromium: every figure renders, the console stays clean, and at 1400
and 900 px wide no text covers other text and no legend names two traces alike.

Chromium is driven over the DevTools protocol (aiohttp's websocket client), which reports console
errors, uncaught exceptions and log entries as events; the page is loaded from a file:// URL with
the network disabled, so it must be truly self-contained. The layout check reads every text element's
bounding box from the rendered page (headings, Plotly titles, legend entries, axis titles, tick
labels, annotations, the stage selector and the toolbar) and fails on any two that overlap, on text
cut off at its figure's edge, and on a legend label repeated within a group.

``PRFAAS_REPORT=results/<run>/report.html`` checks that page instead of the synthetic one (e.g. a
``make bench`` report), and ``PRFAAS_SCREENSHOTS=DIR`` keeps the full-page screenshots
(``DIR/report-1400.png``, ``DIR/report-900.png``; docs/ holds a pair).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from synthetic_runs import (
    SyntheticTopology,
    write_synthetic_bench,
    write_synthetic_run,
    write_synthetic_server_metrics,
)

from harness.analysis import analyze, load_bundle
from harness.analysis.dashboard import write_report
from harness.analysis.figures import all_figures

pytestmark = pytest.mark.browser

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-port=0", "--remote-allow-origins=*",
)  # fmt: skip
RENDERED_JS = """(() => {
  const plots = [...document.querySelectorAll('.js-plotly-plot')];
  return {ready: document.readyState === 'complete', plots: plots.length, rendered: plots.filter(p => p.querySelector('.main-svg')).length,
          traces: plots.map(p => (p.data || []).length),
          texts: plots.map(p => p.querySelector('.annotation-text')?.textContent || '')};
})()"""
# Per figure: its box, every text element's box (page coordinates) and kind, and the legend's entries
# by group (a group's title entry carries ``groupTitle`` in its d3 datum).
LAYOUT_JS = """(() => {
  const box = el => { const r = el.getBoundingClientRect(); return [r.left + scrollX, r.top + scrollY, r.right + scrollX, r.bottom + scrollY]; };
  return [...document.querySelectorAll('.js-plotly-plot')].map(p => {
    const items = [];
    const add = (kind, el, text) => { const b = box(el); if (b[2] - b[0] > 0.5 && b[3] - b[1] > 0.5) items.push({kind, text: (text ?? el.textContent).trim(), box: b}); };
    const heading = p.closest('section')?.querySelector('h2');
    if (heading) add('heading', heading);
    p.querySelectorAll('text.gtitle').forEach(e => add('title', e));
    p.querySelectorAll('.legend .legendtext, .legend .legendtitletext').forEach(e => add('legend', e));
    p.querySelectorAll('.infolayer text').forEach(e => { if (/^[xy]\\d*title$/.test(e.getAttribute('class') || '')) add('axis title', e); });
    p.querySelectorAll('.xaxislayer-above text, .yaxislayer-above text').forEach(e => add('tick', e));
    p.querySelectorAll('.annotation').forEach(e => add('annotation', e));
    p.querySelectorAll('.updatemenu-header-group').forEach(e => add('selector', e));
    p.querySelectorAll('.modebar').forEach(e => add('toolbar', e, 'toolbar'));
    const legend = [...p.querySelectorAll('.legend .groups')].map(g => [...g.querySelectorAll('.traces')].map(
      t => ({text: t.querySelector('.legendtext')?.textContent || '', title: !!t.__data__?.[0]?.groupTitle})));
    return {id: p.id, box: box(p), items, legend};
  });
})()"""
WIDTHS = (1400, 900)
SLACK_PX = 1.0  # anti-aliasing: boxes that share an edge are not an overlap


class _Cdp:
    """A minimal DevTools client: numbered calls, and every event kept for inspection."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws, self.events, self._next, self._waiting = ws, [], 0, {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self._waiting:
                self._waiting.pop(data["id"]).set_result(data)
            elif "method" in data:
                self.events.append(data)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        fut = self._waiting[self._next] = asyncio.get_running_loop().create_future()
        await self.ws.send_json({"id": self._next, "method": method, "params": params})
        reply = await asyncio.wait_for(fut, 30)
        assert "error" not in reply, reply
        return reply.get("result", {})

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def console_errors(events: list[dict[str, Any]]) -> list[str]:
    """Console errors, uncaught exceptions and error-level log entries among CDP events."""
    out = []
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            out.append(d.get("exception", {}).get("description") or d.get("text", "exception"))
        elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif e["method"] == "Log.entryAdded" and p["entry"].get("level") == "error":
            out.append(p["entry"].get("text", ""))
    return out


def layout_problems(figures: list[dict[str, Any]]) -> list[str]:
    """Overlapping text elements (tick labels among themselves excepted: Plotly spaces those) and text
    cut off at its figure's edge, one line each."""
    out = []
    for fig in figures:
        for a, b in itertools.combinations(fig["items"], 2):
            if a["kind"] == b["kind"] == "tick":
                continue
            w = min(a["box"][2], b["box"][2]) - max(a["box"][0], b["box"][0])
            h = min(a["box"][3], b["box"][3]) - max(a["box"][1], b["box"][1])
            if w > SLACK_PX and h > SLACK_PX:
                out.append(
                    f"{fig['id']}: {a['kind']} {a['text'][:40]!r} overlaps {b['kind']} {b['text'][:40]!r}"
                )
        fx0, fy0, fx1, fy1 = fig["box"]
        for it in fig["items"]:
            x0, y0, x1, y1 = it["box"]
            if it["kind"] != "heading" and (
                x0 < fx0 - SLACK_PX or y0 < fy0 - SLACK_PX or x1 > fx1 + SLACK_PX or y1 > fy1 + SLACK_PX
            ):
                out.append(f"{fig['id']}: {it['kind']} {it['text'][:40]!r} is cut off at the figure's edge")
    return out


def duplicate_legend_labels(figures: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Per figure, the legend labels shown more than once; a label counts with its group's title, so
    "prfaas" under "replay" and under "paired simulate" are two labels."""
    out = {}
    for fig in figures:
        labels = []
        for group in fig["legend"]:
            title = next((e["text"] for e in group if e["title"]), "")
            labels += [f"{title}: {e['text']}" if title else e["text"] for e in group if not e["title"]]
        if dups := sorted({label for label in labels if labels.count(label) > 1}):
            out[fig["id"]] = dups
    return out


async def _load(
    chromium: str, page: Path, profile: Path, *, width: int = 1400, screenshot: Path | None = None
) -> tuple[dict[str, Any], list[str], list[dict[str, Any]]]:
    """Load ``page`` in a ``width``-pixel-wide window: (render state, console errors, layout of every
    figure); ``screenshot`` gets the whole page as PNG."""
    proc = subprocess.Popen(
        [chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):  # Chromium writes its port here once it listens
            if port_file.is_file() and port_file.read_text().strip():
                break
            assert proc.poll() is None, "chromium exited early"
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                target = next(t for t in await resp.json() if t["type"] == "page")
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                cdp = _Cdp(ws)
                try:
                    for domain in ("Runtime", "Log", "Page"):
                        await cdp.call(f"{domain}.enable")
                    await cdp.call(
                        "Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1,
                        mobile=False,
                    )  # fmt: skip
                    await cdp.call("Page.navigate", url=page.resolve().as_uri())
                    state: dict[str, Any] = {}
                    after_load = 0
                    for _ in range(300):  # until loaded, then until every plot has its SVG (or give up)
                        await asyncio.sleep(0.1)
                        r = await cdp.call("Runtime.evaluate", expression=RENDERED_JS, returnByValue=True)
                        state = r.get("result", {}).get("value") or {}
                        after_load += bool(state.get("ready"))
                        if after_load and (state["plots"] == state["rendered"] or after_load > 30):
                            break
                    await asyncio.sleep(0.3)  # let late errors (resize handlers...) arrive
                    r = await cdp.call("Runtime.evaluate", expression=LAYOUT_JS, returnByValue=True)
                    layout = r.get("result", {}).get("value") or []
                    if screenshot is not None:
                        r = await cdp.call("Runtime.evaluate", expression="document.documentElement.scrollHeight",
                                           returnByValue=True)  # fmt: skip
                        clip = {"x": 0, "y": 0, "width": width, "height": r["result"]["value"], "scale": 1}
                        shot = await cdp.call(
                            "Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip
                        )
                        screenshot.write_bytes(base64.b64decode(shot["data"]))
                    return state, console_errors(cdp.events), layout
                finally:
                    await cdp.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _report(tmp_path: Path, *, full: bool) -> tuple[Path, int]:
    """A synthetic report; ``full``: laid out like a ``make bench`` directory (plan, capacity search,
    paired simulate, replay), with a simulate rate sweep besides."""
    if full:
        topos = {
            "homogeneous": SyntheticTopology(rate_rps=2.0, prefill_s=4.0),
            "prfaas": SyntheticTopology(rate_rps=3.0, remote_share=0.5, fail_share=0.02),
            "naive": SyntheticTopology(rate_rps=2.4, remote_share=1.0),
        }
        write_synthetic_bench(tmp_path / "run", topos)
        write_synthetic_server_metrics(tmp_path / "run" / "rep")  # replay's /metrics scrapes
        sweep = {f"{n}@{r:g}rps": replace(t, rate_rps=r) for n, t in topos.items() for r in (1.0, 2.0)}
        write_synthetic_run(
            tmp_path / "run" / "sweep", sweep, n=40, source="simulate", seed=7, timeseries=False
        )
    else:  # records only, no server-side timings, no time series, no plan: figures must say so
        write_synthetic_run(
            tmp_path / "run", {"default": SyntheticTopology(prefill_s=0)}, n=30, timeseries=False
        )
    bundle = load_bundle([tmp_path / "run"])
    result = analyze(bundle, n_boot=200)
    out = write_report(bundle, result, tmp_path / "report.html")
    return out, len(all_figures(bundle, result))


def test_every_figure_renders_without_console_errors(chromium, tmp_path):
    page, n_figures = _report(tmp_path, full=True)
    state, errors, _ = asyncio.run(_load(chromium, page, tmp_path / "profile"))
    # issue 7's list (throughput, 2 CDFs, latency, link, queues, breakdown, 3 Λ_max) + attainment vs rate
    # + the servers' telemetry under the client's latency (issue 13)
    assert n_figures == 12
    assert state["plots"] == n_figures
    assert state["rendered"] == n_figures
    assert all(n > 0 for n in state["traces"]), state["traces"]  # every panel has data here
    assert errors == []


def test_missing_data_figures_say_so(chromium, tmp_path):
    page, n_figures = _report(tmp_path, full=False)
    state, errors, _ = asyncio.run(_load(chromium, page, tmp_path / "profile"))
    assert state["rendered"] == state["plots"] == n_figures
    assert sum("no plan_sweep_" in t for t in state["texts"]) == 3
    assert any("no server metrics" in t for t in state["texts"])
    assert any("no rate sweep" in t for t in state["texts"])
    assert errors == []


def test_checker_catches_a_broken_page(chromium, tmp_path):
    # The same harness must see a failing figure script and a console error, or the tests above prove nothing.
    page = tmp_path / "broken.html"
    page.write_text(
        '<html><body><div class="js-plotly-plot"></div>'
        '<script>console.error("figure failed"); Plotly.newPlot("x", []);</script></body></html>'
    )
    state, errors, _ = asyncio.run(_load(chromium, page, tmp_path / "profile"))
    assert state["rendered"] == 0 < state["plots"]
    assert any("figure failed" in e for e in errors)
    assert any("Plotly is not defined" in e for e in errors)


@pytest.mark.parametrize("width", WIDTHS)
def test_no_text_overlaps_and_every_legend_label_is_unique(chromium, tmp_path, width):
    env_page = os.environ.get("PRFAAS_REPORT")
    page = Path(env_page) if env_page else _report(tmp_path, full=True)[0]
    keep = os.environ.get("PRFAAS_SCREENSHOTS")
    shot = Path(keep) / f"report-{width}.png" if keep else tmp_path / f"report-{width}.png"
    state, errors, layout = asyncio.run(
        _load(chromium, page, tmp_path / "profile", width=width, screenshot=shot)
    )
    assert state["rendered"] == state["plots"] == len(layout) > 0 and errors == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    kinds = {it["kind"] for fig in layout for it in fig["items"]}
    assert {"legend", "axis title", "tick", "toolbar"} <= kinds and kinds & {"heading", "title"}  # seen
    assert layout_problems(layout) == []
    assert duplicate_legend_labels(layout) == {}


def test_layout_checker_catches_overlaps_cut_text_and_repeated_labels(chromium, tmp_path):
    # A figure laid out badly on purpose: a legend over the x-axis title (the old dashboard's layout),
    # a title under the toolbar, no room for the y-axis, and two traces named alike. The checker must
    # see each.
    import plotly.graph_objects as go

    fig = go.Figure(layout={"width": 500, "height": 300, "margin": {"l": 5, "r": 5, "t": 30, "b": 40},
                            "title": "a title long enough to run under the toolbar at this width ......",
                            "xaxis": {"title": "time (s)"}, "yaxis": {"title": "a y-axis title", "automargin": False},
                            "legend": {"orientation": "h", "y": -0.12}})  # fmt: skip
    fig.add_scatter(x=[0, 1], y=[0, 1], name="prfaas (simulate)")
    fig.add_scatter(x=[0, 1], y=[1, 0], name="prfaas (simulate)")
    page = tmp_path / "bad.html"
    page.write_text(fig.to_html(include_plotlyjs=True, config={"displayModeBar": True}))
    _, errors, layout = asyncio.run(_load(chromium, page, tmp_path / "profile", width=600))
    problems = layout_problems(layout)
    assert errors == []
    assert any("legend" in p and "overlaps axis title 'time (s)'" in p for p in problems), problems
    assert any("title" in p and "toolbar" in p for p in problems), problems
    assert any("tick '0.2' is cut off" in p for p in problems), problems  # no margin for the y-axis
    assert any("axis title 'a y-axis title' overlaps tick" in p for p in problems), problems
    assert duplicate_legend_labels(layout) == {layout[0]["id"]: ["prfaas (simulate)"]}


@pytest.mark.parametrize("width", WIDTHS)
def test_a_sweeps_heatmaps_render_without_overlaps(chromium, tmp_path, width):
    from click.testing import CliRunner
    from test_sweep import write_spec

    from harness.cli import main

    body = (  # plan and simulate: both heatmaps, the break-even table and the Pareto front
        'run = ["plan", "simulate"]\n[grid]\n"model.preset" = ["kimi-1t-hybrid", "minimax-m2.5"]\n'
        '"link.bandwidth_gbps" = [2, 10, 100]\n"simulate.requests" = [60]\nrate = [1.0]\n'
    )
    runner = CliRunner()
    swept = runner.invoke(main, ["sweep", str(write_spec(tmp_path, body)), "--out", str(tmp_path / "out")])
    assert swept.exit_code == 0, swept.output
    page = tmp_path / "sweep.html"
    assert runner.invoke(main, ["report", str(tmp_path / "out"), "-o", str(page)]).exit_code == 0
    state, errors, layout = asyncio.run(_load(chromium, page, tmp_path / "profile", width=width))
    assert state["rendered"] == state["plots"] == len(layout) == 3 and errors == []
    assert layout_problems(layout) == []
