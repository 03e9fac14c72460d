"""What ``prfaas-bench simulate`` does: build the workload, run each topology, write the run directory,
and search for the highest rate that meets the SLO (``find_max_rate``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import ScenarioError
from harness.records import STATUS_OK, RequestRecord, RunWriter, new_run_id
from harness.serving.build import StackSpec, TopologyPlan, build_cluster
from harness.serving.cluster import Outcome
from harness.serving.config import SimSetup
from harness.serving.simulation import TimeSeries, requests_from_trace, simulate_requests, to_record
from harness.traces.arrivals import Poisson
from harness.traces.frame import Trace
from harness.traces.transforms import clip_lengths


# ---------------------------------------------------------------------------------------------- workload
def synthetic_trace(setup: SimSetup, n: int, rate_rps: float, seed: int) -> Trace:
    """``n`` requests with the scenario's length distribution and output length, Poisson at ``rate_rps``.

    No prefix blocks: synthetic prompts share nothing, so caches never hit.
    """
    rng = np.random.default_rng(seed)
    wl = setup.deployment.workload
    inputs = wl.lengths.sample(n, rng).astype(np.int64)
    arrivals = Poisson(rate_rps).times(n, rng)
    return Trace(
        arrival_s=arrivals,
        input_tokens=inputs,
        output_tokens=np.full(n, wl.output_tokens, dtype=np.int64),
        hash_values=np.zeros(0, dtype=np.int64),
        hash_offsets=np.zeros(n + 1, dtype=np.int64),
        source=f"synthetic {wl.kind} Poisson({rate_rps:g}/s) seed={seed}",
    )


def retime(trace: Trace, rate_rps: float, seed: int) -> Trace:
    """The same requests in the same order, with Poisson arrivals at ``rate_rps``."""
    return trace.replace(arrival_s=Poisson(rate_rps).times(len(trace), np.random.default_rng(seed)))


def fit_context(trace: Trace, context_length: int, *, clip: bool) -> tuple[Trace, int]:
    """Check prompt + output against the model's context; clip the prompts (``clip``) or refuse."""
    over = trace.input_tokens + trace.output_tokens > context_length
    if not over.any():
        return trace, 0
    if not clip:
        i = int(np.flatnonzero(over)[0])
        raise ScenarioError(
            f"{int(over.sum())} request(s) exceed the model's context of {context_length} tokens "
            f"(first: row {i}, {int(trace.input_tokens[i])} + {int(trace.output_tokens[i])} output); "
            "pass --clip to truncate their prompts"
        )
    room = np.maximum(context_length - trace.output_tokens, 1)
    out = trace.replace(input_tokens=np.minimum(trace.input_tokens, room))
    clipped, _ = clip_lengths(out, int(room.max()))
    return clipped, int(over.sum())


# ---------------------------------------------------------------------------------------------- one run
@dataclass
class RunSummary:
    """Per-topology figures of one simulated run."""

    requests: int = 0
    completed: int = 0
    errors: int = 0
    span_s: float = 0.0
    throughput_rps: float = 0.0
    attainment: float = 0.0
    ttft_p50_s: float = math.nan
    ttft_p90_s: float = math.nan
    ttft_p99_s: float = math.nan
    tpot_p50_s: float = math.nan
    kv_bytes_total: int = 0
    offload_share: float = 0.0
    cache_hit_rate: float = 0.0
    cache_block_hit_rate: float = 0.0
    link_bytes: dict[str, int] = field(default_factory=dict)


class _Collector:
    """Turns outcomes into records (streamed to a writer) and keeps what the summary needs."""

    def __init__(
        self,
        *,
        run_id: str,
        topology: str,
        tpot_s: float,
        ttft_s: float,
        sink: Callable[[RequestRecord], None] | None,
    ):
        self.run_id, self.topology, self.tpot_s, self.ttft_s, self.sink = (
            run_id,
            topology,
            tpot_s,
            ttft_s,
            sink,
        )
        self.ttft: list[float] = []
        self.tpot: list[float] = []
        self.good = 0
        self.n = 0
        self.errors = 0
        self.kv_bytes = 0
        self.remote = 0
        self.first_arrival = math.inf
        self.last_done = -math.inf

    def __call__(self, out: Outcome) -> None:
        rec = to_record(out, run_id=self.run_id, topology=self.topology)
        self.n += 1
        self.first_arrival = min(self.first_arrival, rec.scheduled_s)
        if rec.status != STATUS_OK or rec.first_token_s is None or rec.last_token_s is None:
            self.errors += 1
        else:
            ttft = rec.first_token_s - rec.scheduled_s
            n_out = rec.output_tokens_received
            tpot = (rec.last_token_s - rec.first_token_s) / (n_out - 1) if n_out > 1 else 0.0
            self.ttft.append(ttft)
            self.tpot.append(tpot)
            self.good += ttft <= self.ttft_s and tpot <= self.tpot_s
            self.last_done = max(self.last_done, rec.last_token_s)
            self.kv_bytes += rec.kv_bytes or 0
            self.remote += rec.route == "remote"
        if self.sink is not None:
            self.sink(rec)

    def summary(self, cluster) -> RunSummary:
        done = self.n - self.errors
        span = self.last_done - self.first_arrival if done else 0.0
        ttft = np.asarray(self.ttft) if self.ttft else np.asarray([math.nan])
        caches = [s.cache for s in cluster.sites.values() if s.cache is not None]
        look = sum(c.lookup_tokens for c in caches)
        look_b = sum(c.lookup_blocks for c in caches)
        return RunSummary(
            requests=self.n,
            completed=done,
            errors=self.errors,
            span_s=span,
            throughput_rps=done / span if span > 0 else 0.0,
            attainment=self.good / self.n if self.n else 0.0,
            ttft_p50_s=float(np.percentile(ttft, 50)),
            ttft_p90_s=float(np.percentile(ttft, 90)),
            ttft_p99_s=float(np.percentile(ttft, 99)),
            tpot_p50_s=float(np.median(self.tpot)) if self.tpot else math.nan,
            kv_bytes_total=self.kv_bytes,
            offload_share=self.remote / done if done else 0.0,
            cache_hit_rate=sum(c.hit_tokens for c in caches) / look if look else 0.0,
            cache_block_hit_rate=sum(c.hit_blocks for c in caches) / look_b if look_b else 0.0,
            link_bytes={link.name: link.bytes_total for link in cluster.links.values()},
        )


def run_topology(
    stack: StackSpec,
    topo: TopologyPlan,
    trace: Trace,
    *,
    run_id: str = "sim",
    label: str | None = None,
    tpot_s: float = 0.025,
    ttft_s: float = math.inf,
    sink: Callable[[RequestRecord], None] | None = None,
    series: TimeSeries | None = None,
    sample_interval_s: float = 1.0,
) -> RunSummary:
    """Simulate ``trace`` through one topology; records go to ``sink`` as requests finish."""
    collect = _Collector(run_id=run_id, topology=label or topo.name, tpot_s=tpot_s, ttft_s=ttft_s, sink=sink)
    cluster = simulate_requests(
        lambda: build_cluster(stack, topo),
        requests_from_trace(trace),
        len(trace),
        collect,
        series=series,
        sample_interval_s=sample_interval_s,
    )
    return collect.summary(cluster)


# ---------------------------------------------------------------------------------------------- the search
def find_max_rate(
    stack: StackSpec,
    topo: TopologyPlan,
    make_trace: Callable[[float], Trace],
    *,
    tpot_s: float,
    ttft_s: float,
    attainment: float = 0.99,
    start_rps: float | None = None,
    rel_tol: float = 0.01,
    max_probes: int = 40,
) -> tuple[float, RunSummary | None, int]:
    """Highest Poisson rate whose SLO attainment is >= ``attainment`` (bisection; fixed request count).

    Returns (Λ_max, the summary at Λ_max, probes used). ``make_trace(rate)`` gives the same requests
    re-timed at ``rate`` (same seed), so attainment is a deterministic function of the rate.
    """

    def probe(rate: float) -> RunSummary:
        return run_topology(stack, topo, make_trace(rate), tpot_s=tpot_s, ttft_s=ttft_s)

    probes = 0
    lo, lo_sum = 0.0, None
    hi = start_rps if start_rps and start_rps > 0 else 1.0
    while probes < max_probes:  # bracket: double until a rate fails
        s = probe(hi)
        probes += 1
        if s.attainment < attainment:
            break
        lo, lo_sum, hi = hi, s, hi * 2
    else:  # never failed: the requests all fit in the SLO even arriving at once; Λ_max is not measured
        raise ScenarioError(
            f"--find-max-rate: the SLO is still met at {lo:.3g} req/s, so {len(make_trace(lo))} "
            "requests are too few to load the system; give more (--requests or [simulate] requests)"
        )
    while probes < max_probes and hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2
        s = probe(mid)
        probes += 1
        if s.attainment >= attainment:
            lo, lo_sum = mid, s
        else:
            hi = mid
    return lo, lo_sum, probes


# ---------------------------------------------------------------------------------------------- the command
@dataclass(frozen=True)
class SimulateRequest:
    """The command's choices, after parsing."""

    trace: Trace | None = None  # None: synthetic from the scenario's [workload]
    trace_timestamps: bool = True
    rates: tuple[float, ...] = ()
    requests: int | None = None
    duration_s: float | None = None
    find_max_rate: bool = False
    ttft_slo_s: float | None = None
    attainment: float | None = None
    seed: int | None = None
    clip: bool = False
    out_dir: Path = Path("results")


def _workload(setup: SimSetup, req: SimulateRequest, rate: float | None, seed: int) -> Trace:
    n_default = req.requests or setup.spec.requests
    if req.trace is None:
        if rate is None:
            raise ScenarioError("a synthetic workload needs --rate, --rate-sweep or [workload] rate_rps")
        n = n_default
        if req.duration_s is not None:
            n = (
                max(1, int(req.duration_s * rate))
                if req.requests is None
                else min(n, int(req.duration_s * rate) + 1)
            )
        trace = synthetic_trace(setup, n, rate, seed)
    else:
        trace = req.trace
        if req.duration_s is not None:
            trace = trace.take(trace.arrival_s - trace.arrival_s[0] <= req.duration_s)
        if req.requests is not None:
            trace = trace.take(np.arange(min(req.requests, len(trace))))
        if rate is not None:
            trace = retime(trace, rate, seed)
    if len(trace) == 0:
        raise ScenarioError("the workload has no requests (check --requests/--duration)")
    # A synthetic distribution reaching the context limit (the paper's goes to 128K) is clipped quietly;
    # a real trace must be clipped on purpose (--clip).
    trace, _ = fit_context(trace, setup.deployment.model.context_length, clip=req.clip or req.trace is None)
    return trace


def _scenario_rate(setup: SimSetup) -> float | None:
    return setup.scenario.config.workload.rate_rps if setup.scenario.config.workload else None


def simulate(setup: SimSetup, req: SimulateRequest) -> dict[str, Any]:
    """Run the command: every topology, every rate (or the Λ_max search); returns the JSON summary."""
    for r in req.rates:
        if not (r > 0 and math.isfinite(r)):
            raise ScenarioError(f"rates must be > 0 requests/s, got {r:g}")
    if req.attainment is not None and not 0 < req.attainment <= 1:
        raise ScenarioError(f"--attainment must be in (0, 1], got {req.attainment:g}")
    if req.ttft_slo_s is not None and not req.ttft_slo_s > 0:
        raise ScenarioError(f"--ttft-slo must be > 0 s, got {req.ttft_slo_s:g}")
    slo = setup.deployment.slo
    seed = setup.spec.seed if req.seed is None else req.seed
    tpot_s = slo.tpot_s
    ttft_s = req.ttft_slo_s or slo.ttft_s or setup.spec.ttft_slo_s
    target = req.attainment or slo.attainment
    rates: list[float | None] = list(req.rates)
    if not rates:
        rates = [None] if (req.trace is not None and req.trace_timestamps) else [_scenario_rate(setup)]
    if req.find_max_rate:
        # Validate the workload once (context fit, non-empty) before any long search.
        _workload(setup, req, rates[0] or 1.0, seed)
        # Λ_max is a steady-state figure: a transient link fault has no place in its probes.
        setup = with_stack(setup, link_events=())

    run_id = new_run_id("sim")
    run_dir = req.out_dir / run_id
    meta = {
        "source": "simulate",
        "seed": seed,
        "rates_rps": [r for r in rates if r is not None],
        "find_max_rate": req.find_max_rate,
        "slo": {"tpot_s": tpot_s, "ttft_s": ttft_s, "attainment": target},
        "workload": "trace" if req.trace is not None else "synthetic",
        "trace_source": req.trace.source if req.trace is not None else None,
        **setup.describe(),
    }
    series_frames: list[pd.DataFrame] = []
    result: dict[str, Any] = {"topologies": {}, "run_dir": str(run_dir)}
    with RunWriter(run_dir, meta) as writer:
        for name, topo in setup.topologies.items():
            entry: dict[str, Any] = {
                "kind": topo.kind,
                "n_p": topo.n_p,
                "n_d": topo.n_d,
                "n_prfaas": topo.n_prfaas,
                "threshold_tokens": topo.threshold_tokens,
                "planner_lambda_max": topo.planner_lambda_max,
                "lambda_max": None,  # filled in by --find-max-rate
            }
            if req.find_max_rate:
                lam, _best, probes = find_max_rate(
                    setup.stack,
                    topo,
                    lambda rate: _workload(setup, req, rate, seed),
                    tpot_s=tpot_s,
                    ttft_s=ttft_s,
                    attainment=target,
                    start_rps=topo.planner_lambda_max,
                )
                entry.update(lambda_max=lam, probes=probes)
                run_rates = [lam] if lam > 0 else []
            else:
                run_rates = rates
            runs = {}
            for rate in run_rates:
                label = name if len(run_rates) == 1 else f"{name}@{rate:g}rps"
                series = TimeSeries()
                s = run_topology(
                    setup.stack,
                    topo,
                    _workload(setup, req, rate, seed),
                    run_id=run_id,
                    label=label,
                    tpot_s=tpot_s,
                    ttft_s=ttft_s,
                    sink=writer.write,
                    series=series,
                    sample_interval_s=setup.spec.sample_interval_s,
                )
                frame = pd.DataFrame(vars(series))
                frame.insert(0, "topology", label)
                series_frames.append(frame)
                runs[label] = {"rate_rps": rate, **vars(s)}
            if len(runs) == 1:
                entry.update(next(iter(runs.values())))
            else:
                entry["runs"] = runs
            result["topologies"][name] = entry
        if series_frames:
            pd.concat(series_frames, ignore_index=True).to_parquet(
                run_dir / "timeseries.parquet", index=False
            )
        writer.update_meta(summary=result["topologies"])
    return result


def with_stack(setup: SimSetup, **changes: Any) -> SimSetup:
    """The same setup with some stack options replaced (tests and benchmarks)."""
    return replace(setup, stack=replace(setup.stack, **changes))


def topology_rows(result: dict[str, Any]) -> Sequence[dict[str, Any]]:
    """Flat rows (one per topology and rate) for printing."""
    rows = []
    for name, entry in result["topologies"].items():
        for label, run in (entry.get("runs") or {name: entry}).items():
            rows.append({"topology": label, **{k: v for k, v in entry.items() if k != "runs"}, **run})
    return rows
