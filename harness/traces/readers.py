"""``read_trace``: detect a trace file's format and read it into a ``Trace``.

Detection looks at the extension and the first bytes: Parquet magic (or ``.parquet``) means native; a
first line that opens a JSON object means Mooncake; a CSV header with ``ContextTokens`` means Azure
(2023 or 2024 timestamps), with ``Request tokens`` means BurstGPT. ``fmt`` overrides detection.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.errors import TraceError
from harness.traces.azure import read_azure
from harness.traces.burstgpt import read_burstgpt
from harness.traces.frame import Trace
from harness.traces.mooncake import read_mooncake
from harness.traces.native import MAGIC, read_native
from harness.traces.rows import ReadReport

FORMATS = ("mooncake", "azure", "burstgpt", "native")
_SNIFF_BYTES = 4096


def read_trace(
    path: str | os.PathLike, fmt: str | None = None, *, skip_bad: bool = False, keep_failed: bool = False
) -> Trace:
    """Read a trace file (format detected unless ``fmt`` is one of ``FORMATS``).

    Bad lines raise ``TraceError`` naming file, line and field; with ``skip_bad`` they are skipped
    (see ``read_trace_report`` for how many). ``keep_failed`` keeps BurstGPT's failed requests.
    """
    return read_trace_report(path, fmt, skip_bad=skip_bad, keep_failed=keep_failed)[0]


def read_trace_report(
    path: str | os.PathLike, fmt: str | None = None, *, skip_bad: bool = False, keep_failed: bool = False
) -> tuple[Trace, ReadReport]:
    """Like ``read_trace``, also returning the ``ReadReport`` (rows read, lines skipped, failed rows)."""
    path = Path(path)
    if not path.is_file():
        raise TraceError("no such file" if not path.exists() else "not a regular file", where=str(path))
    fmt = fmt or detect_format(path)
    if fmt == "mooncake":
        return read_mooncake(path, skip_bad=skip_bad)
    if fmt == "azure":
        return read_azure(path, skip_bad=skip_bad)
    if fmt == "burstgpt":
        return read_burstgpt(path, skip_bad=skip_bad, keep_failed=keep_failed)
    if fmt == "native":
        return read_native(path, skip_bad=skip_bad)
    raise TraceError(f"unknown trace format {fmt!r} (known: {', '.join(FORMATS)})", where=str(path))


def detect_format(path: Path) -> str:
    """The format name of ``path``, from its extension and first line."""
    try:
        with path.open("rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError as exc:
        raise TraceError(f"cannot read file ({exc.strerror})", where=str(path)) from None
    if not head.strip():
        raise TraceError("file is empty", where=str(path))
    if head.startswith(MAGIC) or path.suffix.lower() == ".parquet":
        return "native"
    first = head.removeprefix(b"\xef\xbb\xbf").lstrip().split(b"\n", 1)[0].decode("utf-8", errors="replace")
    if first.startswith("{"):
        return "mooncake"
    header = {h.strip() for h in first.split(",")}
    if "ContextTokens" in header:
        return "azure"
    if "Request tokens" in header:
        return "burstgpt"
    raise TraceError(
        f"cannot tell the trace format from the first line {first[:80]!r}; pass --format ({', '.join(FORMATS)})",
        where=str(path),
    )
