"""Running totals of a replay: counts, failure classes, send lags. Small and picklable."""

from __future__ import annotations

import time
from array import array
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from harness.records import STATUS_ERROR, RequestRecord

EXAMPLE_CHARS = 160  # of a server's error message, in summaries


@dataclass
class RunStats:
    """Updated once per finished request; holds 8 bytes per request (send lag), not the records."""

    completed: int = 0
    failed: int = 0
    dispatched: int = 0
    tokens: int = 0
    errors: Counter = field(default_factory=Counter)
    error_examples: dict[str, str] = field(default_factory=dict)  # class -> the first message seen
    warnings: Counter = field(default_factory=Counter)
    send_lag_s: array = field(default_factory=lambda: array("d"))
    started: float = field(default_factory=time.monotonic)
    # ((scheduled_s, sent_s), cached tokens) of the first request sent: in a cold cache it hits nothing
    first: tuple[tuple[float, float], int | None] | None = None
    client_loop: dict | None = None  # the client's event-loop stalls (harness.loadgen.stalls)

    def add(self, rec: RequestRecord) -> None:
        self.completed += 1
        self.tokens += rec.output_tokens_received
        if rec.status == STATUS_ERROR:
            self.failed += 1
            self.errors[rec.error_class or "unknown"] += 1
            if rec.error_message:
                self.error_examples.setdefault(
                    rec.error_class or "unknown", rec.error_message[:EXAMPLE_CHARS]
                )
        if rec.warning:
            for w in rec.warning.split(";"):
                self.warnings[w.split(":", 1)[0].split("=", 1)[0]] += 1
        if rec.sent_s is not None:
            self.send_lag_s.append(rec.sent_s - rec.scheduled_s)
            when = (rec.scheduled_s, rec.sent_s)  # requests scheduled together: the one sent first
            if rec.status != STATUS_ERROR and (self.first is None or when < self.first[0]):
                self.first = (when, rec.cached_tokens)

    def send_lag_quantiles(self) -> dict[str, float | None]:
        if not self.send_lag_s:
            return {"p50": None, "p99": None, "max": None}
        lag = np.frombuffer(self.send_lag_s, dtype=np.float64)
        return {
            "p50": float(np.quantile(lag, 0.5)),
            "p99": float(np.quantile(lag, 0.99)),
            "max": float(lag.max()),
        }

    def summary(self) -> dict:
        """What meta.json and the end-of-run report say."""
        elapsed = time.monotonic() - self.started
        return {
            "requests": self.completed,
            "failed": self.failed,
            "error_rate": self.failed / self.completed if self.completed else 0.0,
            "errors": dict(self.errors),
            "error_examples": dict(self.error_examples),
            "warnings": dict(self.warnings),
            "output_tokens": self.tokens,
            "elapsed_s": elapsed,
            "send_lag_s": self.send_lag_quantiles(),
            "client_loop": self.client_loop,
        }
