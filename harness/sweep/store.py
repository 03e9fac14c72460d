"""A sweep's output directory: one Parquet file per finished point, written the moment it finishes,
a journal of what was dispatched and finished, and the consolidated table.

    OUT/points/KEY.ok.parquet       one row: a point that finished (KEY.failed.parquet: one that failed)
    OUT/journal.jsonl               {"event": "dispatched" | "finished", "key", "time", ...} per line
    OUT/sweep.parquet               every point of the sweep file that has a row, in the file's order
    OUT/.lock                       held (flock) by the one sweep writing here

Each point file is written to a temporary name and renamed, so a sweep killed at any instant (SIGKILL
included) leaves only whole rows; the points on disk are what a re-run skips. ``sweep.parquet`` is
rewritten from them when a run ends, however it ends; ``read_rows`` rebuilds it at any time.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from harness.errors import ScenarioError
from harness.network.locks import FileLock

STATUSES = ("ok", "failed")


class SweepStore:
    """The output directory of one sweep (created on first use)."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.points_dir = self.out / "points"
        try:
            self.points_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ScenarioError(f"cannot create ({exc.strerror or exc})", where=str(self.out)) from None
        # One writer at a time: two sweeps into one directory would run the same points twice.
        self._lock = FileLock(self.out / ".lock")
        if not self._lock.acquire(blocking=False):
            raise ScenarioError("another sweep is writing here; wait for it, or give another --out",
                                where=str(self.out))  # fmt: skip
        self._journal = (self.out / "journal.jsonl").open("a", encoding="utf-8")

    def close(self) -> None:
        self._journal.close()
        self._lock.release()

    def status(self) -> dict[str, str]:
        """Every point with a row on disk: key -> "ok" or "failed"."""
        found: dict[str, str] = {}
        for path in self.points_dir.glob("*.parquet"):
            key, _, status = path.name.removesuffix(".parquet").partition(".")
            if status in STATUSES:
                found[key] = "ok" if found.get(key) == "ok" else status
        return found

    def dispatched(self, keys: Iterable[str]) -> None:
        """Journal that these points were handed to a worker (they run from now on)."""
        now = time.time()
        for key in keys:
            self._log({"event": "dispatched", "key": key, "time": now})

    def write(self, row: Mapping[str, Any]) -> None:
        """The finished point's row, whole or not at all; a failed row gives way to a later success."""
        key, status = row["key"], row["status"]
        path = self.points_dir / f"{key}.{status}.parquet"
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(pa.Table.from_pylist([dict(row)]), tmp)
        os.replace(tmp, path)
        if status == "ok":
            (self.points_dir / f"{key}.failed.parquet").unlink(missing_ok=True)
        self._log({"event": "finished", "key": key, "time": time.time(), "status": status})

    def consolidate(self, keys: Iterable[str]) -> Path:
        """Write ``sweep.parquet``: the rows of ``keys`` (the sweep file's points) found on disk, in order."""
        frame = read_rows(self.out, keys)
        path = self.out / "sweep.parquet"
        tmp = path.with_name(".sweep.parquet.tmp")
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        return path

    def _log(self, entry: Mapping[str, Any]) -> None:
        self._journal.write(json.dumps(entry) + "\n")
        self._journal.flush()


def read_rows(out: Path, keys: Iterable[str] | None = None) -> pd.DataFrame:
    """The point rows under ``out/points`` (only ``keys``, in their order, when given; a point's success
    outranks a failure left from an earlier run)."""
    points = Path(out) / "points"
    wanted = (
        list(keys) if keys is not None else sorted({p.name.split(".")[0] for p in points.glob("*.parquet")})
    )
    rows = []
    for key in wanted:
        for status in STATUSES:
            path = points / f"{key}.{status}.parquet"
            if path.is_file():
                rows += pq.read_table(path).to_pylist()
                break
    return pd.DataFrame(rows)


def journal(out: Path) -> list[dict[str, Any]]:
    """The journal's entries, in order."""
    path = Path(out) / "journal.jsonl"
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:  # the line a SIGKILL cut short
            continue
    return entries
