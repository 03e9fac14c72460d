"""`prfaas-bench net`: dry-run output, one-line errors for bad input, and a real up/status/check/down."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import REPO
from conftest import net_prefix as P

from harness.cli import main
from harness.loadgen.conditions import cpu_sample, cpu_shares
from harness.network import kernel
from harness.network.probe import probe
from harness.network.sweep import relay_pids


def run(*args: str):
    return CliRunner().invoke(main, ["net", *args])


def test_dry_run_prints_the_tc_commands_without_touching_anything():
    res = run(
        "up",
        str(REPO / "workloads" / "two-site.toml"),
        "--backend",
        "netem",
        "--dry-run",
        "--prefix",
        "pfbc-",
    )
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("ip netns exec")]
    # netem limit: the scenario's 2000 packets + 826 full frames in flight (125 MB/s x 10 ms / 1514 B)
    assert lines == [
        "ip netns exec pfbc-local tc qdisc replace dev pfb-to-remote root handle 1: netem limit 2826 delay 10000us",
        "ip netns exec pfbc-local tc qdisc replace dev pfb-to-remote parent 1:1 handle 10: "
        "tbf rate 1000000kbit burst 250000b limit 3028000b",
        "ip netns exec pfbc-remote tc qdisc replace dev pfb-to-local root handle 1: netem limit 2826 delay 10000us",
        "ip netns exec pfbc-remote tc qdisc replace dev pfb-to-local parent 1:1 handle 10: "
        "tbf rate 1000000kbit burst 250000b limit 3028000b",
    ]
    assert kernel.list_namespaces("pfbc-") == []


def test_bad_input_is_one_line_with_exit_code_2(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[network]\nsites = ["a", "b"]\n[[network.links]]\nbetween = ["a", "b"]\nloss_pct = 140\n')
    res = run("up", str(bad))
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        f"error: {bad}: [network.links[0]] loss_pct: must be <= 100, got 140"
    ]
    res = run("status", "--prefix", "pfbnone-")
    assert res.exit_code == 2 and "no network with prefix 'pfbnone-' is up" in res.output
    res = run("up", str(REPO / "workloads" / "two-site.toml"), "--prefix", "bogus")
    assert res.exit_code == 2 and "must start with 'pfb'" in res.output


def test_up_status_check_down_on_the_two_site_scenario(root):
    scenario = str(REPO / "workloads" / "two-site.toml")
    try:
        res = run("up", scenario, "--prefix", P("c2"))
        assert res.exit_code == 0, res.output
        # Its three events need --hold: without it they are not applied, and net up says so.
        assert res.stderr == (
            f"warning: {scenario}: [[network.events]] are ignored: net up does not apply them "
            "(`net up --hold` does)\n"
        )
        res = run("status", "--prefix", P("c2"))
        assert res.exit_code == 0 and res.output.count(" ok ") == 2, res.output
        res = run("exec", "--prefix", P("c2"), "remote", "--", "sh", "-c", "exit 7")
        assert res.exit_code == 7
        before = cpu_sample()
        res = run("check", "--prefix", P("c2"), "--seconds", "0.6")
        busy = (cpu_shares(before, cpu_sample()) or {}).get("other_share", 0.0)
        assert "backend:" in res.output and res.output.count(" yes") + res.output.count(" NO") == 4, (
            res.output
        )
        if res.exit_code != 0:
            # The check measures 1 Gbit/s of TCP with Python threads in this process: on a machine
            # whose CPU others took (the validity verdict's cpu_other_share bound) goodput may fall
            # short, and check must say so; a short RTT or a miss on a quiet machine fails here.
            missed = [line.split()[1] for line in res.output.splitlines() if line.rstrip().endswith(" NO")]
            assert res.exit_code == 1 and busy > 0.5 and set(missed) == {"goodput"}, (busy, res.output)
            print(f"net check missed goodput with {busy:.0%} of the CPU taken by others:\n{res.output}")
    finally:
        res = run("down", "--prefix", P("c2"))
    assert res.exit_code == 0 and f"netns {P('c2')}local" in res.output
    assert kernel.list_namespaces(P("c2")) == [] and relay_pids(P("c2")) == []


def test_up_with_a_backend_this_kernel_lacks_is_one_line_and_builds_nothing(root):
    # Regression: `net up --backend netem` on a kernel without netem died in pyroute2 with a bare
    # NetlinkError traceback.
    broken = [c for c in probe().checks if not c.works]
    if not broken:
        pytest.skip("every shaping backend works on this machine; none to refuse")
    res = run(
        "up",
        str(REPO / "workloads" / "two-site.toml"),
        "--prefix",
        P("qa"),
        "--backend",
        broken[0].name,
    )
    assert res.exit_code == 2, res.output
    assert res.output.startswith(f"error: backend {broken[0].name} does not work on this machine")
    assert kernel.list_namespaces(P("qa")) == []


def test_net_up_returns_when_its_output_is_a_pipe(root):
    # Regression: the relay daemons kept `net up`'s stderr, so `net up ... | tee log` (or any caller
    # capturing its output) waited for ever for an EOF.
    cmd = [sys.executable, "-m", "harness", "net"]
    try:
        up = subprocess.run(
            [*cmd, "up", str(REPO / "workloads" / "two-site.toml"), "--prefix", P("c3")],
            capture_output=True, text=True, timeout=60, cwd=REPO,
        )  # fmt: skip
        assert up.returncode == 0, up.stderr
        assert len(relay_pids(P("c3"))) == 2  # the link has a delay: relays run, detached from us
    finally:
        down = subprocess.run([*cmd, "down", "--prefix", P("c3")], capture_output=True, text=True, timeout=60)
    assert down.returncode == 0 and relay_pids(P("c3")) == [] and kernel.list_namespaces(P("c3")) == []
