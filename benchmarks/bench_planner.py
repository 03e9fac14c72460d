"""How long ``plan`` takes on a trace workload, where the planner replays the trace's prompts through the
site prefix caches (one replay per PrfaaS threshold it tries).

Prints the wall time of: reading the trace (with the context rule), one replay with one site (what
homogeneous and naive use), one PrfaaS replay at a threshold, the whole plan (every topology, threshold
search included) with the number of replays it ran, and the bandwidth sweep.

    .venv/bin/python benchmarks/bench_planner.py [--trace PATH] [--scenario PATH]
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

from harness.model.deployment import deployment_from_scenario
from harness.model.reuse import replay_cache
from harness.model.study import plan_deployment, sweep_bandwidth
from harness.scenario import load_scenario

REPO = Path(__file__).resolve().parent.parent


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--trace", default=str(REPO.parent / "shared" / "traces" / "mooncake_conversation_trace.jsonl")
    )
    ap.add_argument("--scenario", default=str(REPO / "workloads" / "mooncake-conversation.toml"))
    args = ap.parse_args()
    text = Path(args.scenario).read_text(encoding="utf-8")
    text = re.sub(r'(?m)^trace = ".*"$', f'trace = "{Path(args.trace).resolve()}"', text)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scenario.toml"
        path.write_text(text, encoding="utf-8")
        deployment, read_s = _timed(lambda: deployment_from_scenario(load_scenario(path)))
    prefills = deployment.prefills
    trace = deployment.workload.trace
    print(f"trace: {len(trace)} requests ({args.trace}); scenario {args.scenario}")
    print(f"{'step':<44} {'wall s':>7}")
    print(f"{'read the trace, context rule, one-site replay':<44} {read_s:>7.3f}")
    opts = {"capacity_bytes": prefills.capacity_bytes, "shape": prefills.shape}
    arrays = (trace.input_tokens, trace.hash_values, trace.hash_offsets)
    _, one_s = _timed(lambda: replay_cache(*arrays, **opts))
    print(f"{'one replay, one site':<44} {one_s:>7.3f}")
    _, two_s = _timed(lambda: replay_cache(*arrays, **opts, threshold=1e4))
    print(f"{'one replay, PrfaaS at t = 10,000':<44} {two_s:>7.3f}")
    before = prefills.replays
    report, plan_s = _timed(lambda: plan_deployment(deployment))
    ran = prefills.replays - before
    print(f"{f'plan: every topology ({ran} replays)':<44} {plan_s:>7.3f}")
    _, sweep_s = _timed(lambda: sweep_bandwidth(deployment))
    print(f"{'plan --sweep bandwidth (19 points)':<44} {sweep_s:>7.3f}")
    for name, tp in report.topologies.items():
        r = tp.result
        print(f"  {name:<12} Λ_max {r.lambda_max:.2f} req/s, t {r.threshold_tokens}, N_p/N_d {r.n_p}/{r.n_d}")


if __name__ == "__main__":
    main()
