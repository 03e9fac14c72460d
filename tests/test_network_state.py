"""The state file and the prefix locks, with real processes (no root needed: a private state dir)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from conftest import REPO

from harness.errors import CapabilityError
from harness.network import locks

WRITER = textwrap.dedent(
    """
    import os, sys
    from harness.network.locks import state_lock
    from harness.network.state import State
    tag, n = int(sys.argv[1]), int(sys.argv[2])
    for i in range(n):
        with state_lock("pfbst-"):  # as Network._save does: load, add what this process started, save
            st = State.load("pfbst-") or State("pfbst-", "relay", {})
            st.spawned.append([tag, i])
            st.save()
    """
)


def test_two_processes_saving_at_once_keep_every_recorded_process(tmp_path: Path):
    # Regression: both writers went through one "<prefix>state.tmp", so a save could rename the
    # other's half-written file into place; it then read as "no state" and its processes were
    # forgotten by the sweep. Without the lock, one writer's entries overwrite the other's.
    env = {**os.environ, "PFB_STATE_DIR": str(tmp_path)}
    n = 300
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tag), str(n)], cwd=REPO, env=env)
        for tag in (1, 2)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    code = "from harness.network.state import State; print(len(State.load('pfbst-').spawned))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.stdout.strip() == str(2 * n), out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pfbst-state.json", "pfbst-state.lock"]


HOLDER = textwrap.dedent(
    """
    import sys
    from harness.network.locks import claim_prefix
    claim_prefix("pfbst-")
    print("held", flush=True)
    sys.stdin.read()
    """
)


def test_a_prefix_is_owned_until_its_owner_dies_however_it_dies(tmp_path: Path):
    env = {**os.environ, "PFB_STATE_DIR": str(tmp_path)}
    claim = "from harness.network.locks import claim_prefix; claim_prefix('pfbst-'); print('claimed')"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = subprocess.run(
            [sys.executable, "-c", claim], cwd=REPO, env=env, capture_output=True, text=True
        )
        assert f"prefix 'pfbst-' is in use by running process {holder.pid}" in refused.stderr
        holder.kill()  # no cleanup runs; the kernel releases the flock with the process
        holder.wait()
        after = subprocess.run(
            [sys.executable, "-c", claim], cwd=REPO, env=env, capture_output=True, text=True
        )
        assert after.stdout.strip() == "claimed", after.stderr
    finally:
        holder.stdin.close()
        holder.stdout.close()
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_refusal_names_an_owner_caught_between_locking_and_writing_its_pid(tmp_path: Path, monkeypatch):
    # The owner locks, then writes its pid: a run refused in between waits for the pid instead of
    # naming no one (seen in the 1-vCPU netem VM, three runs racing for one prefix).
    monkeypatch.setattr(locks, "STATE_DIR", tmp_path)
    path = locks.owner_lock_path("pfbst-")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held, nothing written yet
    late = threading.Timer(0.3, lambda: os.pwrite(fd, b"4242\n", 0))
    late.start()
    try:
        with pytest.raises(CapabilityError, match="in use by running process 4242"):
            locks.claim_prefix("pfbst-")
    finally:
        late.join()
        os.close(fd)
