"""Reading run directories for analysis: records, metadata, time series and plan results.

A path given to ``analyze``/``report`` is either a run directory (``meta.json`` + records), a
directory that holds run directories one level down (what ``make bench`` writes: ``plan.json``,
``plan_sweep_<kind>.csv`` and one sub-directory per simulate/replay run), or another tool's result
file (vLLM bench serve, AIPerf, GuideLLM: ``harness.interop``), read as one run. Optional parts that are
missing or unreadable become ``notes`` so a figure can say so; the records themselves must be valid.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from harness.analysis.telemetry import own_topology, read_server_metrics
from harness.errors import HarnessError, InputError
from harness.records import RECORD_SCHEMA, iter_jsonl_records, read_meta, read_records

DEFAULT_TOPOLOGY = "default"


@dataclass(frozen=True)
class Run:
    """One simulate or replay run: its metadata, records, and optional time series."""

    path: Path
    meta: Mapping[str, Any]
    records: pd.DataFrame = field(repr=False)
    timeseries: pd.DataFrame | None = field(default=None, repr=False)
    server_metrics: pd.DataFrame | None = field(default=None, repr=False)  # long form, model seconds

    @property
    def run_id(self) -> str:
        return str(self.meta.get("run_id") or self.path.name)

    @property
    def source(self) -> str:
        """``simulate`` or ``replay`` (from meta, else the records' ``source`` column)."""
        src = self.meta.get("source")
        if not src and "source" in self.records.columns and len(self.records):
            vals = self.records["source"].dropna()
            src = vals.iloc[0] if len(vals) else None
        return str(src or "unknown")

    @property
    def backend(self) -> str | None:
        """The shaping backend (replay) or clock (simulate) the run recorded, if any."""
        for key in ("shaping_backend", "backend", "network_backend"):
            if self.meta.get(key):
                return str(self.meta[key])
        return None


@dataclass(frozen=True)
class Plan:
    """Analytic planner output stored beside runs: ``plan.json`` and ``plan_sweep_<kind>.csv``."""

    path: Path
    result: Mapping[str, Any] | None
    sweeps: Mapping[str, pd.DataFrame] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Bundle:
    """Everything found under the paths given on the command line."""

    runs: list[Run]
    plans: list[Plan]
    notes: list[str] = field(default_factory=list)
    capacity_ladder: Mapping[str, Any] | None = None  # bench's capacity_ladder.json, when given its dir

    def sweeps(self, kind: str) -> pd.DataFrame | None:
        """The first plan sweep of ``kind`` (``threshold``, ``split``, ``bandwidth``) found, if any."""
        for plan in self.plans:
            if kind in plan.sweeps:
                return plan.sweeps[kind]
        return None


def _bad_field(log: Path) -> str:
    # Arrow names neither line nor field; find the first value that does not fit the schema.
    for lineno, row in enumerate(iter_jsonl_records(log), 1):
        for f in RECORD_SCHEMA:
            try:
                pa.array([row.get(f.name)], type=f.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                return f"{log}:{lineno}: field {f.name!r} = {row.get(f.name)!r} is not {f.type}"
    return str(log)


def _read(path: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    try:
        meta = read_meta(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"meta.json is not valid JSON ({exc})", where=str(path)) from None
    try:
        return meta, read_records(path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        log = path / "records.jsonl"
        where = _bad_field(log) if "convert" in str(exc) and log.is_file() else str(path)
        raise InputError(
            f"unreadable records ({exc.__class__.__name__}: {str(exc)[:200]})", where=where
        ) from None


def _records(path: Path, df: pd.DataFrame, rename: str | None) -> pd.DataFrame:
    if "topology" not in df.columns:
        df["topology"] = DEFAULT_TOPOLOGY
    df["topology"] = df["topology"].fillna(DEFAULT_TOPOLOGY).replace("", DEFAULT_TOPOLOGY)
    if rename is not None:
        names = df["topology"].unique()
        if len(names) > 1:
            raise InputError(
                f"--name renames a single-topology run, but this one has {len(names)}: {sorted(names)}",
                where=str(path),
            )
        df["topology"] = rename
    return df


def _site(entity: str) -> str:
    # "local-p0" -> "local"; link directions ("remote->local") and bare names stay as they are.
    return entity if "->" in entity else entity.split("-")[0]


def tidy_timeseries(ts: pd.DataFrame, topology: str) -> pd.DataFrame | None:
    """Wide form: ``time_s``, ``topology`` and one numeric column per series.

    Accepts wide files (numeric columns beside ``time_s``) and long ones (``metric``/``value`` and an
    optional ``entity`` per instance or link): long series are summed per site (queues, batches) or
    averaged (rates, utilisations) and named ``"<metric> <site>"``. None when there is no time column.
    """
    ts = ts.rename(columns={"t_s": "time_s"}) if "time_s" not in ts.columns else ts
    if "time_s" not in ts.columns:
        return None
    if "topology" not in ts.columns:
        ts = ts.assign(topology=topology)
    if {"metric", "value"} <= set(ts.columns):
        group = ts["entity"].astype(str).map(_site) if "entity" in ts.columns else ""
        ts = ts.assign(series=ts["metric"].astype(str) + (" " + group if "entity" in ts.columns else ""))
        mean_like = ts["metric"].astype(str).str.contains("rate|util|share|fraction")
        summed = ts[~mean_like].pivot_table("value", ["topology", "time_s"], "series", aggfunc="sum")
        averaged = ts[mean_like].pivot_table("value", ["topology", "time_s"], "series", aggfunc="mean")
        ts = pd.concat([summed, averaged], axis=1).reset_index()
        ts.columns.name = None
    return ts


def _timeseries(path: Path, topology: str, notes: list[str]) -> pd.DataFrame | None:
    ts_path = path / "timeseries.parquet"
    if not ts_path.is_file():
        return None
    try:
        ts = tidy_timeseries(pd.read_parquet(ts_path), topology)
    except Exception as exc:  # a damaged optional file must not hide the records
        notes.append(f"{ts_path}: unreadable ({exc.__class__.__name__}: {exc}); time-series figures skip it")
        return None
    if ts is None:
        notes.append(f"{ts_path}: no time_s (or t_s) column; time-series figures skip it")
    return ts


def _json_object(path: Path, notes: list[str], what: str) -> dict[str, Any] | None:
    """The JSON object in ``path`` if there is one; a bad file becomes a note."""
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        notes.append(f"{path}: not valid JSON ({exc}); {what} skipped")
        return None
    if not isinstance(result, dict):
        notes.append(f"{path}: not a JSON object; {what} skipped")
        return None
    return result


def _plan(path: Path, notes: list[str]) -> Plan | None:
    result = _json_object(path / "plan.json", notes, "plan results")
    sweeps = {}
    for csv in sorted(path.glob("plan_sweep_*.csv")):
        try:
            sweeps[csv.stem.removeprefix("plan_sweep_")] = pd.read_csv(csv)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            notes.append(f"{csv}: unreadable ({exc.__class__.__name__}); sweep skipped")
    return Plan(path, result, sweeps) if result is not None or sweeps else None


def planner_sweeps(scenario_path: str | Path) -> dict[str, pd.DataFrame]:
    """Λ_max sweeps (threshold, split, bandwidth) computed by the planner for a scenario file."""
    from harness.model.deployment import deployment_from_scenario
    from harness.model.study import standard_sweeps
    from harness.scenario import load_scenario

    return standard_sweeps(deployment_from_scenario(load_scenario(scenario_path)))


def _computed_plan(runs: list[Run], notes: list[str]) -> Plan | None:
    # No sweep CSVs beside the runs: ask the planner about the scenario a run names, if it is here.
    for run in runs:
        scenario = run.meta.get("scenario_path") or run.meta.get("scenario")
        if isinstance(scenario, str) and Path(scenario).is_file():
            try:
                return Plan(Path(scenario), None, planner_sweeps(scenario))
            except HarnessError as exc:
                notes.append(f"planner sweeps for {scenario} failed: {exc}")
    return None


_TIME_COLUMNS = tuple(f.name for f in RECORD_SCHEMA if f.name.endswith("_s") and f.type == pa.float64())


def to_model_units(records: pd.DataFrame, meta: Mapping[str, Any]) -> pd.DataFrame:
    """Records of a replay against a sped-up emulator, in the modelled deployment's seconds.

    ``serve --speedup s`` runs ``s`` times faster than the deployment it models (design.md's scaling);
    a replay against it records ``time_scale = s`` in its meta, and every time here becomes ``s`` times
    longer, so replay, simulate and plan read in the same units. (KV byte counts need no scaling: the
    emulator reports the modelled bytes, and moves the scaled ones.) Other runs are returned unchanged.
    """
    scale = float(meta.get("time_scale") or 1.0)
    if scale == 1.0:
        return records
    out = records.copy()
    for col in _TIME_COLUMNS:
        if col in out.columns:
            out[col] = out[col] * scale
    if "itl_s" in out.columns:
        out["itl_s"] = [None if v is None else np.asarray(v, dtype=float) * scale for v in out["itl_s"]]
    return out


def load_run(path: str | Path, *, name: str | None = None, notes: list[str] | None = None) -> Run:
    """Read one run directory; ``name`` renames its (single) topology. Emulated runs are read in model
    units (``to_model_units``)."""
    p = Path(path)
    meta, records = _read(p)
    records = to_model_units(_records(p, records, name), meta)
    topologies = records["topology"].unique()
    ts = _timeseries(
        p, str(topologies[0]) if len(topologies) else DEFAULT_TOPOLOGY, notes if notes is not None else []
    )
    return Run(p, meta, records, ts, _server_metrics(p, meta, name, notes if notes is not None else []))


def load_foreign_run(path: str | Path, *, name: str | None = None) -> Run:
    """Another tool's result file (``harness.interop.read_foreign``) as a run of one topology."""
    from harness.interop import read_foreign

    p = Path(path)
    meta, records = read_foreign(p)
    return Run(p, meta, _records(p, records, name))


def _server_metrics(
    path: Path, meta: Mapping[str, Any], name: str | None, notes: list[str]
) -> pd.DataFrame | None:
    try:
        df = read_server_metrics(path, meta)
    except Exception as exc:  # a damaged optional file must not hide the records
        notes.append(
            f"{path}: server metrics unreadable ({exc.__class__.__name__}: {exc}); figures skip them"
        )
        return None
    # Renamed like the records, once the samples of other topologies (by their own name) are left out.
    return own_topology(df).assign(topology=name) if df is not None and name is not None else df


def load_bundle(paths: Iterable[str | Path], *, name: str | None = None) -> Bundle:
    """Find the runs and plan results under ``paths`` (each a run dir, or a dir of run dirs)."""
    runs: list[Run] = []
    plans: list[Plan] = []
    notes: list[str] = []
    ladder = None
    for raw in paths:
        p = Path(raw)
        if p.is_file():
            runs.append(load_foreign_run(p, name=name))
            notes += runs[-1].meta.get("notes") or []  # what the reader could not take from the file
            continue
        if not p.is_dir():
            raise InputError("no such run directory or result file", where=str(p))
        ladder = ladder or _json_object(p / "capacity_ladder.json", notes, "capacity ladder")
        plan = _plan(p, notes)
        if plan is not None:
            plans.append(plan)
        if (p / "meta.json").is_file():
            runs.append(load_run(p, name=name, notes=notes))
            continue
        children = sorted(c for c in p.iterdir() if (c / "meta.json").is_file())
        for child in children:
            runs.append(load_run(child, name=name, notes=notes))
            if (child_plan := _plan(child, notes)) is not None:
                plans.append(child_plan)
        if not children and plan is None:
            raise InputError(
                "not a run directory (no meta.json, plan.json or run sub-directories)", where=str(p)
            )
    if not any(p.sweeps for p in plans) and (computed := _computed_plan(runs, notes)) is not None:
        plans.append(computed)
    return Bundle(runs, plans, notes, ladder)
