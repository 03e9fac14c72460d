"""Fault classes, against a real aiohttp server on 127.0.0.1 that misbehaves on demand."""

from __future__ import annotations

import asyncio
import math
import socket
import time

import numpy as np
import pytest
from refused import refused_port
from threaded_server import ServerThread

from harness.loadgen import Endpoint, ReplayConfig, Timeouts, replay
from harness.loadgen.config import LoadSpec
from harness.loadgen.driver import WorkerSetup, drive
from harness.loadgen.fakeserver import FakeServer
from harness.loadgen.schedule import build_schedule
from harness.records import read_meta, read_records
from harness.traces.frame import Trace
from harness.traces.prompts import PromptSynth


def _trace(n: int, gap_s: float = 0.01, n_in: int = 32, n_out: int = 8) -> Trace:
    return Trace(
        arrival_s=np.arange(n) * gap_s,
        input_tokens=np.full(n, n_in),
        output_tokens=np.full(n, n_out),
        hash_values=np.arange(n, dtype=np.int64),
        hash_offsets=np.arange(n + 1, dtype=np.int64),
    )


def _run(url: str, out, *, n=4, timeouts: Timeouts | None = None, api="completions", **trace_kw):
    cfg = ReplayConfig(
        endpoints=(Endpoint(name="t", url=url, model="m", api=api),),
        timeouts=timeouts or Timeouts(),
        progress=False,
    )
    result = replay(_trace(n, **trace_kw), cfg, out, quiet=True)
    return result, read_records(out)


FAST = Timeouts(connect_s=0.5, first_token_s=0.5, total_s=2.0)
# For runs whose good requests must succeed: a stalled request still times out (the fake server
# stalls for an hour), and a good one has room on a machine busy enough to delay it by seconds.
ROOMY = Timeouts(connect_s=5.0, first_token_s=5.0, total_s=20.0)


@pytest.mark.parametrize(
    ("mode", "error_class"),
    [
        ("http_500", "http_500"),
        ("http_429", "http_429"),
        ("reset", "connection_reset"),
        ("disconnect", "stream_disconnect"),
        ("no_done", "stream_disconnect"),
        ("garbage", "malformed_sse"),
        ("error_event", "stream_error"),
        ("stall", "first_token_timeout"),
        ("stall_body", "first_token_timeout"),
    ],
)
def test_each_fault_is_recorded_with_its_class_and_the_run_goes_on(tmp_path, mode, error_class):
    # Odd requests misbehave, even ones are fine: the run must carry on past every failure.
    server = FakeServer(mode_for=lambda i: mode if i % 2 else "ok", itl_s=0.001)
    with ServerThread(server) as srv:
        result, df = _run(srv.url, tmp_path, n=6, timeouts=ROOMY, gap_s=0.05)
    df = df.sort_values("trace_row")
    assert len(df) == 6
    bad = df[df.status == "error"]
    assert len(bad) == 3 and set(bad.error_class) == {error_class}
    ok = df[df.status == "ok"]
    assert len(ok) == 3 and (ok.output_tokens_received == 8).all()
    assert result.summaries["t"]["errors"] == {error_class: 3}
    assert read_meta(tmp_path)["complete"] is True


def test_total_timeout_after_first_token(tmp_path):
    server = FakeServer(itl_s=0.2)  # 8 tokens x 0.2 s > 0.5 s total
    with ServerThread(server) as srv:
        _, df = _run(srv.url, tmp_path, n=1, timeouts=Timeouts(connect_s=1, first_token_s=5, total_s=0.5))
    rec = df.iloc[0]
    assert rec.error_class == "total_timeout"
    assert rec.first_token_s is not None and 1 <= rec.output_tokens_received < 8


def test_connect_error_when_nothing_listens(tmp_path):
    with refused_port() as port:
        _, df = _run(f"http://127.0.0.1:{port}", tmp_path, n=2, timeouts=FAST)
    assert set(df.error_class) == {"connect_error"}


def test_connect_timeout_when_the_accept_queue_is_full(tmp_path):
    # A listener that never accepts: once its backlog is full the kernel drops further SYNs, so a
    # connect hangs — a real connect timeout on loopback.
    with socket.socket() as lsn:
        lsn.bind(("127.0.0.1", 0))
        lsn.listen(0)
        port = lsn.getsockname()[1]
        fillers = []
        for _ in range(4):  # fill the accept queue
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            fillers.append(c)
        try:
            _, df = _run(f"http://127.0.0.1:{port}", tmp_path, n=1, timeouts=Timeouts(connect_s=0.3))
        finally:
            for c in fillers:
                c.close()
    assert df.iloc[0].error_class == "connect_timeout"


@pytest.mark.parametrize("load", [LoadSpec(), LoadSpec(arrival="poisson", rate_rps=math.inf, concurrency=2)])
def test_a_sink_that_fails_stops_the_run_with_its_error(load):
    # A record the sink cannot keep (say a full disk) must end the run loudly, open loop or closed.
    trace = _trace(4)
    kept = []

    def sink(rec) -> None:
        if kept:
            raise OSError(28, "No space left on device")
        kept.append(rec)

    with ServerThread(FakeServer(itl_s=0.001)) as srv:
        ep = Endpoint(name="t", url=srv.url, model="m")
        setup = WorkerSetup(
            run_id="r", t0=time.monotonic(), wall_offset_s=time.time(), timeouts=FAST,
            api_key=None, extra_body={}, seed=0,
        )  # fmt: skip
        synth = PromptSynth(block_tokens=trace.block_tokens, salt=0)
        with pytest.raises(OSError, match="No space left"):
            asyncio.run(drive(ep, trace, build_schedule(trace, load), setup, sink, synth))
    assert len(kept) == 1
