"""Per-request records: one schema for ``simulate`` and ``replay``, and a run directory that survives Ctrl-C.

A run directory holds::

    meta.json          configuration, versions, machine, seed, shaping backend; ``complete`` flips to
                       true only when the run ends normally
    records.jsonl      one record per line, written as each request ends (the durable log)
    records.parquet    the same records, columnar; written when the run closes
    timeseries.parquet optional: queue depths, batch sizes, link utilisation over time

All times are seconds on the run's own clock (virtual time in ``simulate``, ``time.monotonic()``
minus the run start in ``replay``). Latencies count from ``scheduled_s`` so a late client never
hides a slow server (no coordinated omission).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import socket
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from harness import __version__
from harness.errors import InputError

STATUS_OK = "ok"
STATUS_ERROR = "error"


@dataclass(slots=True)
class RequestRecord:
    """One request, as seen by whoever produced it (simulator or load generator).

    Optional fields are None when the producer could not observe them (a real server that does not
    report its route, say).
    """

    run_id: str
    topology: str
    request_id: str
    trace_row: int
    scheduled_s: float
    sent_s: float | None = None
    first_byte_s: float | None = None
    first_token_s: float | None = None
    last_token_s: float | None = None
    # Gaps between successive generated tokens, seconds (len = output_tokens_received - 1 when the
    # tokens per chunk are known; a chunk of k tokens gives k gaps of its gap / k, see loadgen/chunks.py).
    itl_s: list[float] = field(default_factory=list)
    # Generated tokens per token-bearing chunk: mean, and max (None when the server packed tokens
    # without per-chunk counts). itl_unresolved: the gaps do not resolve tokens (most tokens came in
    # one read, or packed without counts).
    tokens_per_chunk: float | None = None
    tokens_per_chunk_max: int | None = None
    itl_unresolved: bool = False
    prompt_tokens_trace: int = 0
    prompt_tokens_server: int | None = None
    output_tokens_requested: int = 0
    output_tokens_received: int = 0
    cached_tokens: int | None = None
    # Routing: route is the policy's decision ("local", "remote", "colocated"); sites and instances
    # name where prefill and decode ran.
    route: str | None = None
    prefill_site: str | None = None
    prefill_instance: str | None = None
    decode_site: str | None = None
    decode_instance: str | None = None
    # Server-side phase boundaries (same clock), for the TTFT breakdown.
    prefill_queue_s: float | None = None
    prefill_start_s: float | None = None
    prefill_end_s: float | None = None
    kv_bytes: int | None = None
    kv_transfer_start_s: float | None = None
    kv_transfer_end_s: float | None = None
    decode_start_s: float | None = None
    status: str = STATUS_OK
    error_class: str | None = None
    error_message: str | None = None
    source: str = ""  # "simulate" | "replay"
    endpoint: str | None = None
    # "warmup" | "measure" | "cooldown": analysis counts only "measure"; the others are kept, not dropped.
    phase: str = "measure"
    # Non-fatal findings on a successful request, ";"-separated (e.g. "usage_mismatch:prompt=1030/1024").
    warning: str | None = None
    # When the request ended, ok or failed (run clock): a failure's end counts in the run's duration.
    end_s: float | None = None
    # Session mode: the request's session and turn (0 first), and when its previous turn ended (run
    # clock): it was sent no earlier than that end plus its think time.
    session_id: int | None = None
    turn: int | None = None
    predecessor_end_s: float | None = None

    @property
    def send_lag_s(self) -> float | None:
        return None if self.sent_s is None else self.sent_s - self.scheduled_s

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.scheduled_s

    def to_dict(self) -> dict[str, Any]:
        # Shallow on purpose: dataclasses.asdict deep-copies every ITL float (ms per record at 1K tokens).
        return {name: getattr(self, name) for name in RECORD_FIELDS}


RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(RequestRecord))

_F, _I, _S = pa.float64(), pa.int64(), pa.string()
RECORD_SCHEMA = pa.schema(
    [
        ("run_id", _S), ("topology", _S), ("request_id", _S), ("trace_row", _I),
        ("scheduled_s", _F), ("sent_s", _F), ("first_byte_s", _F), ("first_token_s", _F),
        ("last_token_s", _F), ("itl_s", pa.list_(_F)),
        ("tokens_per_chunk", _F), ("tokens_per_chunk_max", _I), ("itl_unresolved", pa.bool_()),
        ("prompt_tokens_trace", _I), ("prompt_tokens_server", _I),
        ("output_tokens_requested", _I), ("output_tokens_received", _I), ("cached_tokens", _I),
        ("route", _S), ("prefill_site", _S), ("prefill_instance", _S), ("decode_site", _S),
        ("decode_instance", _S), ("prefill_queue_s", _F), ("prefill_start_s", _F), ("prefill_end_s", _F),
        ("kv_bytes", _I), ("kv_transfer_start_s", _F), ("kv_transfer_end_s", _F), ("decode_start_s", _F),
        ("status", _S), ("error_class", _S), ("error_message", _S), ("source", _S), ("endpoint", _S),
        ("phase", _S), ("warning", _S), ("end_s", _F), ("session_id", _I), ("turn", _I),
        ("predecessor_end_s", _F),
    ]
)  # fmt: skip
assert tuple(RECORD_SCHEMA.names) == RECORD_FIELDS, "RECORD_SCHEMA must follow RequestRecord's fields"


def new_run_id(prefix: str = "run") -> str:
    """A sortable, unique run id: ``<prefix>-YYYYmmdd-HHMMSS-xxxx``."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def machine_info() -> dict[str, Any]:
    """What a reader of the results needs to know about where they were produced."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("aiohttp", "numpy", "pandas", "pyarrow", "plotly", "click", "pyroute2"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[pkg] = md.version(pkg)
    return {
        "harness_version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpus": os.cpu_count(),
        "packages": versions,
    }


def _clean(value: Any) -> Any:
    # JSON has no NaN/inf; store them as null so every line stays valid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunWriter:
    """Streams records to ``run_dir`` as they arrive; ``close()`` writes Parquet and marks the run done.

    Use as a context manager: on an exception or Ctrl-C the JSONL log is flushed, Parquet is still
    written from it, and ``meta.json`` says ``complete: false`` with the reason.
    """

    def __init__(self, run_dir: str | Path, meta: Mapping[str, Any]) -> None:
        self.run_dir = Path(run_dir)
        if (self.run_dir / "meta.json").exists() or (self.run_dir / "records.jsonl").exists():
            # Appending would mix two runs' records under the second run's meta.json.
            raise InputError("already holds a run; give a new directory or remove it", where=str(run_dir))
        self.meta: dict[str, Any] = {"started_at": time.time(), **machine_info(), **meta, "complete": False}
        try:  # an unusable --out is the user's to fix: one line naming it, before any work starts
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_meta()
            self._log = open(self.run_dir / "records.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise InputError(
                f"cannot write the run directory ({exc.strerror or exc})", where=str(run_dir)
            ) from None
        self.count = 0
        self._closed = False

    def _write_meta(self) -> None:
        tmp = self.run_dir / "meta.json.tmp"
        tmp.write_text(json.dumps(self.meta, indent=2, default=str, sort_keys=True) + "\n")
        tmp.replace(self.run_dir / "meta.json")

    def write(self, record: RequestRecord) -> None:
        """Append one record; it reaches the kernel before this returns (survives a crash)."""
        line = json.dumps({k: _clean(v) for k, v in record.to_dict().items()}, separators=(",", ":"))
        self._log.write(line + "\n")
        self._log.flush()
        self.count += 1

    def write_many(self, records: Iterable[RequestRecord]) -> None:
        for r in records:
            self.write(r)

    def update_meta(self, **changes: Any) -> None:
        self.meta.update(changes)
        self._write_meta()

    def close(self, *, complete: bool = True, reason: str | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        self._log.close()
        write_parquet(self.run_dir)
        self.meta.update(complete=complete, finished_at=time.time(), records=self.count)
        if reason:
            self.meta["incomplete_reason"] = reason
        self._write_meta()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            reason = (
                "interrupted" if issubclass(exc_type, KeyboardInterrupt) else f"{exc_type.__name__}: {exc}"
            )
            self.close(complete=False, reason=reason)


def iter_jsonl_records(path: Path) -> Iterator[dict[str, Any]]:
    """Read a records.jsonl log, tolerating a torn last line (a run killed mid-write)."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if line.endswith("\n"):
                    raise InputError(f"line {number}: corrupt record line", where=str(path)) from None
                return  # torn final line: everything before it is intact
            if not isinstance(row, dict):
                raise InputError(f"line {number}: a record must be a JSON object", where=str(path))
            yield row


def _records_table(rows: list[Mapping[str, Any]]) -> pa.Table:
    cols = {name: [row.get(name) for row in rows] for name in RECORD_FIELDS}
    return pa.table(cols, schema=RECORD_SCHEMA)


def records_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Record dicts (``RequestRecord.to_dict()``) as the DataFrame ``read_records`` gives: same columns,
    same dtypes, so a metric computed on either is the same number. Missing fields are null."""
    return _records_table(list(rows)).to_pandas()


def write_parquet(run_dir: str | Path) -> Path:
    """(Re)build records.parquet from the JSONL log, in batches so memory stays bounded."""
    run_dir = Path(run_dir)
    src, dst = run_dir / "records.jsonl", run_dir / "records.parquet"
    tmp = dst.with_suffix(".parquet.tmp")
    with pq.ParquetWriter(tmp, RECORD_SCHEMA) as writer:
        batch: list[dict[str, Any]] = []
        for row in iter_jsonl_records(src) if src.exists() else ():
            batch.append(row)
            if len(batch) >= 5000:
                writer.write_table(_records_table(batch))
                batch.clear()
        writer.write_table(_records_table(batch))
    tmp.replace(dst)
    return dst


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "meta.json"
    if not path.is_file():
        raise InputError("not a run directory (no meta.json)", where=str(run_dir))
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"meta.json is not valid JSON ({exc})", where=str(run_dir)) from None
    if not isinstance(meta, dict):
        raise InputError(f"meta.json must be a JSON object, got {type(meta).__name__}", where=str(run_dir))
    return meta


def read_records(run_dir: str | Path) -> pd.DataFrame:
    """All records of a run as a DataFrame (Parquet when the run closed, else the JSONL log)."""
    run_dir = Path(run_dir)
    pq_path, log = run_dir / "records.parquet", run_dir / "records.jsonl"
    if pq_path.is_file() and (not log.exists() or pq_path.stat().st_mtime >= log.stat().st_mtime):
        return pq.read_table(pq_path).to_pandas()
    if log.is_file():
        return records_frame(iter_jsonl_records(log))
    raise InputError("no records.parquet or records.jsonl", where=str(run_dir))
