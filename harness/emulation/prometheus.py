"""Prometheus text exposition (format 0.0.4) from plain samples: a pure renderer, no client library."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class MetricFamily:
    """One Prometheus metric family: ``kind`` is "gauge", "counter" or "histogram"; samples are
    (name suffix, labels, value)."""

    name: str
    kind: str
    help: str
    samples: list[tuple[str, Mapping[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> MetricFamily:
        self.samples.append(("", labels, value))
        return self

    def add_totals(self, total: float, count: float, **labels: str) -> MetricFamily:
        """A histogram's sum and count, with the one bucket they imply (every observation is <= +Inf):
        what a reader of means (``_sum`` / ``_count``) needs, in a valid exposition."""
        self.samples.append(("_bucket", {**labels, "le": "+Inf"}, count))
        self.samples.append(("_sum", labels, total))
        self.samples.append(("_count", labels, count))
        return self


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


def render(metrics: Iterable[MetricFamily]) -> str:
    """The exposition text for ``metrics``: HELP and TYPE lines, then one line per sample."""
    lines: list[str] = []
    for m in metrics:
        lines.append(f"# HELP {m.name} {m.help}")
        lines.append(f"# TYPE {m.name} {m.kind}")
        for suffix, labels, value in m.samples:
            label_text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
            name = m.name + suffix
            lines.append(
                f"{name}{{{label_text}}} {_number(value)}" if label_text else f"{name} {_number(value)}"
            )
    return "\n".join(lines) + "\n"
