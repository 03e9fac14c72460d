"""Test scaffolding: synthetic run directories with known timings, for the analysis and report tests.

Each topology is described by a :class:`SyntheticTopology` (arrival rate, phase durations, route
mix); requests get those durations times a seeded log-normal jitter, so every figure has data and
results are reproducible. Nothing here is a measurement.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from harness.records import STATUS_ERROR, RequestRecord, RunWriter


@dataclass(frozen=True, slots=True)
class SyntheticTopology:
    """Mean phase durations (seconds) of one topology's requests."""

    rate_rps: float = 2.0
    queue_s: float = 0.5
    prefill_s: float = 1.5
    transfer_s: float = 0.2
    remote_share: float = 0.0
    tpot_s: float = 0.025
    output_tokens: int = 64
    kv_bytes: int = 500_000_000
    fail_share: float = 0.0
    jitter: float = 0.2


def synthetic_records(
    run_id: str, name: str, topo: SyntheticTopology, n: int, *, seed: int = 0, source: str = "simulate"
) -> list[RequestRecord]:
    """``n`` records of one topology with arrivals every 1/rate seconds."""
    rng = np.random.default_rng(seed)
    jit = rng.lognormal(0.0, topo.jitter, size=(n, 5)) if topo.jitter else np.ones((n, 5))
    remote = rng.random(n) < topo.remote_share
    failed = rng.random(n) < topo.fail_share
    out = []
    for i in range(n):
        sched = i / topo.rate_rps
        p_start = sched + topo.queue_s * jit[i, 0]
        p_end = p_start + topo.prefill_s * jit[i, 1]
        kv_end = p_end + topo.transfer_s * jit[i, 2]
        first = kv_end + topo.tpot_s * jit[i, 3]
        k, tpot = topo.output_tokens, topo.tpot_s * jit[i, 4] ** 0.25
        rec = RequestRecord(
            run_id=run_id, topology=name, request_id=f"{name}-{i}", trace_row=i, scheduled_s=sched,
            sent_s=sched + 0.0005, first_byte_s=first, first_token_s=first, last_token_s=first + (k - 1) * tpot,
            itl_s=[tpot] * (k - 1), prompt_tokens_trace=20_000, output_tokens_requested=k,
            output_tokens_received=k, cached_tokens=5_000, route="remote" if remote[i] else "local",
            prefill_site="remote" if remote[i] else "local", decode_site="local",
            prefill_start_s=p_start, prefill_end_s=p_end, kv_bytes=topo.kv_bytes,
            kv_transfer_start_s=p_start, kv_transfer_end_s=kv_end, source=source,
        )  # fmt: skip
        if failed[i]:
            rec.status, rec.error_class = STATUS_ERROR, "http_500"
            rec.first_token_s = rec.last_token_s = None
            rec.itl_s, rec.output_tokens_received = [], 0
        out.append(rec)
    return out


def _timeseries(records: list[RequestRecord], step: float = 1.0) -> pd.DataFrame:
    # Queue depth and link utilisation sampled from the records themselves.
    end = max((r.last_token_s or r.scheduled_s) for r in records)
    t = np.arange(0.0, end + step, step)
    sched = np.array([r.scheduled_s for r in records])
    start = np.array([r.prefill_start_s for r in records])
    xfer = [(r.kv_transfer_start_s, r.kv_transfer_end_s, r.kv_bytes) for r in records if r.route == "remote"]
    link = np.zeros_like(t)
    for s, e, b in xfer:
        link[(t >= s) & (t < e)] += b * 8 / 1e9 / max(e - s, 1e-9)
    return pd.DataFrame(
        {
            "time_s": t,
            "topology": records[0].topology,
            "prefill_queue_depth": [int(((sched <= x) & (start > x)).sum()) for x in t],
            "link_gbps": link,
        }
    )


def write_synthetic_run(
    run_dir: str | Path,
    topologies: Mapping[str, SyntheticTopology],
    *,
    n: int = 200,
    seed: int = 0,
    source: str = "simulate",
    meta: Mapping[str, object] | None = None,
    timeseries: bool = True,
) -> Path:
    """Write a run directory (records, meta, optional timeseries.parquet) with these topologies."""
    run_dir = Path(run_dir)
    run_id = f"synthetic-{source}-{seed}"
    frames = []
    with RunWriter(run_dir, {"run_id": run_id, "source": source, "synthetic": True, **(meta or {})}) as w:
        for k, (name, topo) in enumerate(topologies.items()):
            recs = synthetic_records(run_id, name, topo, n, seed=seed + k, source=source)
            w.write_many(recs)
            frames.append(_timeseries(recs))
    if timeseries:
        pd.concat(frames, ignore_index=True).to_parquet(run_dir / "timeseries.parquet")
    return run_dir


def write_synthetic_plan(run_dir: str | Path) -> Path:
    """plan.json and the three sweep CSVs in the planner's layout, with illustrative numbers."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    topologies = {
        "prfaas": {"lambda_max": 3.24, "threshold_tokens": 19400, "n_prfaas": 4, "n_p": 3, "n_d": 5,
                   "offload_share": 0.496, "egress_gbps": 13.0},
        "homogeneous": {"lambda_max": 2.11, "threshold_tokens": None, "n_prfaas": 0, "n_p": 9, "n_d": 3,
                        "offload_share": 0.0, "egress_gbps": 0.0},
        "naive": {"lambda_max": 2.45, "threshold_tokens": 0, "n_prfaas": 4, "n_p": 0, "n_d": 8,
                  "offload_share": 1.0, "egress_gbps": 26.0},
    }  # fmt: skip
    (run_dir / "plan.json").write_text(
        json.dumps({"topologies": topologies, "ratios": {"prfaas_vs_homogeneous": 1.54}})
    )
    t = np.linspace(2000, 60000, 30)
    pd.DataFrame({"threshold_tokens": t, "lambda_max": 3.24 - ((t - 19400) / 30000) ** 2}).to_csv(
        run_dir / "plan_sweep_threshold.csv", index=False
    )
    n_p = np.arange(1, 8)
    pd.DataFrame(
        {"n_p": n_p, "n_d": 8 - n_p, "lambda_max": np.minimum(0.55 * n_p + 1.5, 0.78 * (8 - n_p))}
    ).to_csv(run_dir / "plan_sweep_split.csv", index=False)
    bw = np.array([5, 10, 20, 50, 100, 200, 400])
    pd.DataFrame({"bandwidth_gbps": bw, "lambda_max": np.minimum(3.24, bw / 13 * 3.24 * 0.5 + 1.0)}).to_csv(
        run_dir / "plan_sweep_bandwidth.csv", index=False
    )
    return run_dir


def _probes(lam: float) -> list[dict[str, object]]:
    # A Λ_max search's probes as simulate --find-max-rate records them: passes up to lam, then a failure.
    return [
        {"rate_rps": r, "passed": r <= lam, "reason": None if r <= lam else "slo", "detail": "attainment",
         "attainment": 1.0 if r <= lam else 0.9, "achieved_rps": min(r, lam), "offered_rps": r}
        for r in (lam / 2, lam * 0.9, lam, lam * 1.1)
    ]  # fmt: skip


def write_synthetic_bench(out: str | Path, topologies: Mapping[str, SyntheticTopology]) -> Path:
    """A directory laid out as ``make bench`` writes it: plan.json and sweeps, ``capacity/`` (a Λ_max
    search: simulate at 1.3× each topology's rate, with its probes), ``sim/`` (the paired simulate) and
    ``rep/`` (the replay of the same topologies, without time series)."""
    out = Path(out)
    at_max = {n: replace(t, rate_rps=t.rate_rps * 1.3, queue_s=2.0) for n, t in topologies.items()}
    summary = {n: {"lambda_max": t.rate_rps, "probes": _probes(t.rate_rps)} for n, t in at_max.items()}
    write_synthetic_run(
        out / "capacity", at_max, n=300, seed=11, meta={"find_max_rate": True, "summary": summary}
    )
    write_synthetic_run(out / "sim", topologies, n=150)
    write_synthetic_run(out / "rep", topologies, n=100, source="replay", seed=3, timeseries=False)
    write_synthetic_plan(out)
    return out


def write_synthetic_server_metrics(run_dir: str | Path, step: float = 0.5) -> Path:
    """server_metrics.parquet for a run directory, as replay's scrapes of a vLLM would give it: running
    = the records in flight at each scrape, none waiting, KV usage growing with the running count."""
    run_dir = Path(run_dir)
    recs = pd.read_parquet(run_dir / "records.parquet")
    labels = json.dumps({"engine": "0", "model_name": "synthetic"}, sort_keys=True)
    rows = []
    for topology, df in recs.groupby("topology"):
        sent, end = df["sent_s"].to_numpy(float), df["last_token_s"].to_numpy(float)
        for t in np.arange(0.0, np.nanmax(end) + step, step):
            running = float(np.sum((sent <= t) & (end > t)))
            for metric, value in (("vllm:num_requests_running", running), ("vllm:num_requests_waiting", 0.0),
                                  ("vllm:kv_cache_usage_perc", running / 100)):  # fmt: skip
                rows.append({"time_s": float(t), "topology": topology, "server": "http://127.0.0.1:8000",
                             "metric": metric, "labels": labels, "value": value})  # fmt: skip
    out = run_dir / "server_metrics.parquet"
    pd.DataFrame(rows).to_parquet(out)
    return out
