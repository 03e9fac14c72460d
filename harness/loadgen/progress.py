"""Live progress (rich) and the end-of-run failure summary."""

from __future__ import annotations

import sys
import time
from collections import deque

from rich.console import Console
from rich.live import Live
from rich.text import Text

from harness.loadgen.stats import RunStats


class Progress:
    """A one-line live display: completed/total, in flight, failed, req/s and tok/s over the last 5 s.

    Disabled (all calls no-ops) when ``enabled`` is false or stderr is not a terminal... unless forced.
    """

    def __init__(self, label: str, total: int | None, *, enabled: bool = True) -> None:
        self.label, self.total = label, total
        self.console = Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self._live: Live | None = None
        self._hist: deque[tuple[float, int, int]] = deque(maxlen=64)

    def __enter__(self) -> Progress:
        if self.enabled:
            self._live = Live(Text(""), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def update(self, stats: RunStats, in_flight: int) -> None:
        if self._live is None:
            return
        now = time.monotonic()
        self._hist.append((now, stats.completed, stats.tokens))
        while len(self._hist) > 2 and now - self._hist[0][0] > 5.0:
            self._hist.popleft()
        t, c, k = self._hist[0]
        dt = max(now - t, 1e-9)
        total = f"/{self.total}" if self.total and self.total < 1 << 40 else ""
        self._live.update(
            Text(
                f"{self.label}: {stats.completed}{total} done  {in_flight} in flight  {stats.failed} failed  "
                f"{(stats.completed - c) / dt:.1f} req/s  {(stats.tokens - k) / dt:.0f} tok/s"
            )
        )


def print_summary(name: str, summary: dict, *, quiet: bool, saturated: bool, bound_s: float) -> None:
    """Failure summary and send lag, on stderr (quiet prints only problems)."""
    out = sys.stderr
    lag = summary["send_lag_s"]
    p99 = lag["p99"]
    if not quiet:
        print(
            f"{name}: {summary['requests']} requests, {summary['failed']} failed, "
            f"{summary['output_tokens']} output tokens in {summary['elapsed_s']:.1f}s; send lag p99 "
            + ("n/a" if p99 is None else f"{p99 * 1e3:.2f} ms"),
            file=out,
        )
    if summary["errors"]:
        detail = ", ".join(f"{k}={v}" for k, v in sorted(summary["errors"].items(), key=lambda kv: -kv[1]))
        print(f"{name}: failures by class: {detail}", file=out)
        for k, said in summary.get("error_examples", {}).items():
            print(f"{name}: {k}: {said}", file=out)  # the server's own words, e.g. why it refused
    if summary["warnings"] and not quiet:
        detail = ", ".join(f"{k}={v}" for k, v in sorted(summary["warnings"].items()))
        print(f"{name}: warnings: {detail}", file=out)
    if saturated and p99 is not None:
        print(
            f"{name}: WARNING client saturated: send-lag p99 {p99 * 1e3:.1f} ms > {bound_s * 1e3:.1f} ms "
            "(add --workers, or a concurrency cap is binding); latencies still count from the schedule",
            file=out,
        )
        loop = summary.get("client_loop")
        if loop and loop["count"]:
            print(f"{name}: {stall_text(loop)}", file=out)


def stall_text(loop: dict) -> str:
    """One line on where the client's event loop lost time (``harness.loadgen.stalls`` summary)."""
    split = ""
    if loop["ran_s"] is not None:
        split = (
            f": {loop['ran_s']:.2f} s running code on the loop, {loop['waited_s']:.2f} s waiting for a CPU, "
            f"{loop['blocked_s']:.2f} s blocked"
        )
    worst = loop["worst"][0]
    return (
        f"the client's event loop stalled {loop['count']} times for over {loop['threshold_s'] * 1e3:.0f} ms, "
        f"{loop['stalled_s']:.2f} s in all{split}; the longest, {worst['length_s'] * 1e3:.0f} ms at "
        f"{worst['start_s']:.1f} s, in {worst['where']}"
    )
