"""Signal handlers that clean up only in the process that installed them (issue 12: pyroute2's forked
helpers inherited serve's SIGTERM handler and tore the network down under their parent)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from harness.lifeline import exit_on_signals


def test_sigterm_unwinds_the_installing_process_and_restores_the_old_handler():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exc, exit_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert exc.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_forked_child_never_runs_its_parents_cleanup(tmp_path: Path):
    # The child is a copy of this stack inside `exit_on_signals`; SIGTERM (as pyroute2 stops its
    # helpers) must end it with the default action, never unwind through the parent's `finally`.
    marker = tmp_path / "cleanup-ran-in"
    with exit_on_signals():
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            try:
                os.close(read_fd)
                os.write(write_fd, b"r")
                time.sleep(30)
            finally:
                marker.write_text(str(os.getpid()))  # what the parent's teardown would be
                os._exit(0)
        os.close(write_fd)
        assert os.read(read_fd, 1) == b"r"  # the child runs (past fork and its at-fork hooks)
        os.close(read_fd)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
    assert not marker.exists()
