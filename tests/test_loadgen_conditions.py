"""The conditions a replay records: CPU shares from /proc, its own process tree's CPU, and `complete`."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from threaded_server import ServerThread

from harness.loadgen import Endpoint, ReplayConfig, replay
from harness.loadgen.conditions import CpuSample, cpu_sample, cpu_shares, server_roots
from harness.loadgen.config import LoadSpec
from harness.loadgen.fakeserver import FakeServer
from harness.records import read_meta
from harness.traces.frame import Trace


def test_cpu_shares_are_the_hand_computed_fractions():
    before = CpuSample(total=1000, busy=400, steal=10, own=100)
    after = CpuSample(total=3000, busy=1800, steal=210, own=700)
    shares = cpu_shares(before, after)
    # 2000 jiffies: 200 stolen (10%); 1400 busy of which 600 ours, 800 others' (40%)
    assert shares["steal_share"] == 0.1 and shares["other_share"] == 0.4
    assert cpu_shares(before, before) is None and cpu_shares(None, after) is None


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
