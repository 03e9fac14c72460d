"""Nothing outlives ``serve``: Ctrl-C, SIGTERM and even SIGKILL of the parent leave no process or namespace."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import net_prefix as P

from harness.emulation.clusters import EmulatedClusters
from harness.errors import CapabilityError

REPO = Path(__file__).resolve().parent.parent
SCENARIO = REPO / "workloads" / "paper-case-study.toml"


def _site_pids(parent: int) -> list[int]:
    """Site processes whose command line names harness.emulation.siteproc and whose parent is ``parent``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if b"harness.emulation.siteproc" in argv and ppid == parent:
            out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pids: list[int], limit_s: float = 20.0) -> list[int]:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def _start_serve(*flags: str, prefix: str) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "harness",
        "serve",
        str(SCENARIO),
        "--speedup",
        "20",
        "--prefix",
        prefix,
        *flags,
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # the URL lines come once every site serves
        if "metrics:" in line:
            return proc
    proc.wait()
    with proc.stdout, proc.stderr:  # closed, so that a failure here leaves no ResourceWarning for later tests
        raise AssertionError(f"serve did not come up: {proc.stderr.read() if proc.stderr else ''}")


def _namespaces(prefix: str) -> list[str]:
    netns = Path("/run/netns")
    return sorted(p.name for p in netns.iterdir() if p.name.startswith(prefix)) if netns.is_dir() else []


def test_parent_killed_with_sigkill_takes_its_site_processes_along():
    # SIGKILL runs no cleanup in the parent; each site notices its control socket close and exits.
    proc = _start_serve("--no-netns", prefix=P("sv"))
    try:
        sites = _site_pids(proc.pid)
        assert len(sites) == 2  # local and remote
        proc.kill()
        proc.wait()
        assert _wait_gone(sites) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for f in (proc.stdout, proc.stderr):
            f and f.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_removes_processes_and_namespaces(root, sig):
    prefix = P("svt")
    proc = _start_serve("--netns", prefix=prefix)
    try:
        sites = _site_pids(proc.pid)
        assert len(sites) == 2 and len(_namespaces(prefix)) == 2
        os.kill(proc.pid, sig)
        # Teardown (site processes, relays, namespaces) is slow, not hung, on a loaded machine: wait long.
        assert proc.wait(timeout=120) != 0
        assert _wait_gone(sites) == []
        assert _namespaces(prefix) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for f in (proc.stdout, proc.stderr):
            f and f.close()


def test_a_dead_prefill_site_gives_an_error_answer_not_a_hang():
    with EmulatedClusters(SCENARIO, netns=False, topologies=["naive"], speedup=20) as clusters:
        remote = clusters._procs["remote"]
        remote.kill()  # a real fault: the PrfaaS site's process dies
        remote.wait()
        body = {"model": clusters.model, "prompt": "w " * 1000, "max_tokens": 2}
        req = urllib.request.Request(
            clusters.urls["naive"] + "/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=60)
        with err.value:
            assert err.value.code == 502
            assert "prefill site remote" in json.loads(err.value.read())["error"]["message"]
        with pytest.raises(CapabilityError, match="remote"):
            clusters.check()


def test_as_root_no_kernel_backend_is_an_error_not_a_silent_loopback(root, monkeypatch):
    # Regression: one start fell back to loopback without --no-netns. A kernel without TUN is a
    # fault this machine cannot produce, so the probe's answer is substituted.
    import harness.network
    from harness.network.probe import BackendCheck, ProbeReport

    no_tun = ProbeReport(
        (
            BackendCheck("netem", False, "netem qdisc not in this kernel"),
            BackendCheck("relay", False, "TUN unavailable: No such device"),
            BackendCheck("app-delay", True, "always available"),
        )
    )
    monkeypatch.setattr(harness.network, "probe", lambda: no_tun)
    clusters = EmulatedClusters(SCENARIO, speedup=20, prefix=P("nb"))
    with pytest.raises(CapabilityError, match=r"TUN unavailable: No such device.*use --no-netns"):
        clusters.start()
    assert clusters.backend == "none" and _namespaces(P("nb")) == []


def test_a_second_serve_on_a_prefix_in_use_refuses_in_one_line_and_another_prefix_coexists(root):
    first = _start_serve("--netns", prefix=P("sd"))
    try:
        second = subprocess.run(
            [sys.executable, "-m", "harness", "serve", str(SCENARIO), "--netns", "--prefix", P("sd")],
            capture_output=True, text=True, cwd=REPO, timeout=120,
        )  # fmt: skip
        assert second.returncode == 2
        assert second.stderr.splitlines() == [
            f"error: prefix {P('sd')!r} is in use by running process {first.pid}; choose another --prefix"
        ]
        assert len(_namespaces(P("sd"))) == 2 and first.poll() is None
        sites = _site_pids(first.pid)
        assert len(sites) == 2
        other = _start_serve("--netns", prefix=P("se"))  # another prefix: both serve side by side
        other.terminate()
        assert other.wait(timeout=30) == 128 + signal.SIGTERM
        for f in (other.stdout, other.stderr):
            f and f.close()
        assert first.poll() is None and len(_namespaces(P("sd"))) == 2
    finally:
        first.terminate()
        first.wait(timeout=30)
        for f in (first.stdout, first.stderr):
            f and f.close()
    assert _wait_gone(sites) == [] and _namespaces(P("sd")) == [] and _namespaces(P("se")) == []
