"""bench's capacity ladder: each topology at a few offered rates around its simulated Λ_max, replayed
over HTTP against the emulated clusters and simulated on the same requests, every rung judged as a
Λ_max probe (``harness.serving.stability``); ``harness.analysis.ladder`` reads Λ_max off the rungs.

    ladder/<topology>-x<share>/   one replay run per rung (caches and counters reset before each)

A rung at share *f* offers ``f × Λ_max(simulate)`` for ``[bench] ladder_span_s`` model seconds: the
scenario's requests built as a search probe is (``build_workload`` with ``min_span_s``: Poisson
arrivals scaled to offer exactly that rate over the span; a trace cycled when it is too short). The rungs run without the scenario's link events, like the search's probes: Λ_max is a
steady-state figure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from harness.analysis.summary import Slo
from harness.serving.stability import ProbeVerdict
from harness.validity import attainment_bounds

if TYPE_CHECKING:
    from harness.emulation.clusters import EmulatedClusters
    from harness.loadgen.config import ReplayConfig
    from harness.serving.build import StackSpec, TopologyPlan
    from harness.serving.config import SimSetup
    from harness.traces.context import ContextFit
    from harness.traces.frame import Trace

Rungs = dict[str, dict[str, list[tuple[float, ProbeVerdict, str | None]]]]  # source → topology → rungs
Workload = Callable[..., "tuple[Trace, ContextFit]"]  # build_workload with setup, trace, seed, context bound


@dataclass(frozen=True)
class LadderPlan:
    """Which rungs to run: shares of each topology's simulated Λ_max, and each rung's arrival span."""

    shares: tuple[float, ...]
    span_s: float  # model seconds of arrivals per rung
    lambda_max: Mapping[str, float]  # the simulated Λ_max each topology's rungs scale

    def rungs(self) -> list[tuple[str, float, float, int]]:
        """(topology, share, rate, requests) in the order run: topology by topology, rates rising.
        A topology without a simulated Λ_max has no rungs."""
        return [
            (name, share, lam * share, max(2, math.ceil(lam * share * self.span_s)))
            for name, lam in self.lambda_max.items()
            if lam and lam > 0
            for share in self.shares
        ]


def rung_requests(workload: Workload, rate: float, n: int, span_s: float) -> Trace:
    """A rung's requests, built as a Λ_max search probe is: ``n`` requests whose Poisson arrivals offer
    exactly ``rate`` over ``span_s``."""
    return workload(rate=rate, requests=n, min_span_s=span_s)[0]


def simulate_rung(stack: StackSpec, topo: TopologyPlan, trace: Trace, rate: float, slo: Slo) -> ProbeVerdict:
    """One rung in virtual time, judged as a Λ_max probe."""
    from harness.serving.runner import run_topology
    from harness.serving.stability import judge_probe

    return judge_probe(run_topology(stack, topo, trace, slo=slo).records, rate, slo)


def run_ladder(
    plan: LadderPlan,
    *,
    setup: SimSetup,
    slo: Slo,
    workload: Workload,
    clusters: EmulatedClusters,  # running
    config: ReplayConfig,  # the paired stage's
    out_dir: Path,
    say: Callable[[str], None],
    quiet: bool,
) -> Rungs:
    """Simulate and replay every rung of ``plan``; returns the judged rungs of both sources."""
    from harness.analysis.runs import load_run
    from harness.loadgen.runner import replay
    from harness.serving.stability import judge_probe

    rungs: Rungs = {"simulate": {}, "replay": {}}
    if not plan.rungs():
        return rungs
    stack = replace(setup.stack, link_events=())  # a steady link, as in the search's probes
    clusters.disarm_events()
    s = clusters.spec.speedup
    for name, share, rate, n in plan.rungs():
        trace = rung_requests(workload, rate, n, plan.span_s)
        rungs["simulate"].setdefault(name, []).append(
            (share, simulate_rung(stack, setup.topologies[name], trace, rate, slo), None)
        )
        (ep,) = [e for e in config.endpoints if e.name == name]
        # A rung is judged by SLO attainment only, so its lag bounds scale with the TTFT bound.
        bounds = attainment_bounds(config.bounds(), slo.ttft_s, s)
        rung_config = replace(
            config,
            endpoints=(ep,),
            run_id=None,
            on_start=None,
            on_end=None,
            meta_extra={**config.meta_extra, "ladder": {"share": share, "rate_rps": rate, "requests": n}},
            validity=bounds,
            max_send_lag_s=bounds.send_lag_p99_ms / 1e3,
        )
        done = replay(
            trace.replace(arrival_s=trace.arrival_s / s),
            rung_config,
            out_dir / f"{name}-x{share:g}",
            quiet=quiet,
        )
        v = judge_probe(load_run(done.run_dir).records, rate, slo)  # read in model seconds
        rungs["replay"].setdefault(name, []).append((share, v, done.verdict))
        say(
            f"      {name} x{share:g} ({rate:.3g} req/s, {n} requests): replay "
            f"{'pass' if v.passed else v.reason}, attainment {v.attainment:.1%}, "
            f"achieved/offered {v.achieved_rps / v.offered_rps:.1%}; {done.verdict}"
        )
    return rungs
