"""The main job (``make bench``): plan, simulate, replay over a shaped link, analyse — one directory.

    results/bench-<stamp>/
      plan.json, plan_sweep_{bandwidth,threshold,split}.csv   the analytic planner
      capacity/     simulate --find-max-rate: Λ_max per topology in virtual time
      simulate/     the replay's exact workload, simulated (the paired reference for replay)
      replay/       the same workload replayed over HTTP against the emulated clusters
      report.html   the dashboard; analysis.json the numbers behind it

Every stage is a library call (plan: ``harness.model``, simulate: ``harness.serving``, serve:
``harness.emulation``, replay: ``harness.loadgen``, analysis: ``harness.analysis``); this module only
chooses the workload both time-based stages share and wires the stages together.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.errors import InputError, ScenarioError
from harness.jsonsafe import json_safe
from harness.scenario import Scenario, load_scenario

Say = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class BenchSpec:
    """How big each stage is. The scenario's ``[bench]`` table sets these; ``quick`` picks the small set.

    replay_rate_rps   offered rate of the paired simulate/replay workload, in the modelled deployment's
                      requests per second (default: 75% of the smallest planner Λ_max, so every
                      topology is loaded but stable and TTFT differences come from the topology)
    replay_requests   requests in that workload (the same requests go to every topology)
    capacity_requests requests per --find-max-rate probe
    speedup           emulator speed-up (default: the scenario's [emulation] speedup)
    """

    replay_rate_rps: float | None = None
    replay_requests: int = 240
    capacity_requests: int = 2000
    speedup: float | None = None
    seed: int = 0

    @classmethod
    def from_scenario(cls, scenario: Scenario, *, quick: bool) -> BenchSpec:
        table = dict(scenario.section("bench"))
        quick_table = table.pop("quick", {})
        if not isinstance(quick_table, Mapping):
            raise ScenarioError("must be a table", where=scenario.where("bench", "quick"))
        chosen = dict(quick_table) if quick else {}

        def where(key: str) -> str:  # a bad value is reported in the table it came from
            return scenario.where("bench", "quick") if key in chosen else scenario.where("bench")

        merged = {**table, **chosen}
        known = {"replay_rate_rps", "replay_requests", "capacity_requests", "speedup", "seed"}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ScenarioError(
                f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}",
                where=scenario.where("bench"),
            )
        spec = cls(**merged)
        if quick and not chosen:
            spec = replace(spec, replay_requests=60, capacity_requests=1000)
        for key in ("replay_requests", "capacity_requests"):
            if not (isinstance(getattr(spec, key), int) and getattr(spec, key) > 0):
                raise ScenarioError(f"{key} must be a positive integer", where=where(key))
        for key in ("replay_rate_rps", "speedup"):
            value = getattr(spec, key)
            if value is not None and not (
                isinstance(value, int | float) and value > 0 and math.isfinite(value)
            ):
                raise ScenarioError(f"{key} must be a positive number", where=where(key))
        if not (isinstance(spec.seed, int) and not isinstance(spec.seed, bool)):
            raise ScenarioError(f"seed must be an integer, got {spec.seed!r}", where=where("seed"))
        return spec


@dataclass(frozen=True)
class BenchResult:
    """Where everything went, and the analysis object (``analyze --json``'s dict)."""

    out_dir: Path
    report: Path
    analysis: Mapping[str, Any]
    headline: list[str]
    backend: str
    seconds: float


def _stage(say: Say, n: int, total: int, text: str) -> float:
    say(f"[{n}/{total}] {text}")
    return time.monotonic()


def _validate_late_tables(scenario: Scenario, spec: BenchSpec, quick: bool) -> None:
    """Parse the tables only stage 4 reads (and the other [bench] variant), so a typo there stops the
    bench at once instead of after minutes of planning and simulation."""
    from harness.emulation.spec import EmulationSpec
    from harness.network.spec import parse_network

    BenchSpec.from_scenario(scenario, quick=not quick)
    EmulationSpec.from_table(
        scenario.section("emulation"), where=scenario.where("emulation"), speedup=spec.speedup
    )
    if scenario.section("network"):
        parse_network(scenario.section("network"), where=scenario.where("network"))


def run_bench(
    scenario_path: str | Path,
    *,
    out_root: str | Path = "results",
    quick: bool = False,
    netns: bool | None = None,
    say: Say = print,
    progress: bool = True,
    prefix: str = "pfbbn-",
) -> BenchResult:
    """Plan, simulate, serve + replay, analyse and report one scenario; returns where it all went.

    ``prefix`` names the network namespaces of the replay stage (two benches at once need two)."""
    from harness.analysis import analyze, load_bundle, write_report
    from harness.analysis.tables import headline
    from harness.emulation.clusters import EmulatedClusters
    from harness.loadgen.config import Endpoint, LoadSpec, ReplayConfig, Timeouts
    from harness.loadgen.runner import replay
    from harness.model.deployment import deployment_from_scenario
    from harness.model.study import plan_deployment, standard_sweeps
    from harness.serving.config import prepare
    from harness.serving.run import SimulateRequest, simulate
    from harness.serving.workload import synthetic_trace

    started = time.monotonic()
    scenario = load_scenario(scenario_path)
    spec = BenchSpec.from_scenario(scenario, quick=quick)
    deployment = deployment_from_scenario(scenario)  # validates the scenario before anything runs
    setup = prepare(scenario)
    _validate_late_tables(scenario, spec, quick)
    if spec.replay_rate_rps is None and all(t.kind == "colocated" for t in deployment.topologies.values()):
        # The default rate is a share of the planner's Λ_max, and the planner has no colocated model.
        raise ScenarioError(
            "replay_rate_rps must be set: its default is 75% of the planner's smallest Λ_max, "
            "and the planner does not model colocated topologies",
            where=scenario.where("bench"),
        )
    out_dir = Path(out_root) / f"bench-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if quick else ''}"
    try:
        out_dir.mkdir(parents=True, exist_ok=False)
    except OSError as exc:
        raise InputError(
            f"cannot create the run directory ({exc.strerror or exc})", where=str(out_dir)
        ) from None
    total = 5

    # 1. The analytic plan and its sweeps.
    t = _stage(say, 1, total, "plan: the paper's throughput model, grid search and sweeps")
    plan = plan_deployment(deployment)
    (out_dir / "plan.json").write_text(json.dumps(json_safe(plan.as_dict()), indent=2) + "\n")
    for kind, frame in standard_sweeps(deployment).items():
        frame.to_csv(out_dir / f"plan_sweep_{kind}.csv", index=False)
    lambdas = {name: tp.result.lambda_max for name, tp in plan.topologies.items()}
    say("      Λ_max " + ", ".join(f"{n} {v:.2f}" for n, v in lambdas.items()) + f" req/s ({_since(t)})")

    # 2. Capacity in virtual time: the highest Poisson rate meeting the SLO, per topology.
    t = _stage(say, 2, total, f"simulate: Λ_max search, {spec.capacity_requests} requests per probe")
    capacity = simulate(
        setup,
        SimulateRequest(
            find_max_rate=True, requests=spec.capacity_requests, seed=spec.seed, out_dir=out_dir / "capacity"
        ),
    )
    _flatten(out_dir / "capacity")
    say(
        "      Λ_max "
        + ", ".join(f"{n} {e['lambda_max']:.2f}" for n, e in capacity["topologies"].items())
        + f" req/s ({_since(t)})"
    )

    # 3. The paired workload, simulated.
    rate = spec.replay_rate_rps or round(0.75 * min(lambdas.values()), 2)
    trace = synthetic_trace(setup, spec.replay_requests, rate, spec.seed)
    t = _stage(say, 3, total, f"simulate: {len(trace)} requests at {rate:g} req/s on every topology")
    simulate(setup, SimulateRequest(trace=trace, seed=spec.seed, out_dir=out_dir / "simulate"))
    _flatten(out_dir / "simulate")
    say(f"      done ({_since(t)})")

    # 4. The same requests over HTTP against the emulated clusters, KV across the shaped link.
    t = _stage(say, 4, total, "serve + replay: emulated clusters over real HTTP and a shaped link")
    # Its own namespace prefix, so a bench never sweeps (or trips over) a `serve` the user left running.
    with EmulatedClusters(scenario, speedup=spec.speedup, netns=netns, prefix=prefix) as clusters:
        s = clusters.spec.speedup
        emu = clusters.describe()
        say(
            f"      backend {clusters.backend}, speed-up {s:g}x, link {clusters.rate_mbit or 0:g} Mbit/s "
            f"(KV bytes x{clusters.byte_scale:.2g}); {len(trace)} requests x {len(clusters.urls)} topologies"
        )
        endpoints = tuple(Endpoint(name=n, model=clusters.model, url=u) for n, u in clusters.urls.items())
        config = ReplayConfig(
            endpoints=endpoints,
            load=LoadSpec(seed=spec.seed),
            # Wall seconds; generous next to the workload's own TTFT and E2E (tens of model seconds, / s),
            # but a request the emulator lost fails in minutes instead of holding the bench for an hour.
            timeouts=Timeouts(first_token_s=120.0, total_s=600.0),
            shaping_backend=clusters.backend,
            progress=progress,
            meta_extra={"time_scale": s, "emulation": emu, "scenario": str(scenario.path)},
        )
        replay(trace.replace(arrival_s=trace.arrival_s / s), config, out_dir / "replay", quiet=not progress)
    say(f"      done ({_since(t)})")

    # 5. Analysis and the dashboard.
    t = _stage(say, 5, total, "analyze + report")
    bundle = load_bundle([out_dir])
    result = analyze(bundle, seed=spec.seed)
    (out_dir / "analysis.json").write_text(json.dumps(json_safe(result), indent=2) + "\n")
    report = write_report(bundle, result, out_dir / "report.html", title=f"prfaas-bench: {scenario.name}")
    say(f"      done ({_since(t)})")
    return BenchResult(
        out_dir=out_dir,
        report=report,
        analysis=result,
        headline=headline(result),
        backend=emu["backend"],
        seconds=time.monotonic() - started,
    )


def _flatten(parent: Path) -> None:
    """simulate writes ``parent/<run-id>/``; move its files up so the bench layout is fixed."""
    (child,) = [c for c in parent.iterdir() if c.is_dir()]
    for item in child.iterdir():
        item.rename(parent / item.name)
    child.rmdir()


def _since(t: float) -> str:
    return f"{time.monotonic() - t:.0f} s"
