"""BurstGPT CSV: ``Timestamp`` (s), ``Model``, ``Request tokens``, ``Response tokens``, ``Total tokens``, ``Log Type``.

``Response tokens == 0`` marks a failed request. By default those rows are dropped (and counted);
with ``keep_failed`` they stay, with ``output_tokens = 1`` because a replayed request must ask for at
least one token: the arrival and its prefill load are kept, the missing response is not invented.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from harness.traces.fastcsv import clean_trace, read_columns
from harness.traces.frame import Trace
from harness.traces.rows import BadRow, ReadReport, RowCollector, csv_records, finite_float, positive_int

COLUMNS = ("Timestamp", "Request tokens", "Response tokens")


def read_burstgpt(
    path: Path, *, skip_bad: bool = False, keep_failed: bool = False
) -> tuple[Trace, ReadReport]:
    """Read a BurstGPT trace CSV; failed requests are dropped unless ``keep_failed``."""
    fast = _read_vectorised(path, keep_failed)
    return fast if fast is not None else _read_lines(path, skip_bad=skip_bad, keep_failed=keep_failed)


def _read_vectorised(path: Path, keep_failed: bool) -> tuple[Trace, ReadReport] | None:
    """Clean files only (see ``fastcsv``); ``None`` sends the caller down the line-by-line path."""
    cols = read_columns(
        path, {"Timestamp": pa.float64(), "Request tokens": pa.int64(), "Response tokens": pa.int64()}
    )
    if cols is None:
        return None
    time, inputs, outputs = (cols[c].to_numpy() for c in COLUMNS)
    failed = outputs == 0
    report = ReadReport(path=str(path), format="burstgpt")
    if keep_failed:
        outputs = np.where(failed, 1, outputs)
        report.failed_kept = int(failed.sum())
    elif failed.any():
        time, inputs, outputs = time[~failed], inputs[~failed], outputs[~failed]
        report.failed_dropped = int(failed.sum())
    if len(time) == 0 or not np.isfinite(time).all():
        return None
    trace = clean_trace(path, time, inputs, outputs)
    if trace is None:
        return None
    report.rows = len(trace)
    return trace, report


def _read_lines(path: Path, *, skip_bad: bool, keep_failed: bool) -> tuple[Trace, ReadReport]:
    """Line by line: slower, but names the line and field of every problem."""
    sink = RowCollector(path, "burstgpt", skip_bad=skip_bad, time_field="Timestamp")
    for lineno, rec in csv_records(path, sink, COLUMNS):
        try:
            time = finite_float(rec["Timestamp"], "Timestamp")
            request = positive_int(rec["Request tokens"], "Request tokens")
            response = rec["Response tokens"].strip()
            if response in ("0", "0.0"):
                if not keep_failed:
                    sink.report.failed_dropped += 1
                    continue
                sink.report.failed_kept += 1
                response = "1"
            output = positive_int(response, "Response tokens")
        except BadRow as err:
            sink.bad(lineno, err)
            continue
        sink.add(lineno, time, request, output)
    return sink.finish(), sink.report
