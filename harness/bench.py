"""The main job (``make bench``): plan, simulate, replay over a shaped link, analyse — one directory.

    results/bench-<stamp>/
      plan.json, plan_sweep_{bandwidth,threshold,split}.csv   the analytic planner
      capacity/     simulate --find-max-rate: Λ_max per topology in virtual time
      workload.json which requests the paired stages run: source, rows, rate, arrivals, context rule
      simulate/     the replay's exact workload, simulated (the paired reference for replay)
      replay/       the same workload replayed over HTTP against the emulated clusters
      ladder/       the capacity ladder: one replay per topology and rung around its simulated Λ_max
      capacity_ladder.json  Λ_max read off the ladder's rungs (replay and simulate) and the gains
      report.html   the dashboard; analysis.json the numbers behind it

Every stage is a library call (plan: ``harness.model``, simulate: ``harness.serving``, serve:
``harness.emulation``, replay: ``harness.loadgen``, analysis: ``harness.analysis``); this module only
chooses the workload both time-based stages share and wires the stages together.

The paired workload is the one ``simulate --rate R --requests N`` builds (``build_workload``): on a
trace scenario, the trace's first ``replay_requests`` rows as they are — prompt and output lengths,
prefix block ids — re-timed to Poisson arrivals at the rate under test; on a synthetic one, requests
drawn from its distribution. The Λ_max search, too, runs on the trace when there is one.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from harness.capacity_ladder import LadderPlan, run_ladder
from harness.errors import InputError, ScenarioError
from harness.jsonsafe import json_safe
from harness.scenario import load_scenario
from harness.traces.context import ContextFit, ContextPolicy
from harness.traces.frame import Trace

Say = Callable[[str], None]


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


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


def run_bench(
    scenario_path: str | Path,
    *,
    out_root: str | Path = "results",
    quick: bool = False,
    netns: bool | None = None,
    say: Say = print,
    warn: Say = _to_stderr,
    progress: bool = True,
    prefix: str = "pfbbn-",
    context: ContextPolicy = "refuse",
    with_ladder: bool = True,
) -> BenchResult:
    """Plan, simulate, serve + replay, analyse and report one scenario; returns where it all went.

    ``warn`` gets one line per knob the bench overrides or ignores (also written to every stage's
    meta.json); ``prefix`` names the network namespaces of the replay stage (two benches at once need
    two); ``context`` is the rule for a trace workload's prompts beyond the model's context;
    ``with_ladder=False`` skips the capacity ladder (stage 5) whatever the scenario's ``[bench]`` says."""
    from harness.analysis import analyze, load_bundle, write_report
    from harness.analysis.ladder import ladder_result
    from harness.analysis.tables import headline
    from harness.emulation.clusters import EmulatedClusters
    from harness.loadgen.conditions import link_goodput
    from harness.loadgen.config import Endpoint, LoadSpec, ReplayConfig, Timeouts
    from harness.loadgen.runner import replay
    from harness.model.deployment import deployment_from_scenario
    from harness.model.study import plan_deployment, standard_sweeps
    from harness.serving.config import prepare
    from harness.serving.run import SimulateRequest, search_slo, simulate
    from harness.serving.workload import build_workload
    from harness.validity import combine

    started = time.monotonic()
    scenario = load_scenario(scenario_path)  # every table is validated before anything runs
    spec = scenario.config.bench.resolve(quick=quick)
    warnings = scenario.warnings("bench", quick=quick)
    deployment = deployment_from_scenario(scenario, context=context)
    setup = prepare(scenario, warnings=warnings, context=context)
    if spec.replay_rate_rps is None and all(t.kind == "colocated" for t in deployment.topologies.values()):
        # The default rate is a share of the planner's Λ_max, and the planner has no colocated model.
        raise ScenarioError(
            "must be set: its default is 75% of the planner's smallest Λ_max, "
            "and the planner does not model colocated topologies",
            where=f"{scenario.where('bench')} replay_rate_rps",
        )
    for line in warnings:  # after every check, so a bad scenario's error is the only line
        warn(f"warning: {line}")
    out_dir = _new_run_dir(
        Path(out_root), f"bench-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if quick else ''}"
    )
    total = 6

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
    source = deployment.workload.read  # the trace as read (the context rule applies per stage), or None
    capacity = simulate(
        setup,
        SimulateRequest(
            trace=source,
            find_max_rate=True,
            requests=spec.capacity_requests,
            seed=spec.seed,
            context=context,
            out_dir=out_dir / "capacity",
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
    # One workload for both stages, built once: replay sends exactly the requests simulate runs.
    trace, fit = build_workload(
        setup, trace=source, rate=rate, seed=spec.seed, requests=spec.replay_requests, context=context
    )
    workload = _describe_workload(trace, fit, source=source, rate=rate, seed=spec.seed)
    (out_dir / "workload.json").write_text(json.dumps(json_safe(workload), indent=2) + "\n")
    t = _stage(say, 3, total, f"simulate: {len(trace)} requests at {rate:g} req/s on every topology")
    say(f"      {workload['rows']}")
    simulate(
        setup, SimulateRequest(trace=trace, seed=spec.seed, context=context, out_dir=out_dir / "simulate")
    )
    _flatten(out_dir / "simulate")
    say(f"      done ({_since(t)})")

    # 4. The same requests over HTTP against the emulated clusters, KV across the shaped link.
    t = _stage(say, 4, total, "serve + replay: emulated clusters over real HTTP and a shaped link")
    # Its own namespace prefix, so a bench never sweeps (or trips over) a `serve` the user left running.
    # The sites plan their topologies as simulate did (the same context rule), and link events start
    # again at each topology's replay start (its run clock's zero), as in simulate.
    with EmulatedClusters(
        scenario, speedup=spec.speedup, netns=netns, prefix=prefix, context=context, events_from="arm"
    ) as clusters:
        s = clusters.spec.speedup
        emu = clusters.describe()
        for line in clusters.warnings:
            warn(f"warning: {line}")
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
            # The run's validity verdict: bounds, every site's /metrics, the relays, the link before the run.
            validity=scenario.config.validity,
            max_send_lag_s=scenario.config.validity.send_lag_p99_ms / 1e3,
            site_urls=tuple(clusters.host_urls.values()),
            relay_lag=clusters.relay_lag,
            link_goodput=link_goodput(clusters.network),
            meta_extra={
                "time_scale": s,
                "emulation": emu,
                "scenario": str(scenario.path),
                "config_warnings": warnings + clusters.warnings,
                "context": fit.as_dict(),
                "workload": workload,
            },
            on_start=lambda name, t0: clusters.arm_events(t0, label=name),
            on_end=clusters.event_lag,
        )
        replay(trace.replace(arrival_s=trace.arrival_s / s), config, out_dir / "replay", quiet=not progress)
        clusters.check()  # a link event that failed to apply spoils the run: say so
        if (events := clusters.link_events()) is not None:
            _add_meta(out_dir / "replay", link_events=events)
        say(f"      done ({_since(t)})")

        # 5. Capacity over HTTP: a rate ladder around each topology's simulated Λ_max, replay and simulate.
        ladder = LadderPlan(
            shares=spec.ladder_shares if with_ladder else (),
            span_s=spec.ladder_span_s,
            lambda_max={n: e["lambda_max"] for n, e in capacity["topologies"].items()},
        )
        t = _stage(
            say, 5, total,
            f"capacity ladder: {len(ladder.rungs())} rungs of {ladder.span_s:g} model s, at "
            f"{', '.join(f'{x:g}' for x in ladder.shares)} x each topology's simulated Λ_max"
            if ladder.rungs() else "capacity ladder: skipped (--no-ladder or no ladder_shares; --quick has none)",
        )  # fmt: skip
        rungs = run_ladder(
            ladder, setup=setup, slo=search_slo(setup), clusters=clusters, config=config,
            workload=partial(build_workload, setup, trace=source, seed=spec.seed, context=context),
            out_dir=out_dir / "ladder", say=say, quiet=not progress,
        )  # fmt: skip
        clusters.check()
    say(f"      done ({_since(t)})")

    # 6. Analysis and the dashboard (``analyze`` reads capacity_ladder.json beside the runs).
    t = _stage(say, 6, total, "analyze + report")
    if ladder.rungs():
        found = ladder_result(
            rungs,
            target=search_slo(setup).attainment,
            plan=lambdas,
            search=ladder.lambda_max,
            validity=combine({f"{n} x{sh:g}": v for n, r in rungs["replay"].items() for sh, _, v in r}),
            design={"shares": ladder.shares, "span_s": ladder.span_s, "speedup": s, "runs": "ladder/"},
        )
        (out_dir / "capacity_ladder.json").write_text(json.dumps(json_safe(found), indent=2) + "\n")
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


def _describe_workload(
    trace: Trace, fit: ContextFit, *, source: Trace | None, rate: float, seed: int
) -> dict[str, Any]:
    """What the paired stages run, for ``workload.json`` and the replay's meta.json."""
    n = len(trace) + (fit.rows if fit.policy == "drop" else 0)  # rows taken from the trace
    blocks = int(trace.hash_offsets[-1])
    repeated = blocks - len(np.unique(trace.hash_values))  # blocks an earlier row already named
    rows = (
        f"trace rows 0–{n - 1} of {len(source):,}: their prompt and output lengths and prefix blocks "
        f"({repeated:,} of {blocks:,} repeat an earlier row's); arrivals re-timed to Poisson({rate:g}/s)"
        if source is not None
        else f"{len(trace)} synthetic requests, Poisson({rate:g}/s)"
    )
    if fit.rows:
        rows += f"; {fit.describe()}"
    return {
        "kind": "synthetic" if source is None else "trace",
        "source": trace.source,
        "rows": rows,
        "first_rows": None if source is None else n,
        "requests": len(trace),
        "prefix_blocks": blocks,
        "repeated_blocks": repeated,
        "rate_rps": rate,
        "arrivals": f"Poisson({rate:g}/s) seed={seed}",
        "context": fit.as_dict(),
    }


def _new_run_dir(root: Path, name: str) -> Path:
    """``root/name``, or ``root/name-2``, ``-3``… when another run started in the same second: two
    benches on one host never share (or refuse) a directory."""
    for n in range(1, 1000):
        out_dir = root / (name if n == 1 else f"{name}-{n}")
        try:
            out_dir.mkdir(parents=True, exist_ok=False)
            return out_dir
        except FileExistsError:
            continue
        except OSError as exc:
            raise InputError(
                f"cannot create the run directory ({exc.strerror or exc})", where=str(out_dir)
            ) from None
    raise InputError("no free run directory name", where=str(root / name))


def _flatten(parent: Path) -> None:
    """simulate writes ``parent/<run-id>/``; move its files up so the bench layout is fixed."""
    (child,) = [c for c in parent.iterdir() if c.is_dir()]
    for item in child.iterdir():
        item.rename(parent / item.name)
    child.rmdir()


def _add_meta(run_dir: Path, **changes: Any) -> None:
    """Add keys to a finished run's meta.json."""
    path = run_dir / "meta.json"
    path.write_text(
        json.dumps({**json.loads(path.read_text()), **json_safe(changes)}, indent=2, sort_keys=True) + "\n"
    )


def _since(t: float) -> str:
    return f"{time.monotonic() - t:.0f} s"
