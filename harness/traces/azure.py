"""Azure LLM inference traces (2023 and 2024 releases): ``TIMESTAMP,ContextTokens,GeneratedTokens``.

Timestamps are wall-clock strings in two styles: 2023 ``2023-11-16 18:17:03.9799600`` (7 fractional
digits, no zone) and 2024 ``2024-05-10 00:00:00.009930+00:00`` (zone, precision varies by row). They
are parsed exactly to integer nanoseconds (``datetime`` stops at microseconds), and arrival is
seconds since the first row. The traces carry no prefix information, so every request gets its own
synthetic block ids: no prefix sharing.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from harness.traces.fastcsv import clean_trace, read_columns
from harness.traces.frame import Trace
from harness.traces.rows import BadRow, ReadReport, RowCollector, csv_records, positive_int

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_NS = 1_000_000_000


def read_azure(path: Path, *, skip_bad: bool = False) -> tuple[Trace, ReadReport]:
    """Read an Azure LLM inference trace CSV (2023 or 2024 timestamp style, or a mix)."""
    fast = _read_vectorised(path)
    if fast is not None:
        return fast, ReadReport(path=str(path), format="azure", rows=len(fast))
    return _read_lines(path, skip_bad=skip_bad)


def _read_lines(path: Path, *, skip_bad: bool) -> tuple[Trace, ReadReport]:
    """Line by line: slower, but names the line and field of every problem."""
    sink = RowCollector(path, "azure", skip_bad=skip_bad, time_field="TIMESTAMP")
    for lineno, rec in csv_records(path, sink, COLUMNS):
        try:
            ns = wall_clock_ns(rec["TIMESTAMP"])
            row = (
                positive_int(rec["ContextTokens"], "ContextTokens"),
                positive_int(rec["GeneratedTokens"], "GeneratedTokens"),
            )
        except BadRow as err:
            sink.bad(lineno, err)
            continue
        sink.add(lineno, ns, *row)
    return sink.finish(time_scale=1e-9), sink.report


def _read_vectorised(path: Path) -> Trace | None:
    """Clean files only (see ``fastcsv``); ``None`` sends the caller down the line-by-line path."""
    cols = read_columns(
        path, {"TIMESTAMP": pa.string(), "ContextTokens": pa.int64(), "GeneratedTokens": pa.int64()}
    )
    if cols is None or pc.any(pc.less(pc.utf8_length(cols["TIMESTAMP"]), 19)).as_py():
        return None  # pandas would also accept a bare date; the exact parser rejects it with a line number
    try:
        stamps = pd.to_datetime(cols["TIMESTAMP"].to_pandas(), format="ISO8601", utc=True)
    except (ValueError, OverflowError):
        return None
    ns = stamps.dt.as_unit("ns").astype("int64").to_numpy()
    seconds = (ns - ns[0]) / 1e9  # rebase in int64 first: epoch nanoseconds do not fit a float64
    return clean_trace(path, seconds, cols["ContextTokens"].to_numpy(), cols["GeneratedTokens"].to_numpy())


@lru_cache(maxsize=4096)
def _day_ns(date: str) -> int:
    """Nanoseconds from 0001-01-01 to midnight of ``YYYY-MM-DD`` (cached: a file spans few days)."""
    return dt.date.fromisoformat(date).toordinal() * 86_400 * _NS


def wall_clock_ns(text: str) -> int:
    """``YYYY-MM-DD HH:MM:SS[.f{1,9}][±HH:MM|Z]`` to integer nanoseconds (UTC when a zone is given)."""
    s = text.strip()
    try:
        if len(s) < 19 or s[10] not in " T":
            raise ValueError
        day = _day_ns(s[:10])
        rest, offset_s = s[11:], 0
        if rest.endswith("Z"):
            rest = rest[:-1]
        elif len(rest) >= 14 and rest[-6] in "+-" and rest[-3] == ":":
            sign = -1 if rest[-6] == "-" else 1
            offset_s = sign * (int(rest[-5:-3]) * 3600 + int(rest[-2:]) * 60)
            rest = rest[:-6]
        hms, _, frac = rest.partition(".")
        hh, mm, ss = hms.split(":")
        if not (len(hh) == len(mm) == len(ss) == 2 and hms.replace(":", "").isdigit()):
            raise ValueError
        if int(hh) > 23 or int(mm) > 59 or int(ss) > 60:
            raise ValueError
        if frac and not (frac.isdigit() and len(frac) <= 9):
            raise ValueError
        frac_ns = int(frac.ljust(9, "0")) if frac else 0
    except ValueError:
        raise BadRow(
            f"not a wall-clock timestamp like 2023-11-16 18:17:03.9799600: {text!r}", "TIMESTAMP"
        ) from None
    return day + (int(hh) * 3600 + int(mm) * 60 + int(ss) - offset_s) * _NS + frac_ns
