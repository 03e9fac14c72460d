"""The dashboard in real headless Chromium: every figure renders and the console stays clean.

Chromium is driven over the DevTools protocol (aiohttp's websocket client), which reports console
errors, uncaught exceptions and log entries as events; the page is loaded from a file:// URL with
the network disabled, so it must be truly self-contained.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from synthetic_runs import (
    SyntheticTopology,
    write_synthetic_plan,
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


async def _load(chromium: str, page: Path, profile: Path) -> tuple[dict[str, Any], list[str]]:
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
                    return state, console_errors(cdp.events)
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
    if full:
        topos = {
            "homogeneous": SyntheticTopology(rate_rps=2.0, prefill_s=4.0),
            "prfaas": SyntheticTopology(rate_rps=3.0, remote_share=0.5, fail_share=0.02),
            "naive": SyntheticTopology(rate_rps=2.4, remote_share=1.0),
        }
        write_synthetic_run(tmp_path / "run" / "sim", topos, n=150)
        write_synthetic_run(tmp_path / "run" / "rep", topos, n=100, source="replay", seed=3, timeseries=False)
        write_synthetic_server_metrics(tmp_path / "run" / "rep")  # replay's /metrics scrapes
        sweep = {f"{n}@{r:g}rps": replace(t, rate_rps=r) for n, t in topos.items() for r in (1.0, 2.0)}
        write_synthetic_run(
            tmp_path / "run" / "sweep", sweep, n=40, source="simulate", seed=7, timeseries=False
        )
        write_synthetic_plan(tmp_path / "run")
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
    state, errors = asyncio.run(_load(chromium, page, tmp_path / "profile"))
    # issue 7's list (throughput, 2 CDFs, latency, link, queues, breakdown, 3 Λ_max) + attainment vs rate
    # + the servers' telemetry under the client's latency (issue 13)
    assert n_figures == 12
    assert state["plots"] == n_figures
    assert state["rendered"] == n_figures
    assert all(n > 0 for n in state["traces"]), state["traces"]  # every panel has data here
    assert errors == []


def test_missing_data_figures_say_so(chromium, tmp_path):
    page, n_figures = _report(tmp_path, full=False)
    state, errors = asyncio.run(_load(chromium, page, tmp_path / "profile"))
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
    state, errors = asyncio.run(_load(chromium, page, tmp_path / "profile"))
    assert state["rendered"] == 0 < state["plots"]
    assert any("figure failed" in e for e in errors)
    assert any("Plotly is not defined" in e for e in errors)
