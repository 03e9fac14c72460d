"""The harness's own trace format: one Parquet file, columns named as in ``Trace``.

    arrival_s      float64              seconds from trace start, non-decreasing
    input_tokens   int64                > 0
    output_tokens  int64                > 0
    hash_ids       large_list<int64>    prefix block ids, ``block_tokens`` tokens each
    session_id     int64, nullable      null when the request belongs to no session
    turn           int64, nullable      optional: the request's turn in its session (0 first)

Schema metadata key ``prfaas.trace`` holds JSON ``{"version": 1, "block_tokens": 512, "source": ...}``.
Parquet keeps the ragged ``hash_ids`` as offsets plus values, the same CSR layout as ``Trace``, so
reading and writing copy no per-request Python lists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from harness.errors import TraceError
from harness.traces.frame import DEFAULT_BLOCK_TOKENS, Trace
from harness.traces.rows import ReadReport

META_KEY = b"prfaas.trace"
VERSION = 1
MAGIC = b"PAR1"
_COLUMNS = ("arrival_s", "input_tokens", "output_tokens", "hash_ids")


def write_native(trace: Trace, path: str | os.PathLike) -> Path:
    """Write ``trace`` as native Parquet (atomically: a partial file never has the final name).

    An existing file is replaced only if it is Parquet: a raw trace (JSONL, CSV) given as the
    output by mistake is kept, not overwritten.
    """
    path = Path(path)
    _refuse_non_parquet(path)
    hash_ids = pa.LargeListArray.from_arrays(
        pa.array(trace.hash_offsets, pa.int64()), pa.array(trace.hash_values, pa.int64())
    )
    sessions = (
        pa.nulls(len(trace), pa.int64())
        if trace.session_id is None
        else pa.array(trace.session_id, pa.int64(), mask=trace.session_id < 0)
    )
    turns = (
        pa.nulls(len(trace), pa.int64())
        if trace.turn is None
        else pa.array(trace.turn, pa.int64(), mask=trace.turn < 0)
    )
    meta = {"version": VERSION, "block_tokens": int(trace.block_tokens), "source": trace.source}
    table = pa.table(
        {
            "arrival_s": pa.array(trace.arrival_s, pa.float64()),
            "input_tokens": pa.array(trace.input_tokens, pa.int64()),
            "output_tokens": pa.array(trace.output_tokens, pa.int64()),
            "hash_ids": hash_ids,
            "session_id": sessions,
            "turn": turns,
        }
    ).replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise TraceError(f"cannot write ({exc.strerror or exc})", where=str(path)) from None
    return path


def _refuse_non_parquet(path: Path) -> None:
    """Raise if ``path`` exists and is not Parquet or empty (so it is not ours to replace)."""
    if path.is_dir():
        raise TraceError("is a directory; give a file name for the Parquet trace", where=str(path))
    try:
        with path.open("rb") as f:
            head = f.read(len(MAGIC))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise TraceError(f"cannot check the existing file ({exc.strerror})", where=str(path)) from None
    if head and head != MAGIC:  # an empty file (from mktemp, say) holds nothing to lose
        raise TraceError(
            "exists and is not a Parquet trace; refusing to overwrite it (choose a new name)",
            where=str(path),
        )


def read_native(path: Path, *, skip_bad: bool = False) -> tuple[Trace, ReadReport]:
    """Read a native Parquet trace; bad rows (by 1-based row number) raise or, with ``skip_bad``, drop."""
    report = ReadReport(path=str(path), format="native")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise TraceError(f"not a readable Parquet trace ({exc})", where=str(path)) from None
    meta = _metadata(table, path)
    missing = [c for c in _COLUMNS if c not in table.column_names]
    if missing:
        raise TraceError(f"missing column(s) {', '.join(missing)}", where=str(path))
    if table.num_rows == 0:
        raise TraceError("no requests in file", where=str(path))
    arrival, no_arrival = _numeric(table, "arrival_s", np.float64, path)
    inputs, no_input = _numeric(table, "input_tokens", np.int64, path)
    outputs, no_output = _numeric(table, "output_tokens", np.int64, path)
    try:
        hashes = table.column("hash_ids").combine_chunks().cast(pa.large_list(pa.int64()))
    except (pa.ArrowException, TypeError):
        raise TraceError("column must be a list of integers", where=f"{path}: field 'hash_ids'") from None
    offsets = np.asarray(hashes.offsets, dtype=np.int64)
    values = hashes.flatten().to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    offsets = offsets - offsets[0]
    sessions = None
    if "session_id" in table.column_names and table.column("session_id").null_count < table.num_rows:
        sessions, _ = _numeric(table, "session_id", np.int64, path)
    turns = None
    if (
        sessions is not None
        and "turn" in table.column_names
        and table.column("turn").null_count < table.num_rows
    ):
        turns, _ = _numeric(table, "turn", np.int64, path)

    problems = [
        ("arrival_s", no_arrival, "is missing"),
        ("arrival_s", ~np.isfinite(arrival), "must be a finite number"),
        ("input_tokens", no_input, "is missing"),
        ("input_tokens", inputs <= 0, "must be positive"),
        ("output_tokens", no_output, "is missing"),
        ("output_tokens", outputs <= 0, "must be positive"),
        ("hash_ids", np.asarray(hashes.is_null()), "is missing"),
    ]
    bad, first = _bad_rows(arrival, problems)
    if first is not None:
        if not skip_bad:
            i, name, message = first
            raise TraceError(f"{name} {message}", where=f"{path}: row {i + 1}, field {name!r}")
        report.skipped = int(bad.sum())
        report.skipped_examples = [f"{path}: row {i + 1}" for i in np.flatnonzero(bad)[:5]]
    trace = Trace(
        arrival_s=arrival,
        input_tokens=inputs,
        output_tokens=outputs,
        hash_values=values,
        hash_offsets=offsets,
        session_id=sessions,
        turn=turns,
        block_tokens=meta.get("block_tokens", DEFAULT_BLOCK_TOKENS),
        source=str(path),
    )
    if bad.any():
        trace = trace.take(~bad)
        if len(trace) == 0:
            raise TraceError(f"no requests in file ({report.skipped} bad rows skipped)", where=str(path))
    report.rows = len(trace)
    return trace, report


def _bad_rows(
    arrival: np.ndarray, problems: list[tuple[str, np.ndarray, str]]
) -> tuple[np.ndarray, tuple[int, str, str] | None]:
    """Mask of unusable rows, and the earliest problem as (row index, field, message).

    Time going backwards is judged against the latest *usable* earlier row, as the line readers do.
    """
    bad = np.zeros(len(arrival), dtype=bool)
    first: tuple[int, str, str] | None = None

    def note(i: int, name: str, message: str) -> None:
        nonlocal first
        if first is None or i < first[0]:
            first = (i, name, message)

    for name, mask, message in problems:
        bad |= mask
        if mask.any():
            note(int(np.argmax(mask)), name, message)
    prior_max = np.concatenate([[-np.inf], np.maximum.accumulate(np.where(bad, -np.inf, arrival))[:-1]])
    backwards = ~bad & (arrival < prior_max)
    if backwards.any():
        i = int(np.argmax(backwards))
        note(i, "arrival_s", f"goes backwards ({arrival[i]:g} after {prior_max[i]:g})")
        bad |= backwards
    return bad, first


def _metadata(table: pa.Table, path: Path) -> dict:
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
        block = int(meta.get("block_tokens", DEFAULT_BLOCK_TOKENS))
    except (ValueError, TypeError, AttributeError):
        raise TraceError(f"unreadable {META_KEY.decode()} metadata", where=str(path)) from None
    if block <= 0:
        raise TraceError(f"block_tokens must be positive, got {block}", where=f"{path}: metadata")
    return {**meta, "block_tokens": block}


def _numeric(table: pa.Table, name: str, dtype: type, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Column ``name`` as ``dtype`` with nulls filled by -1, and the null mask."""
    col = table.column(name)
    nulls = np.asarray(col.is_null(), dtype=bool)
    try:
        values = col.cast(pa.from_numpy_dtype(dtype)).fill_null(-1).to_numpy()
    except (pa.ArrowException, TypeError):
        raise TraceError(
            f"column must be {np.dtype(dtype).name}, got {col.type}", where=f"{path}: field {name!r}"
        ) from None
    return values, nulls
