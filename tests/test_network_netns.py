"""Real namespaces, veth pairs, TBF and the relay (root; CI runs these and fails if it cannot).

Each test uses its own prefix, so it never meets another test's (or helper's) network.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, need

from harness.errors import CapabilityError
from harness.network import LinkSpec, Network, kernel, owned_namespaces, parse_network, probe
from harness.network.host import interface_ops, shape_interface, unshape_interface
from harness.network.measure import check_direction, expected_goodput_mbit, goodput_mbit, loss_pct, rtt_ms
from harness.network.state import STATE_DIR, State, is_alive, start_ticks
from harness.network.sweep import relay_pids, sweep

pytestmark = pytest.mark.root

THREE = {
    "sites": ["client", "local", "remote"],
    "links": [
        {"between": ["client", "local"], "rate_mbit": 1000},
        {"between": ["local", "remote"], "rate_mbit": 100, "delay_ms": 2},
    ],
}


@pytest.fixture
def relay_ok(root) -> None:
    need(probe().check("relay").works or probe().check("netem").works, probe().check("relay").reason)


def _net(table: dict, prefix: str, **kw) -> Network:
    return Network(parse_network(table), prefix=prefix, table=table, **kw)


def _leftovers(prefix: str) -> list[str]:
    ns = owned_namespaces(prefix)
    relays = [f"relay {pid}" for pid, _ in relay_pids(prefix)]
    state = [str(State.path(prefix))] if State.path(prefix).exists() else []
    return ns + relays + state


def _connect_ok(net: Network, src: str, dst: str, timeout: float = 2.0) -> bool:
    srv = net.socket(dst, socket.AF_INET, socket.SOCK_STREAM)
    srv.bind((net.address(dst), 0))
    srv.listen(1)
    cli = net.socket(src, socket.AF_INET, socket.SOCK_STREAM)
    cli.settimeout(timeout)
    try:
        cli.connect(srv.getsockname())
        return True
    except OSError:
        return False
    finally:
        cli.close()
        srv.close()


def test_three_sites_build_route_and_leave_nothing_behind(relay_ok):
    net = _net(THREE, "pfbt1-")
    with net.up():
        assert kernel.list_namespaces("pfbt1-") == ["pfbt1-client", "pfbt1-local", "pfbt1-remote"]
        assert _connect_ok(net, "client", "remote")  # no direct link: forwarded by local
        assert _connect_ok(net, "remote", "client")
        assert all(r.ok for r in net.status()), [r.problems for r in net.status()]
        assert kernel.read_sysctl("pfbt1-local", "net.ipv4.tcp_rmem").split()[-1] == "6291456"
        if net.backend == "relay":
            assert len(relay_pids("pfbt1-")) == 2  # one per impaired direction
        proc = net.spawn("local", [sys.executable, "-c", "import time; time.sleep(60)"])
    assert proc.poll() is not None  # killed on teardown
    assert _leftovers("pfbt1-") == []


def test_teardown_ends_what_a_spawned_process_left_in_its_session(relay_ok, tmp_path: Path):
    # Regression: a spawned process that had already exited was skipped, so the background child it
    # left in its session kept running after teardown.
    pid_file = tmp_path / "child.pid"
    table = {"sites": ["a", "b"], "links": [{"between": ["a", "b"], "rate_mbit": 10}]}
    with _net(table, "pfbt13-").up() as net:
        leader = net.spawn("a", ["sh", "-c", f"sleep 60 & echo $! > {pid_file}; exit 0"])
        deadline = time.monotonic() + 10
        while start_ticks(leader.pid) is not None and time.monotonic() < deadline:
            time.sleep(0.01)  # until the leader has written the child's pid and exited (a zombie)
        child = int(pid_file.read_text())
        child_ticks = start_ticks(child)
        assert child_ticks is not None
    deadline = time.monotonic() + 5
    while is_alive(child, child_ticks) and time.monotonic() < deadline:
        time.sleep(0.01)  # SIGKILL is asynchronous; the orphan is reaped by init
    assert not is_alive(child, child_ticks)


def test_tbf_rate_holds_for_a_real_tcp_flow(relay_ok):
    table = {"sites": ["a", "b"], "links": [{"between": ["a", "b"], "rate_mbit": 100}]}
    with _net(table, "pfbt2-").up() as net:
        got = goodput_mbit(net, "a", "b", seconds=1.2, warmup_s=0.3)
    assert got == pytest.approx(expected_goodput_mbit(100, 1500), rel=0.05)


def test_relay_delay_gives_the_configured_round_trip(relay_ok):
    table = {
        "sites": ["a", "b"],
        "links": [{"between": ["a", "b"], "delay_ms": 5, "reverse": {"delay_ms": 3}}],
    }
    with _net(table, "pfbt3-").up() as net:
        samples = rtt_ms(net, "a", "b", samples=20)
        handshake_t = time.perf_counter()
        assert _connect_ok(net, "a", "b")  # the handshake crosses the delay too
        handshake_ms = (time.perf_counter() - handshake_t) * 1e3
    rtt = statistics.median(samples)
    assert 8.0 <= rtt <= 9.0, samples  # 5 + 3 ms, within 1 ms
    assert handshake_ms >= 8.0


def test_relay_loss_is_close_to_the_configured_rate(relay_ok):
    table = {"sites": ["a", "b"], "links": [{"between": ["a", "b"], "forward": {"loss_pct": 2}}]}
    with _net(table, "pfbt4-").up() as net:
        lost = loss_pct(net, "a", "b", packets=10000, pps=20000)
        back = loss_pct(net, "b", "a", packets=2000, pps=20000)
    assert lost == pytest.approx(2.0, abs=0.5)  # binomial sd at n=10000 is 0.14 points
    assert back == 0.0


def test_live_changes_take_effect_and_scheduled_events_restore(relay_ok):
    table = {
        "sites": ["a", "b"],
        "links": [{"between": ["a", "b"], "rate_mbit": 100}],
        "events": [
            # 3 s: the slow measurement (about 1.3 s) must end inside the event even on a loaded CPU
            {"at_s": 0.0, "duration_s": 3.0, "link": ["a", "b"], "direction": "forward", "rate_factor": 0.2}
        ],
    }
    with _net(table, "pfbt5-").up() as net:
        sched = net.run_events()
        slow = goodput_mbit(net, "a", "b", seconds=1.0, warmup_s=0.3)
        sched.join()
        assert net.link_spec("a", "b").rate_mbit == 100  # restored after duration_s
        fast = goodput_mbit(net, "a", "b", seconds=0.8, warmup_s=0.3)
        net.set_link("a", "b", up=False)
        assert not _connect_ok(net, "a", "b", timeout=0.5)
        net.set_link("a", "b", up=True, delay_ms=4)
        assert all(r.ok for r in net.status())
        rtt = statistics.median(rtt_ms(net, "a", "b", samples=10))
    assert slow == pytest.approx(expected_goodput_mbit(20, 1500), rel=0.08)
    assert fast == pytest.approx(expected_goodput_mbit(100, 1500), rel=0.05)
    assert 4.0 <= rtt <= 5.0


def test_a_check_on_a_dead_link_says_so_and_leaves_no_thread_behind(relay_ok):
    # Regression: a failed connect (EHOSTUNREACH: the down link drops ARP) was a bare OSError
    # traceback, and the receiving thread stayed blocked in accept() for good, holding a socket in
    # the site's namespace.
    table = {"sites": ["a", "b"], "links": [{"between": ["a", "b"], "rate_mbit": 50}]}
    with _net(table, "pfbt15-").up() as net:
        net.set_link("a", "b", up=False)
        threads = threading.active_count()
        with pytest.raises(CapabilityError, match=r"^a->b: (no answer|No route to host)"):
            check_direction(net, "a", "b", seconds=0.2)
        assert threading.active_count() == threads


def test_status_notices_a_qdisc_someone_replaced(relay_ok):
    table = {"sites": ["a", "b"], "links": [{"between": ["a", "b"], "rate_mbit": 50}]}
    with _net(table, "pfbt6-").up() as net:
        with kernel.rtnl("pfbt6-a") as ipr:
            ipr.tc("replace", "pfifo", kernel.ifindex(ipr, "pfb-to-b"), handle=0x20000, limit=10)
        rows = {r.direction: r for r in net.status()}
    assert not rows["a->b"].ok and "expected tbf" in rows["a->b"].problems[0]
    assert rows["b->a"].ok


SCRIPT = textwrap.dedent(
    """
    import sys, time
    from harness.network import Network, parse_network
    table = {"sites": ["a", "b", "c"], "links": [{"between": ["a", "b"], "delay_ms": 1},
             {"between": ["b", "c"], "rate_mbit": 10}]}
    net = Network(parse_network(table), prefix="pfbt7-", table=table)
    with net.up():
        net.spawn("c", [sys.executable, "-c", "import time; time.sleep(60)"])
        print("ready", flush=True)
        time.sleep(60)
    """
)


def test_sigterm_mid_run_still_cleans_up(relay_ok):
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert len(kernel.list_namespaces("pfbt7-")) == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    finally:
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _leftovers("pfbt7-") == []


INUSE = textwrap.dedent(
    """
    import time
    from harness.network import Network, parse_network
    table = {"sites": ["a", "b"], "links": [{"between": ["a", "b"], "rate_mbit": 10}]}
    with Network(parse_network(table), prefix="pfbt14-", table=table).up():
        print("ready", flush=True)
        time.sleep(60)
    """
)


def test_a_refused_up_leaves_the_running_owners_network_alone(relay_ok):
    # Regression: up() refused a prefix held by a running process, then its finally-teardown swept
    # that process's namespaces away.
    table = {"sites": ["a", "b"], "links": [{"between": ["a", "b"], "rate_mbit": 10}]}
    holder = subprocess.Popen([sys.executable, "-c", INUSE], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        refused = _net(table, "pfbt14-")
        with pytest.raises(CapabilityError, match=f"in use by running process {holder.pid}"), refused.up():
            pass
        assert kernel.list_namespaces("pfbt14-") == ["pfbt14-a", "pfbt14-b"]
    finally:
        holder.terminate()
        holder.wait(timeout=20)
        holder.stdout.close()
    assert _leftovers("pfbt14-") == []


def test_a_stale_network_is_swept_by_the_next_build(relay_ok):
    table = {"sites": ["a", "b"], "links": [{"between": ["a", "b"], "delay_ms": 1}]}
    first = _net(table, "pfbt8-")
    first.build()  # persistent, as `net up` leaves it
    stale_relays = relay_pids("pfbt8-")
    with _net(table, "pfbt8-").up():
        assert not any(pid in {p for p, _ in relay_pids("pfbt8-")} for pid, _ in stale_relays)
    assert _leftovers("pfbt8-") == []


def test_a_sweep_leaves_the_control_files_of_a_longer_prefix_alone(root):
    # Regression: sweeping "pfbt11-" globbed "pfbt11-*.ctl.json" and so also deleted the relay control
    # files of a running "pfbt11-x-" network.
    ours, theirs = STATE_DIR / "pfbt11-a-b.ctl.json", STATE_DIR / "pfbt11-x-a-b.ctl.json"
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    try:
        for f in (ours, theirs):
            f.write_text("{}", encoding="utf-8")
        sweep("pfbt11-")
        assert (ours.exists(), theirs.exists()) == (False, True)
        sweep("pfbt11-x-")
        assert not theirs.exists()
    finally:
        ours.unlink(missing_ok=True)
        theirs.unlink(missing_ok=True)


def test_net_down_claims_only_the_interface_qdiscs_it_removed(root):
    # Regression: the sweep reported "qdisc on IFACE" for every recorded interface, even one that
    # no longer exists (nothing was removed).
    State("pfbt12-", "netem", {}, interfaces=["pfbt12-gone"]).save()
    try:
        assert sweep("pfbt12-") == []
        assert not State.path("pfbt12-").exists()  # the record goes all the same
    finally:
        State.path("pfbt12-").unlink(missing_ok=True)


def test_interface_shaping_touches_only_the_named_interface(root):
    ns = "pfbt9-host"
    kernel.create_namespace(ns)
    try:
        with kernel.rtnl(ns) as ipr:
            ipr.link("add", ifname="eth-test", kind="veth", peer={"ifname": "eth-other"})
        shape_interface("eth-test", interface_ops(LinkSpec(rate_mbit=20), "10.9.0.0/24"), netns=ns)
        with kernel.rtnl(ns) as ipr:
            idx, other = kernel.ifindex(ipr, "eth-test"), kernel.ifindex(ipr, "eth-other")
            kinds = sorted(q["kind"] for q in kernel.read_qdiscs(ipr, idx))
            classes = [c.get("options").get_attr("TCA_HTB_PARMS")["rate"] for c in ipr.get_classes(index=idx)]
            filters = [f for f in ipr.get_filters(index=idx, parent=0x10000) if f.get("kind") == "u32"]
            other_kinds = [q["kind"] for q in kernel.read_qdiscs(ipr, other)]
        assert kinds == ["htb", "pfifo"] and classes == [20_000_000 // 8] and filters
        assert "htb" not in other_kinds
        assert unshape_interface("eth-test", netns=ns) is True
        assert unshape_interface("eth-other", netns=ns) is False  # not ours: left alone
        with kernel.rtnl(ns) as ipr:
            assert "htb" not in [q["kind"] for q in kernel.read_qdiscs(ipr, kernel.ifindex(ipr, "eth-test"))]
    finally:
        kernel.remove_namespace(ns)


def test_without_root_building_says_what_still_works(tmp_path: Path):
    """A forked child drops to uid 65534 (nobody) for real and tries what a user without root would."""
    need(os.geteuid() == 0, "needs root to drop to an unprivileged user")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            os.close(read_fd)
            os.setgid(65534)
            os.setuid(65534)
            probe.cache_clear()
            table = {"sites": ["a", "b"], "links": [{"between": ["a", "b"], "delay_ms": 7}]}
            lines = [probe().chosen]
            try:
                Network(parse_network(table), prefix="pfbt10-").build()
                lines.append("built?!")
            except CapabilityError as exc:
                lines.append(str(exc))
            net = Network(parse_network(table), prefix="pfbt10-", backend="app-delay")
            lines.append(f"{net.address('b')} {net.app_delay_s('a', 'b')}")
            os.write(write_fd, "\n".join(lines).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        lines = f.read().splitlines()
    assert os.waitpid(pid, 0)[1] == 0
    assert lines[0] == "app-delay"
    assert "needs root" in lines[1] and "app-delay" in lines[1]
    assert lines[2] == "127.0.0.1 0.007"
