"""``replay --ray-address ADDR --workers N``: load workers as Ray actors, on a one-node Ray cluster on
127.0.0.1 that this module starts once (``ray start``) and stops after its tests.

Independent expectations: the trace file's own rows and prefix groups, the fake server's count of what
arrived, one host's one clock (a measured offset must lie within its bound of zero), and the cluster's
free CPUs after each run (actors and placement group gone).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import need
from raynodes import free_ports, loopback, node_argv, ray_env, ray_node
from test_loadgen_cli import interrupted
from test_sessions_replay import assert_dependency, conversations
from threaded_server import ServerThread

from harness.analysis import metrics as m
from harness.cli import main
from harness.loadgen.fakeserver import FakeServer, fake_server_process
from harness.records import read_meta, read_records
from harness.traces.native import write_native
from harness.traces.sessions import session_plan

pytestmark = pytest.mark.slow

GROUPS = (13, 11, 7)  # requests per prefix group: only whole groups add up to a worker's count


def write_trace(path: Path, groups=GROUPS, gap_ms: int = 20, n_out: int = 4) -> list[int]:
    """A Mooncake trace whose rows fall in prefix groups of the given sizes (interleaved in time);
    returns each row's group."""
    order = sorted((i * len(groups) + g, g) for g, size in enumerate(groups) for i in range(size))
    with open(path, "w") as fh:
        for row, (_, g) in enumerate(order):
            blocks = [1000 * g, 1000 * g + 1 + row]  # shared first block, then the row's own
            fh.write(json.dumps({"timestamp": row * gap_ms, "input_length": 700, "output_length": n_out,
                                 "hash_ids": blocks}) + "\n")  # fmt: skip
    return [g for _, g in order]


def replay_cli(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness", "replay", "--model", "m", "--quiet", *args],
        capture_output=True, text=True, env=env, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def cluster():
    """(address, env) of a two-CPU, one-node Ray on 127.0.0.1 shared by this module's tests."""
    need(importlib.util.find_spec("ray") is not None, "Ray is not installed (pip install -e '.[ray]')")
    temp = Path(tempfile.mkdtemp(prefix="pfbrr-", dir="/tmp"))  # Ray's socket paths must stay short
    env = ray_env(single_host=True)
    ports = free_ports(5)
    try:
        with ray_node(loopback, node_argv("127.0.0.1", ports, cpus=2, temp=temp), env, temp / "head.log"):
            yield f"127.0.0.1:{ports[0]}", env
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def free_cpus(address: str, env: dict) -> float:
    """The cluster's CPUs not held by any actor or placement group, once they are all back (60 s)."""
    code = f"""
import time
import ray
ray.init(address={address!r}, log_to_driver=False)
end = time.monotonic() + 60
while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] and time.monotonic() < end:
    time.sleep(0.5)
print(ray.available_resources().get("CPU", 0))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return float(done.stdout.strip().splitlines()[-1])


def test_two_ray_workers_send_every_row_once_keep_groups_whole_and_pass_analyze(tmp_path, cluster):
    address, env = cluster
    write_trace(tmp_path / "t.jsonl")
    out = tmp_path / "run"
    with ServerThread(FakeServer()) as srv:
        done = replay_cli("--endpoint", srv.url, "--trace", str(tmp_path / "t.jsonl"), "--workers", "2",
                          "--ray-address", address, "--out", str(out), env=env)  # fmt: skip
        arrived = srv.server.requests
    assert done.returncode == 0, done.stderr
    # one node with a CPU, two workers: said in one line, and they share it
    assert "warning: 2 Ray workers on 1 node(s) with a CPU: some share a node" in done.stderr
    df = read_records(out)
    assert sorted(df.trace_row) == list(range(sum(GROUPS))) == list(range(arrived))
    assert df.request_id.is_unique and (df.status == "ok").all()
    meta = read_meta(out)
    assert meta["complete"] is True and meta["config"]["ray"]["address"] == address
    ray = meta["summaries"]["default"]["ray"]
    assert ray["strategy"] == "SPREAD" and len(ray["workers"]) == 2
    workers = ray["workers"]
    # whole groups: the greedy split of 13, 11, 7 is {13} and {11 + 7}; a split group would show here
    assert sorted(w["requests"] for w in workers) == [13, 18]
    assert sum(w["scheduled"] for w in workers) == len(df)
    for w in workers:
        assert w["node_ip"] == "127.0.0.1" and w["failed"] == 0
        assert w["send_lag_s"]["p50"] is not None and w["send_lag_s"]["p99"] >= w["send_lag_s"]["p50"]
        assert w["requested_rps"] > 0 and w["achieved_rps"] > 0
        clock = w["clock"]
        assert clock["round_trips"] == 16 and 0 < clock["bound_s"] <= ray["max_clock_bound_s"]
        assert abs(clock["offset_s"]) <= clock["bound_s"]  # one host, one clock: the truth is zero
    assert len({w["pid"] for w in workers}) == 2
    res = CliRunner().invoke(main, ["analyze", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["topologies"]["default"]["requests"] == sum(GROUPS)
    assert free_cpus(address, env) == 2  # actors killed, placement group removed


def test_a_clock_that_cannot_be_bounded_is_refused_before_anything_is_written(tmp_path, cluster):
    address, env = cluster
    write_trace(tmp_path / "t.jsonl")
    with ServerThread(FakeServer()) as srv:
        done = replay_cli("--endpoint", srv.url, "--trace", str(tmp_path / "t.jsonl"), "--workers", "2",
                          "--ray-address", address, "--max-clock-bound-ms", "0.000001",
                          "--out", str(tmp_path / "run"), env=env)  # fmt: skip
        arrived = srv.server.requests
    assert done.returncode == 2, done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "clock offset cannot be bounded below 1e-06 ms" in error[0], done.stderr
    assert "Traceback" not in done.stderr and arrived == 0 and not (tmp_path / "run").exists()
    assert free_cpus(address, env) == 2


def test_ctrl_c_stops_the_actors_and_keeps_every_record_they_took(tmp_path, cluster):
    address, env = cluster
    write_trace(tmp_path / "t.jsonl", groups=(40, 40), gap_ms=250, n_out=40)  # 20 s of arrivals
    out = tmp_path / "run"
    with ServerThread(FakeServer(itl_s=0.05)) as srv:  # 2 s per request: some in flight at Ctrl-C
        cmd = [sys.executable, "-m", "harness", "replay", "--endpoint", srv.url, "--model", "m", "--quiet",
               "--trace", str(tmp_path / "t.jsonl"), "--workers", "2", "--ray-address", address,
               "--out", str(out)]  # fmt: skip
        code, stderr = interrupted(cmd, out, env, timeout_s=300)  # placing actors takes a while
    assert code == 130, stderr
    meta = read_meta(out)
    assert meta["complete"] is False and meta["incomplete_reason"] == "interrupted"
    df = read_records(out)
    workers = meta["summaries"]["default"]["ray"]["workers"]
    assert len(df) == sum(w["requests"] for w in workers) < 80 and df.request_id.is_unique
    assert "cancelled" in set(df.error_class.dropna())  # in flight at Ctrl-C: recorded, not dropped
    assert free_cpus(address, env) == 2


def test_session_mode_keeps_each_session_on_one_worker_and_its_turns_in_order(tmp_path, cluster):
    address, env = cluster
    # 24 turns 20 ms apart while a request takes > 80 ms: open loop would overlap a session's turns
    trace = conversations(24, seed=2, rate=50.0, first=40, user=7, output=6)
    plan = session_plan(trace)
    path = write_native(trace, tmp_path / "conv.parquet")
    with fake_server_process("--ttft-ms", "60", "--itl-ms", "4") as url:
        done = replay_cli("--endpoint", url, "--trace", str(path), "--sessions", "--workers", "2",
                          "--ray-address", address, "--out", str(tmp_path / "run"), env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    df = read_records(tmp_path / "run")
    assert sorted(df.trace_row) == list(range(len(trace))) and m.ok_mask(df).all()
    # a session split across workers would wait for ever for a predecessor sent elsewhere; kept whole,
    # no later turn went out before its predecessor's end (on the one worker's clock) plus its think time
    assert_dependency(df, plan.think_s)
    workers = read_meta(tmp_path / "run")["summaries"]["default"]["ray"]["workers"]
    assert all(w["requests"] > 0 for w in workers) and sum(w["requests"] for w in workers) == len(trace)
    assert free_cpus(address, env) == 2


def test_ray_missing_or_unreachable_is_one_line(tmp_path):
    trace = tmp_path / "t.jsonl"
    write_trace(trace)
    out = tmp_path / "run"
    code = (
        "import sys\nsys.modules['ray'] = None\nfrom harness.cli import main\n"
        f"main(['replay', '--endpoint', 'http://127.0.0.1:9', '--model', 'm', '--trace', {str(trace)!r}, "
        f"'--workers', '2', '--ray-address', 'local', '--out', {str(out)!r}])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr == "error: --ray-address needs Ray, which is not installed: pip install -e '.[ray]'\n"
    need(importlib.util.find_spec("ray") is not None, "Ray is not installed (pip install -e '.[ray]')")
    (port,) = free_ports(1)
    with ServerThread(FakeServer()) as srv:
        done = replay_cli("--endpoint", srv.url, "--trace", str(trace), "--workers", "2", "--ray-address",
                          f"127.0.0.1:{port}", "--out", str(out), env=dict(os.environ))  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == f"error: cannot reach Ray at 127.0.0.1:{port}: Connection refused\n"
    assert not out.exists()
