"""Running one topology over a trace in virtual time, and the run directory ``simulate`` writes.

The figures of a run are not computed here: they are ``analyze``'s (``harness.analysis.summary``, on
``harness.analysis.metrics``), applied to the very records the run writes, so ``simulate --json`` and
``analyze --json`` of the same run directory agree to the last digit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from harness.analysis.summary import Slo, summarize
from harness.records import RequestRecord, RunWriter, records_frame
from harness.serving.build import StackSpec, TopologyPlan, build_cluster
from harness.serving.cluster import Cluster, Outcome
from harness.serving.simulation import TimeSeries, requests_from_trace, simulate_requests, to_record
from harness.traces.frame import Trace
from harness.traces.sessions import SessionPlan


@dataclass(frozen=True)
class RunSummary:
    """Per-topology figures of one simulated run.

    All but the last two are ``analyze``'s figures of the same records, under the same names (None where
    a figure is undefined); ``cache_block_hit_rate`` and ``link_bytes`` come from the simulator's own
    counters, which records do not hold.
    """

    requests: int
    failed: int
    duration_s: float | None
    throughput_rps: float | None
    goodput_rps: float | None
    slo_attainment: float | None
    ttft_p50_s: float | None
    ttft_p90_s: float | None
    ttft_p99_s: float | None
    tpot_p50_s: float | None
    tpot_p90_s: float | None
    tpot_p99_s: float | None
    kv_bytes_total: int | None
    offload_share: float | None
    cache_hit_rate: float | None
    cache_block_hit_rate: float = 0.0
    link_bytes: dict[str, int] = field(default_factory=dict)


_ANALYZE_FIGURES = tuple(f.name for f in fields(RunSummary))[:-2]


@dataclass(frozen=True)
class TopologyRun:
    """One topology simulated over one trace: its records as ``analyze`` reads them, and its figures."""

    records: pd.DataFrame = field(repr=False)  # every record; ITL lists left out (nothing here reads them)
    summary: RunSummary


def _summary(records: pd.DataFrame, slo: Slo, cluster: Cluster) -> RunSummary:
    figures = summarize(records, slo)
    caches = [s.cache for s in cluster.sites.values() if s.cache is not None]
    looked = sum(c.lookup_blocks for c in caches)
    links = cluster.links.values()
    return RunSummary(
        **{name: figures[name] for name in _ANALYZE_FIGURES},
        cache_block_hit_rate=sum(c.hit_blocks for c in caches) / looked if looked else 0.0,
        link_bytes={link.name: link.bytes_total for link in links},
    )


def run_topology(
    stack: StackSpec,
    topo: TopologyPlan,
    trace: Trace,
    *,
    slo: Slo | None = None,
    run_id: str = "sim",
    label: str | None = None,
    sink: Callable[[RequestRecord], None] | None = None,
    series: TimeSeries | None = None,
    sample_interval_s: float = 1.0,
    sessions: SessionPlan | None = None,
) -> TopologyRun:
    """Simulate ``trace`` through one topology; records go to ``sink`` as requests finish.

    ``sessions`` (its ``session_plan``): session mode, each later turn sent after its predecessor ended.

    ``slo`` (default: no bounds) is what the summary's goodput and attainment count against.
    """
    topology = label or topo.name
    rows: list[dict[str, Any]] = []

    def collect(out: Outcome) -> None:
        rec = to_record(out, run_id=run_id, topology=topology)
        if sink is not None:
            sink(rec)
        row = rec.to_dict()
        row["itl_s"] = None  # the bulk of a record; kept only by the sink
        rows.append(row)

    cluster = simulate_requests(
        lambda: build_cluster(stack, topo),
        requests_from_trace(trace),
        len(trace),
        collect,
        series=series,
        sample_interval_s=sample_interval_s,
        sessions=sessions,
    )
    records = records_frame(rows)
    return TopologyRun(records, _summary(records, slo or Slo(), cluster))


class RunDirectory:
    """The run directory of one ``simulate``: records streamed as they end, the time series of every
    run, and ``meta.json`` with the summary. A context manager; an interrupted run keeps its records
    and is marked incomplete (``RunWriter``)."""

    def __init__(self, path: Path, meta: dict[str, Any], *, run_id: str, sample_interval_s: float) -> None:
        self.path, self.run_id, self.sample_interval_s = path, run_id, sample_interval_s
        self._writer = RunWriter(path, meta)
        self._series: list[pd.DataFrame] = []

    def run(
        self,
        stack: StackSpec,
        topo: TopologyPlan,
        trace: Trace,
        *,
        label: str,
        slo: Slo,
        sessions: SessionPlan | None = None,
    ) -> TopologyRun:
        """Simulate one topology, its records labelled ``label``, into this directory."""
        series = TimeSeries()
        result = run_topology(
            stack,
            topo,
            trace,
            slo=slo,
            run_id=self.run_id,
            label=label,
            sink=self._writer.write,
            series=series,
            sample_interval_s=self.sample_interval_s,
            sessions=sessions,
        )
        frame = pd.DataFrame(vars(series))
        frame.insert(0, "topology", label)
        self._series.append(frame)
        return result

    def finish(self, summary: dict[str, Any]) -> None:
        """Write the time series and put ``summary`` into meta.json (before the writer closes)."""
        if self._series:
            pd.concat(self._series, ignore_index=True).to_parquet(
                self.path / "timeseries.parquet", index=False
            )
        self._writer.update_meta(summary=summary)

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._writer.__exit__(*exc)
