"""Shared machinery for line-oriented readers: decoding lines, collecting rows, and bad-row policy.

A reader turns each line into a row or raises ``BadRow`` naming the field. ``RowCollector`` either
turns that into a ``TraceError`` naming file, line and field, or (with ``skip_bad``) counts it and moves
on. It also enforces what every format shares: positive lengths and non-decreasing arrival times.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.errors import TraceError
from harness.traces.frame import DEFAULT_BLOCK_TOKENS, Trace, offsets_from_lengths, offsets_from_lists

_MAX_TOKENS = 2**40  # far above any context; keeps sums of lengths inside int64
_MAX_EXAMPLES = 5  # skipped-line messages kept for the report; the count is always exact


class BadRow(Exception):
    """One line a reader cannot use; ``field`` is the offending column or key, if any."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


@dataclass
class ReadReport:
    """What a reader did besides producing the trace."""

    path: str
    format: str
    rows: int = 0
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    failed_dropped: int = 0  # BurstGPT failed requests left out (keep_failed=False)
    failed_kept: int = 0  # BurstGPT failed requests kept, with output_tokens set to 1


def decoded_lines(path: Path, sink: RowCollector) -> Iterator[tuple[int, str]]:
    """(line number, text) for every non-blank line; undecodable lines go to ``sink.bad``."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # tolerate a leading BOM
            except UnicodeDecodeError as exc:
                sink.bad(lineno, BadRow(f"undecodable bytes (not UTF-8) at byte {exc.start}"))
                continue
            if text.strip():
                yield lineno, text


def positive_int(value: object, name: str) -> int:
    """An integer token count > 0 (accepts integral floats such as ``512.0``)."""
    if isinstance(value, bool):
        raise BadRow(f"{name} must be an integer, got {value!r}", name)
    if isinstance(value, str):
        value = value.strip()
        try:
            value = int(value)
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                raise BadRow(f"{name} must be an integer, got {value!r}", name) from None
    if isinstance(value, float):
        if not value.is_integer():
            raise BadRow(f"{name} must be an integer, got {value!r}", name)
        value = int(value)
    if not isinstance(value, int):
        raise BadRow(f"{name} must be an integer, got {value!r}", name)
    if value <= 0:
        raise BadRow(f"{name} must be positive, got {value}", name)
    if value > _MAX_TOKENS:
        raise BadRow(f"{name} is implausibly large ({value} tokens)", name)
    return value


def finite_float(value: object, name: str) -> float:
    """A finite number (from JSON or CSV text)."""
    if isinstance(value, bool):
        raise BadRow(f"{name} must be a number, got {value!r}", name)
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BadRow(f"{name} must be a number, got {value!r}", name) from None
    if not math.isfinite(out):
        raise BadRow(f"{name} must be finite, got {value!r}", name)
    return out


class RowCollector:
    """Accumulates valid rows; applies the bad-row policy (raise, or skip and count)."""

    def __init__(self, path: Path, fmt: str, *, skip_bad: bool, time_field: str) -> None:
        self.path = path
        self.skip_bad = skip_bad
        self.time_field = time_field
        self.report = ReadReport(path=str(path), format=fmt)
        self._times: list[float] = []  # in the file's unit; int nanoseconds for wall clocks
        self._inputs: list[int] = []
        self._outputs: list[int] = []
        self._hashes: list[list[int]] = []
        self._sessions: list[int] = []
        self._last_time = -math.inf

    def bad(self, lineno: int, err: BadRow) -> None:
        where = f"{self.path}: line {lineno}" + (f", field {err.field!r}" if err.field else "")
        if not self.skip_bad:
            raise TraceError(str(err), where=where)
        self.report.skipped += 1
        if len(self.report.skipped_examples) < _MAX_EXAMPLES:
            self.report.skipped_examples.append(f"{where}: {err}")

    def add(
        self,
        lineno: int,
        time: float,
        input_tokens: int,
        output_tokens: int,
        hash_ids: list[int] | None = None,
        session: int = -1,
    ) -> None:
        """Append one parsed row, after checking that time does not go backwards."""
        if time < self._last_time:
            self.bad(
                lineno,
                BadRow(f"timestamp goes backwards ({time:g} after {self._last_time:g})", self.time_field),
            )
            return
        self._last_time = time
        self._times.append(time)
        self._inputs.append(input_tokens)
        self._outputs.append(output_tokens)
        if hash_ids is not None:
            self._hashes.append(hash_ids)
        self._sessions.append(session)

    def finish(self, *, time_scale: float = 1.0, block_tokens: int = DEFAULT_BLOCK_TOKENS) -> Trace:
        """The collected rows as a ``Trace``, arrivals rebased to the first row and scaled to seconds."""
        n = len(self._times)
        if n == 0:
            detail = f" ({self.report.skipped} bad lines skipped)" if self.report.skipped else ""
            raise TraceError(f"no requests in file{detail}", where=str(self.path))
        self.report.rows = n
        # Rebase before converting: epoch nanoseconds (Azure) do not fit a float64 exactly.
        base = self._times[0]
        times = np.fromiter((t - base for t in self._times), dtype=np.float64, count=n)
        inputs = np.asarray(self._inputs, dtype=np.int64)
        if self._hashes:
            values, offsets = offsets_from_lists(self._hashes)
        else:
            values, offsets = unique_block_ids(inputs, block_tokens)
        sessions = np.asarray(self._sessions, dtype=np.int64)
        return Trace(
            arrival_s=times * time_scale,
            input_tokens=inputs,
            output_tokens=np.asarray(self._outputs, dtype=np.int64),
            hash_values=values,
            hash_offsets=offsets,
            session_id=sessions if (sessions >= 0).any() else None,
            block_tokens=block_tokens,
            source=str(self.path),
        )


def unique_block_ids(input_tokens: np.ndarray, block_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """ceil(input/block) fresh ids per request, never repeated: explicit "no prefix sharing"."""
    counts = -(-np.asarray(input_tokens, dtype=np.int64) // block_tokens)
    offsets = offsets_from_lengths(counts)
    return np.arange(offsets[-1], dtype=np.int64), offsets


def csv_records(
    path: Path, sink: RowCollector, required: tuple[str, ...]
) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, {column: text}) for each data line of a headed CSV, keyed by ``required`` names.

    A missing column is a file-level error (naming the header line); a line with the wrong number of
    fields goes to ``sink.bad``.
    """
    lines = decoded_lines(path, sink)
    first = next(lines, None)
    if first is None:
        raise TraceError("file is empty", where=str(path))
    header_line, header_text = first
    header = [h.strip() for h in next(csv.reader([header_text]))]
    missing = [name for name in required if name not in header]
    if missing:
        raise TraceError(
            f"missing column(s) {', '.join(missing)} (header has {', '.join(header)})",
            where=f"{path}: line {header_line}",
        )
    index = {name: header.index(name) for name in required}
    for lineno, text in lines:
        fields = next(csv.reader([text]))
        if len(fields) != len(header):
            sink.bad(lineno, BadRow(f"expected {len(header)} comma-separated fields, got {len(fields)}"))
            continue
        yield lineno, {name: fields[i] for name, i in index.items()}
