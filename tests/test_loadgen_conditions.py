"""The conditions a replay records: CPU shares from /proc, its own process tree's CPU, and `complete`."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from threaded_server import ServerThread

from harness.loadgen import Endpoint, ReplayConfig, replay
from harness.loadgen.conditions import (
    CpuSample,
    ResetFailed,
    cpu_sample,
    cpu_shares,
    read_metrics,
    reset_server,
    server_roots,
)
from harness.loadgen.config import LoadSpec
from harness.loadgen.fakeserver import FakeServer
from harness.loadgen.plainhttp import fetch_text
from harness.records import read_meta
from harness.traces.frame import Trace


def test_cpu_shares_are_the_hand_computed_fractions():
    before = CpuSample(total=1000, busy=400, steal=10, own=100)
    after = CpuSample(total=3000, busy=1800, steal=210, own=700)
    shares = cpu_shares(before, after)
    # 2000 jiffies: 200 stolen (10%); 1400 busy of which 600 ours, 800 others' (40%)
    assert shares["steal_share"] == 0.1 and shares["other_share"] == 0.4
    assert cpu_shares(before, before) is None and cpu_shares(None, after) is None
    # 3 s on a CPU and 1 s waiting for one between the samples: a quarter of the wanted time waited.
    ns = CpuSample(total=1000, busy=400, steal=10, own=100, run_ns=5 * 10**9, wait_ns=2 * 10**9)
    later = CpuSample(total=3000, busy=1800, steal=210, own=700, run_ns=8 * 10**9, wait_ns=3 * 10**9)
    assert cpu_shares(ns, later)["wait_share"] == 0.25
    assert shares["wait_share"] is None  # no schedstat figures: unknown, not 0


def test_two_busy_children_sharing_one_cpu_each_wait_about_half_the_time():
    # Pinned to one CPU, two spinning children take turns: each waits while the other runs, so the
    # tree's wait share is at least about a half, and more when other work shares that CPU too.
    cpu = min(os.sched_getaffinity(0))
    spin = f"import os, time\nos.sched_setaffinity(0, {{{cpu}}})\nt = time.monotonic()\nwhile time.monotonic() - t < 3: pass\n"
    children = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
    try:
        time.sleep(0.3)  # both pinned and spinning
        before = cpu_sample()
        time.sleep(1.0)
        after = cpu_sample()  # both still alive: an ended thread's schedstat is gone
    finally:
        for c in children:
            c.kill()
            c.wait()
    shares = cpu_shares(before, after)
    assert shares is not None and 0.4 <= shares["wait_share"] <= 1.0, shares


def test_a_reaped_child_s_cpu_counts_as_this_run_s_own():
    # The child burns 0.3 s of its own CPU time (however long that takes on a busy machine), then exits
    # and is reaped: its jiffies move to this process's cutime, which the own share must include.
    before = cpu_sample()
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    subprocess.run([sys.executable, "-c", burn], check=True)
    after = cpu_sample()
    assert before is not None and after is not None
    ticks = os.sysconf("SC_CLK_TCK")
    assert after.own - before.own >= 0.25 * ticks


def test_server_roots_keep_scheme_host_and_port_once():
    urls = ["http://127.0.0.1:8000/prfaas/v1", "http://127.0.0.1:8000/naive/v1", None, "https://h/v1"]
    assert server_roots(urls) == ["http://127.0.0.1:8000", "https://h"]


def test_a_closed_loop_bounded_by_duration_is_complete_when_its_time_is_up(tmp_path):
    trace = Trace(
        arrival_s=np.zeros(4),
        input_tokens=np.full(4, 8),
        output_tokens=np.full(4, 2),
        hash_values=np.arange(4, dtype=np.int64),
        hash_offsets=np.arange(5, dtype=np.int64),
    )
    load = LoadSpec(rate_rps=float("inf"), concurrency=2, duration_s=0.3)
    with ServerThread(FakeServer()) as srv:
        cfg = ReplayConfig(endpoints=(Endpoint(name="t", url=srv.url, model="m"),), load=load, progress=False)
        result = replay(trace, cfg, tmp_path, quiet=True)
    meta = read_meta(tmp_path)
    assert result.complete and meta["complete"] is True and meta["summaries"]["t"]["scheduled"] is None
    assert meta["summaries"]["t"]["requests"] > 0


class _Engine:
    """A server with one engine's reset path and its prefix-cache counter (real HTTP, in a thread)."""

    def __init__(self, reset_path: str | None, metrics: str, busy: int = 0) -> None:
        self.reset_path, self.metrics_text, self.resets = reset_path, metrics, 0
        self.busy, self.refused = busy, 0  # refuse this many resets first, as SGLang does while busy

    async def reset(self, request):
        from aiohttp import web

        if self.refused < self.busy:
            self.refused += 1
            return web.Response(status=400, text="not flushed: requests are running")
        self.resets += 1
        return web.json_response({"ok": True})

    async def metrics(self, request):
        from aiohttp import web

        return web.Response(text=self.metrics_text)

    def app(self):
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        if self.reset_path:
            app.router.add_post(self.reset_path, self.reset)
        return app


VLLM_METRICS = (
    "# TYPE vllm:prefix_cache_hits_total counter\n"
    'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 1536.0\n'
    'vllm:prefix_cache_queries_total{engine="0",model_name="m"} 4096.0\n'
)


@pytest.mark.parametrize("path", ["/reset_prefix_cache", "/flush_cache"])
def test_vllm_and_sglang_resets_are_found_and_cache_hits_read(path):
    engine = _Engine(path, VLLM_METRICS)
    with ServerThread(engine) as srv:
        assert reset_server(srv.url) == path
        metrics = read_metrics(srv.url)
    assert engine.resets == 1
    assert metrics.cache_hits == 1536.0 and metrics.loop_lag_p99_s == {}


def test_a_server_busy_with_the_last_run_is_asked_again_until_it_resets():
    # Two refusals (SGLang's 400 while a request is still in its scheduler), then it resets.
    engine = _Engine("/flush_cache", "", busy=2)
    with ServerThread(engine) as srv:
        assert reset_server(srv.url) == "/flush_cache"
    assert engine.refused == 2 and engine.resets == 1


def test_a_server_that_keeps_refusing_is_a_reset_failure_naming_path_and_status():
    engine = _Engine("/flush_cache", "", busy=10**6)
    with ServerThread(engine) as srv, pytest.raises(ResetFailed, match=r"/flush_cache answered HTTP 400"):
        reset_server(srv.url, busy_wait_s=0.5)
    assert engine.resets == 0 and engine.refused >= 2


def test_a_server_without_a_reset_is_a_reset_failure_naming_what_was_tried():
    with ServerThread(_Engine(None, "")) as srv, pytest.raises(ResetFailed, match="no cache reset"):
        reset_server(srv.url)


def test_fetch_text_gives_the_body_an_error_status_or_why_nothing_answered():
    engine = _Engine("/flush_cache", VLLM_METRICS, busy=1)
    with ServerThread(engine) as srv:
        assert fetch_text(srv.url + "/metrics") == (200, VLLM_METRICS)
        assert fetch_text(srv.url + "/flush_cache", method="POST") == (400, "")  # refused, no body kept
        assert fetch_text(srv.url + "/nowhere") == (404, "")
        url = srv.url
    status, why = fetch_text(url + "/metrics", timeout_s=2)  # the server is gone: the port refuses
    assert status == 0 and "refused" in why.lower(), why
    assert fetch_text("not a url")[0] == 0
