"""Recognising another tool's result file by its content, and dispatching reads and exports."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from harness.errors import InputError
from harness.interop import aiperf, guidellm, llmd, vllm_bench
from harness.jsonsafe import json_safe
from harness.records import records_frame

if TYPE_CHECKING:
    from harness.analysis.runs import Bundle

# name -> (looks_like(obj), to_records(obj, run_id=, where=), meta_of(obj, run_id=, path=))
_READERS: dict[str, tuple[Callable[..., Any], ...]] = {
    vllm_bench.FORMAT: (vllm_bench.looks_like, vllm_bench.to_records, vllm_bench.meta_of),
    aiperf.FORMAT: (aiperf.looks_like, aiperf.to_records, aiperf.meta_of),
    guidellm.FORMAT: (guidellm.looks_like, guidellm.to_records, guidellm.meta_of),
}
# name -> from_records(records, meta, label=) giving the JSON object to write
EXPORTS: dict[str, Callable[..., dict[str, Any]]] = {
    "vllm": vllm_bench.from_records,
    "llm-d": llmd.from_records,
}
_KNOWN = "vLLM bench serve (--save-result --save-detailed), AIPerf (profile_export.jsonl) or GuideLLM (benchmarks.json)"


def _load(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"unreadable ({exc.__class__.__name__}: {exc})", where=str(path)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    rows = []  # JSON Lines (AIPerf's per-request export)
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise InputError(f"line {number}: neither JSON nor JSON Lines", where=str(path)) from None
    return rows


def _detect(obj: Any) -> str | None:
    return next((name for name, (looks, *_) in _READERS.items() if looks(obj)), None)


def is_foreign(path: str | Path) -> bool:
    """Whether ``path`` is a file in a format ``read_foreign`` reads (False for anything else)."""
    p = Path(path)
    try:
        return p.is_file() and _detect(_load(p)) is not None
    except InputError:
        return False


def read_foreign(path: str | Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """``(meta, records)`` of another tool's result file, the records in our schema (``records.py``).

    Raises ``InputError`` naming the file when its format is not one of those read here.
    """
    p = Path(path)
    obj = _load(p)
    name = _detect(obj)
    if name is None:
        raise InputError(f"not a result file of {_KNOWN}, nor a run directory", where=str(p))
    _, to_records, meta_of = _READERS[name]
    # The parent directory too: tools write fixed names (GuideLLM's benchmarks.json), one per result dir.
    run_id = f"{name}:{p.parent.name}/{p.stem}" if p.parent.name else f"{name}:{p.stem}"
    return meta_of(obj, run_id=run_id, path=str(p)), records_frame(
        to_records(obj, run_id=run_id, where=str(p))
    )


def export_run(fmt: str, records: pd.DataFrame, meta: Mapping[str, Any], *, label: str) -> dict[str, Any]:
    """One topology's records in export format ``fmt`` (a key of ``EXPORTS``), as a JSON object."""
    return EXPORTS[fmt](records, meta, label=label)


def _file_name(run_id: str, topology: str, fmt: str) -> str:
    stem = f"{run_id}-{topology}" if topology != "default" else run_id
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) + f".{fmt}.json"


def write_exports(bundle: Bundle, fmt: str, out_dir: str | Path) -> list[Path]:
    """Every (run, topology) of ``bundle`` exported as ``fmt`` into ``out_dir``; the paths written."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"cannot create the export directory ({exc.strerror or exc})", where=str(out)
        ) from None
    written = []
    for run in bundle.runs:
        for topology, df in run.records.groupby("topology", sort=True, observed=True):
            label = str(topology)
            doc = json_safe(export_run(fmt, df, run.meta, label=label))
            path = out / _file_name(run.run_id, label, fmt)
            path.write_text(json.dumps(doc, allow_nan=False) + "\n", encoding="utf-8")
            written.append(path)
    return written
