"""BurstGPT CSV: ``Timestamp`` (s), ``Model``, ``Request tokens``, ``Response tokens``, ``Total tokens``, ``Log Type``.

``Response tokens == 0`` marks a failed request. By default those rows are dropped (and counted);
with ``keep_failed`` they stay, with ``output_tokens = 1`` because a replayed request must ask for at
least one token: the arrival and its prefill load are kept, the missing response is not invented.
"""

from __future__ import annotations

from pathlib import Path

from harness.traces.frame import Trace
from harness.traces.rows import BadRow, ReadReport, RowCollector, csv_records, finite_float, positive_int

COLUMNS = ("Timestamp", "Request tokens", "Response tokens")


def read_burstgpt(
    path: Path, *, skip_bad: bool = False, keep_failed: bool = False
) -> tuple[Trace, ReadReport]:
    """Read a BurstGPT trace CSV; failed requests are dropped unless ``keep_failed``."""
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
