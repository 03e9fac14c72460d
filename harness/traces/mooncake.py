"""Mooncake JSONL: one request per line, ``timestamp`` in ms, ``hash_ids`` of 512-token blocks."""

from __future__ import annotations

import json
from pathlib import Path

from harness.traces.frame import Trace
from harness.traces.rows import BadRow, ReadReport, RowCollector, decoded_lines, finite_float, positive_int

BLOCK_TOKENS = 512
FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def read_mooncake(path: Path, *, skip_bad: bool = False) -> tuple[Trace, ReadReport]:
    """Read a Mooncake trace (e.g. FAST'25 ``conversation_trace.jsonl``)."""
    sink = RowCollector(path, "mooncake", skip_bad=skip_bad, time_field="timestamp")
    for lineno, text in decoded_lines(path, sink):
        try:
            sink.add(lineno, *_parse(text))
        except BadRow as err:
            sink.bad(lineno, err)
    return sink.finish(time_scale=1e-3, block_tokens=BLOCK_TOKENS), sink.report


def _parse(text: str) -> tuple[float, int, int, list[int]]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRow(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise BadRow(f"expected a JSON object, got {type(obj).__name__}")
    for name in FIELDS:
        if name not in obj:
            raise BadRow("missing field", name)
    hash_ids = obj["hash_ids"]
    if not isinstance(hash_ids, list) or not all(type(h) is int for h in hash_ids):
        raise BadRow("hash_ids must be a list of integers", "hash_ids")
    if hash_ids and not (min(hash_ids) >= _INT64_MIN and max(hash_ids) <= _INT64_MAX):
        raise BadRow("hash_ids must fit in 64-bit signed integers", "hash_ids")
    return (
        finite_float(obj["timestamp"], "timestamp"),
        positive_int(obj["input_length"], "input_length"),
        positive_int(obj["output_length"], "output_length"),
        hash_ids,
    )
