"""CPU time of a process and its descendants, sampled from /proc, for a span known only afterwards.

A client's start-up (vLLM's ``bench serve`` imports torch) is not part of what it costs per token: the
sampler records ``(time.monotonic(), CPU seconds of the tree)`` every ``interval_s`` and ``between(a, b)``
interpolates the CPU spent inside the span the client itself reports (both clients time with
CLOCK_MONOTONIC, which ``time.monotonic`` and ``time.perf_counter`` read on Linux).
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from pathlib import Path

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds: own user+system plus those of reaped children); None once gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()  # after "pid (comm) ": state ppid ...
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return ppid, (utime + stime + cutime + cstime) * _TICK_S


class TreeCPU:
    """Samples the CPU seconds of ``pid`` and every descendant (children found by a scan of /proc every
    ``scan_s``: a spawned child is seen from then on). A context manager: sampling starts and stops."""

    def __init__(self, pid: int, interval_s: float = 0.02, scan_s: float = 0.5) -> None:
        self.pid, self.interval_s, self.scan_s = pid, interval_s, scan_s
        self.times: list[float] = []
        self.cpu: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _descendants(self) -> set[int]:
        parent: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (s := _stat(int(entry))) is not None:
                parent[int(entry)] = s[0]
        tree, grew = {self.pid}, True
        while grew:
            new = {p for p, pp in parent.items() if pp in tree and p not in tree}
            tree |= new
            grew = bool(new)
        return tree

    def _run(self) -> None:
        pids, scanned = {self.pid}, 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now - scanned >= self.scan_s:
                pids, scanned = self._descendants(), now
            # A child that exited is readable (a zombie) until its parent reaps it; from then on the
            # parent's cutime holds its time, and it is dropped here.
            stats = {pid: _stat(pid) for pid in pids}
            pids = {pid for pid, s in stats.items() if s is not None}
            if not pids:
                break
            self.times.append(now)
            self.cpu.append(sum(s[1] for s in stats.values() if s is not None))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> TreeCPU:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, a: float, b: float) -> float:
        """CPU seconds the tree spent from monotonic time ``a`` to ``b`` (linear between samples)."""
        return self._at(b) - self._at(a)

    def _at(self, t: float) -> float:
        i = bisect.bisect_left(self.times, t)
        if i == 0:
            return self.cpu[0]
        if i == len(self.times):
            return self.cpu[-1]
        t1, t2, c1, c2 = self.times[i - 1], self.times[i], self.cpu[i - 1], self.cpu[i]
        return c1 + (c2 - c1) * (t - t1) / (t2 - t1)


def pid_of(*args: str) -> int:
    """The pid of the one process whose command line holds ``args`` in that order (a server we started)."""
    want = "\0".join(args).encode()
    found = [int(d) for d in os.listdir("/proc") if d.isdigit() and want in _cmdline(int(d))]
    if len(found) != 1:
        raise RuntimeError(f"{len(found)} processes run {' '.join(args)!r}")
    return found[0]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
