"""Test scaffolding: Ray nodes started by ``ray start --block``, each in a process group of its own
(stopped as one with ``killpg``, never anything of ours), on loopback or inside network namespaces.

Every port a node opens is given (the agents' too): a raylet waits only a few seconds for an agent to
publish a port it chose itself, and beside CPU hogs a Python agent takes longer than that to start.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
START_S = 300.0  # beside the suite's CPU hogs a node has taken minutes
_AGENT_FLAGS = (
    "--dashboard-agent-grpc-port",
    "--dashboard-agent-listen-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
)
OBJECT_STORE_BYTES = 128 * 2**20  # Ray's default would claim 30% of memory per node


def ray_env(*, single_host: bool) -> dict[str, str]:
    """The environment of a test cluster and its drivers: a token made here (nothing in ~/.ray), no usage
    reports, and, on one host's loopback, Ray's single-host switch (else it swaps 127.0.0.1 in an
    address for this host's network address)."""
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    if single_host:
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return env


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 now."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def node_argv(
    ip: str, ports: list[int], *, cpus: int, head: str | None = None, temp: Path | None = None
) -> list[str]:
    """``ray start --block`` for a node on ``ip``; ``ports``: the GCS port then the four agents' (a head),
    or the four agents' (a worker node joining the head at ``head``)."""
    argv = [RAY, "start", "--block", "--node-ip-address", ip, "--num-cpus", str(cpus), "--disable-usage-stats",
            "--object-store-memory", str(OBJECT_STORE_BYTES)]  # fmt: skip
    if head is None:
        argv += ["--head", "--port", str(ports[0]), "--include-dashboard", "false", "--temp-dir", str(temp)]
        ports = ports[1:]
    else:
        argv += ["--address", head]
    for flag, port in zip(_AGENT_FLAGS, ports, strict=True):
        argv += [flag, str(port)]
    return argv


@contextlib.contextmanager
def ray_node(
    spawn: Callable[..., subprocess.Popen], argv: list[str], env: dict, log: Path
) -> Iterator[subprocess.Popen]:
    """A node started by ``spawn(argv, **popen_kwargs)`` (in a new session), up until the block ends;
    yields its ``ray start`` process."""
    with open(log, "w") as out:
        proc = spawn(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + START_S
        while "Ray runtime started" not in log.read_text():
            tail = log.read_text()[-2000:]
            assert proc.poll() is None, f"ray start exited ({proc.returncode}):\n{tail}"
            assert time.monotonic() < deadline, f"ray start did not start in {START_S:.0f} s:\n{tail}"
            time.sleep(0.5)
        yield proc
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group ``proc`` leads (Ray stops its processes), SIGKILL after a minute."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with contextlib.suppress(ProcessLookupError):  # what the leader left behind in its group
        os.killpg(proc.pid, signal.SIGKILL)


def loopback(argv: list[str], **kwargs) -> subprocess.Popen:
    """``spawn`` for a node on this host's loopback."""
    return subprocess.Popen(argv, start_new_session=True, **kwargs)
