"""A Ray cluster of two nodes on one machine, each in a network namespace of its own built by the
harness's own network code, and a fake OpenAI server in a third; the replay's driver runs in the head's
namespace. Every address is one of those namespaces' (nothing on the host's network).

    head (Ray head + driver) ── node (Ray worker node)
         ╲                     ╱
          server (fake server, in this test's process)

A sweep runs there too, and gives the local pool's rows. Root only (CI runs it and fails if it cannot). Independent evidence: the server sees each request's
client address, so the records' groups can be checked against where their requests really came from.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import need
from conftest import net_prefix as P
from raynodes import node_argv, ray_env, ray_node
from test_replay_ray import GROUPS, write_trace
from test_sweep import sweep_cli, write_spec
from test_sweep_ray import rows
from threaded_server import ServerThread

from harness.cli import main
from harness.loadgen.fakeserver import FakeServer
from harness.network import Network, kernel, parse_network, probe
from harness.records import read_meta, read_records

pytestmark = [pytest.mark.root, pytest.mark.slow]

TABLE = {
    "sites": ["head", "node", "server"],
    "links": [
        {"between": ["head", "node"], "rate_mbit": 1000},
        {"between": ["head", "server"], "rate_mbit": 1000},
        {"between": ["node", "server"], "rate_mbit": 1000},
    ],
}
HEAD_PORTS = [6379, 6380, 6381, 6382, 6383]  # each namespace has its own ports: fixed ones cannot clash
NODE_PORTS = HEAD_PORTS[1:]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(network, head address, env): the Ray head in ``head``, a worker node in ``node``, one CPU each."""
    need(os.geteuid() == 0, "needs root for network namespaces")
    need(importlib.util.find_spec("ray") is not None, "Ray is not installed (pip install -e '.[ray]')")
    need(probe().check("relay").works, probe().check("relay").reason)
    prefix = P("ray")
    net = Network(parse_network(TABLE), prefix=prefix, table=TABLE)
    temp = Path(tempfile.mkdtemp(prefix="pfbrr-", dir="/tmp"))  # Ray's socket paths must stay short
    logs = tmp_path_factory.mktemp("ray-netns")
    env = ray_env(single_host=False)  # real addresses, one per namespace
    try:
        with net.up():
            head = f"{net.address('head')}:{HEAD_PORTS[0]}"
            spawn = {
                site: (lambda argv, site=site, **kw: net.spawn(site, argv, **kw)) for site in ("head", "node")
            }
            head_argv = node_argv(net.address("head"), HEAD_PORTS, cpus=1, temp=temp)
            node = node_argv(net.address("node"), NODE_PORTS, cpus=1, head=head)
            with (
                ray_node(spawn["head"], head_argv, env, logs / "head.log"),
                ray_node(spawn["node"], node, env, logs / "node.log"),
            ):
                yield net, head, env
    finally:
        shutil.rmtree(temp, ignore_errors=True)
        assert kernel.list_namespaces(prefix) == [], "namespaces left behind"


def _in_head(net: Network, argv: list[str], env: dict, log: Path) -> tuple[int, str]:
    """Run ``argv`` in the head's namespace to its end: (exit code, its output)."""
    with open(log, "w") as out:
        proc = net.spawn("head", argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        code = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, log.read_text()


def test_a_distributed_replay_puts_one_worker_on_each_node(tmp_path, cluster):
    net, head, env = cluster
    write_trace(tmp_path / "t.jsonl")
    listener = net.socket("server", socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((net.address("server"), 0))
    listener.listen(64)
    out = tmp_path / "run"
    with ServerThread(FakeServer(keep_bodies=True), sock=listener) as srv:
        argv = [sys.executable, "-m", "harness", "replay", "--endpoint", srv.url, "--model", "m", "--quiet",
                "--trace", str(tmp_path / "t.jsonl"), "--workers", "2", "--ray-address", head,
                "--out", str(out)]  # fmt: skip
        code, output = _in_head(net, argv, env, tmp_path / "replay.log")
        # what the server saw: each request's client address, and its prompt's start, which is the text
        # of the request's first prefix block (its group: every group has its own first block)
        seen = [
            (b["prompt"][:200], peer) for b, peer in zip(srv.server.bodies, srv.server.peers, strict=True)
        ]
    assert code == 0, output
    assert "Ray workers on" not in output  # two nodes for two workers: STRICT_SPREAD, nothing to warn of
    df = read_records(out)
    assert sorted(df.trace_row) == list(range(sum(GROUPS))) == list(range(len(seen)))
    assert (df.status == "ok").all()
    nodes = {net.address("head"), net.address("node")}
    assert {peer for _, peer in seen} == nodes  # both nodes sent load
    peers_of = {start: {peer for s, peer in seen if s == start} for start, _ in seen}
    assert len(peers_of) == len(GROUPS) and all(len(p) == 1 for p in peers_of.values()), peers_of
    ray = read_meta(out)["summaries"]["default"]["ray"]
    assert ray["strategy"] == "STRICT_SPREAD"
    workers = {w["node_ip"]: w for w in ray["workers"]}
    assert set(workers) == nodes and len({w["node_id"] for w in workers.values()}) == 2
    for ip, w in workers.items():
        assert w["requests"] == sum(peer == ip for _, peer in seen)  # meta's counts are the server's
        assert abs(w["clock"]["offset_s"]) <= w["clock"]["bound_s"]  # one machine, one clock
    assert CliRunner().invoke(main, ["analyze", str(out)]).exit_code == 0


def test_a_sweep_on_the_namespaced_cluster_gives_the_local_pools_rows(tmp_path, cluster):
    net, head, env = cluster
    spec = write_spec(tmp_path, 'run = ["plan"]\n[grid]\n"link.bandwidth_gbps" = [10, 100]\n')
    local = sweep_cli(str(spec), "--out", str(tmp_path / "local"), "--workers", "1")
    assert local.returncode == 0, local.stderr
    argv = [sys.executable, "-m", "harness", "sweep", str(spec), "--out", str(tmp_path / "ray"),
            "--executor", "ray", "--ray-address", head]  # fmt: skip
    code, output = _in_head(net, argv, env, tmp_path / "sweep.log")
    assert code == 0, output
    pd.testing.assert_frame_equal(rows(tmp_path / "local"), rows(tmp_path / "ray"))
