"""The servers' series of a replay, stored beside its records: ``server_metrics.jsonl`` appended as they
are scraped (``harness.loadgen.telemetry``), ``server_metrics.parquet`` written from it at the end.

Long form, one row per sample: ``time_s`` (the records' run clock), ``topology`` (the endpoint run),
``server`` (the root scraped), ``metric`` (the sample name), ``labels`` (sorted JSON), ``value``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from harness.records import iter_jsonl_records

FILE_STEM = "server_metrics"
SCHEMA = pa.schema([
    ("time_s", pa.float64()), ("topology", pa.string()), ("server", pa.string()), ("metric", pa.string()),
    ("labels", pa.string()), ("value", pa.float64()),
])  # fmt: skip


@dataclass
class TelemetryLog:
    """``server_metrics.jsonl`` in a run directory, appended under a lock by every scraper; ``close()``
    writes ``server_metrics.parquet`` from it (none when nothing was scraped)."""

    run_dir: Path
    rows: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _fh: Any = field(default=None, repr=False)

    @property
    def path(self) -> Path:
        return self.run_dir / f"{FILE_STEM}.jsonl"

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append rows (any thread); they reach the kernel before this returns."""
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)
        with self._lock:
            if self._fh is None:
                self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            self._fh.write(text)
            self._fh.flush()  # in the kernel before the next scrape: a killed run keeps it
            self.rows += len(rows)

    def close(self) -> None:
        """Close the log and write the Parquet file (nothing when no sample was scraped)."""
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
        if self.path.is_file():
            write_parquet(self.run_dir)


def write_parquet(run_dir: Path) -> Path:
    """``server_metrics.parquet`` from the run directory's log."""
    rows = list(iter_jsonl_records(run_dir / f"{FILE_STEM}.jsonl"))
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    out = run_dir / f"{FILE_STEM}.parquet"
    pq.write_table(table, out)
    return out
