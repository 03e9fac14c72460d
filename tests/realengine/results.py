"""Reading what a real-engine test produced: a run's records and the server's Prometheus counters."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families


def counter(text: str, name: str) -> float:
    """The value of a counter family in Prometheus exposition text (summed over its labels)."""
    for family in text_string_to_metric_families(text):
        if family.name == name:
            return sum(s.value for s in family.samples if s.name.endswith("_total") or s.name == name)
    raise KeyError(name)


def read_records(out: Path) -> list[dict]:
    """The run's records, from records.jsonl."""
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
