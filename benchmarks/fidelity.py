"""The fidelity matrix: plan, simulate and replay on three workloads (docs/fidelity.md's table).

For each workload — the paper's log-normal case study, the Mooncake conversation trace, the Azure code
trace — one `bench` run (harness.bench.run_bench): the plan's Λ_max, simulate's Λ_max search, and at
one paired sub-capacity rate (bench's default: 75% of the smallest planner Λ_max) the same requests
simulated and replayed over HTTP against the emulated clusters. Prints one Markdown row per workload
and topology: the two Λ_max, then simulate → replay for throughput, TTFT p50/p90, TPOT p50, cached
share of prompt tokens and offloaded share, and the replay client's send-lag p99.

    sudo .venv/bin/python benchmarks/fidelity.py                 # the whole traces, [bench] sizes
    sudo .venv/bin/python benchmarks/fidelity.py --slice --replay-requests 40 --capacity-requests 300

``--slice`` points the trace workloads at the 300-row slices in tests/data (what tests/test_fidelity.py
runs). Without root the replay runs over loopback (labelled in the output).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from harness.analysis.metrics import tpot
from harness.records import read_records

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
# name: (scenario, its slice in tests/data or None for a synthetic workload)
WORKLOADS: dict[str, tuple[Path, Path | None]] = {
    "paper log-normal": (REPO / "workloads" / "paper-case-study.toml", None),
    "Mooncake conversation": (
        REPO / "workloads" / "mooncake-conversation.toml",
        DATA / "mooncake_conversation_head300.jsonl",
    ),
    "Azure code": (REPO / "workloads" / "azure-code.toml", DATA / "azure_code_2023_head300.csv"),
}
METRICS = (  # analysis key, column, scale, format
    ("throughput_rps", "throughput (req/s)", 1.0, ".3f"),
    ("ttft_p50_s", "TTFT p50 (s)", 1.0, ".2f"),
    ("ttft_p90_s", "TTFT p90 (s)", 1.0, ".2f"),
    ("tpot_p50_s", "TPOT p50 (ms)", 1e3, ".1f"),
    ("cache_hit_rate", "cached", 100.0, ".1f"),
    ("offload_share", "offloaded", 100.0, ".1f"),
)


def scenario_for(
    name: str, out_dir: Path, *, use_slice: bool, replay_requests: int | None, capacity_requests: int | None
) -> Path:
    """A copy of the workload's scenario in ``out_dir``: its trace path made absolute (or the slice), and
    its ``[bench]`` sizes replaced by the ones given."""
    src, slice_path = WORKLOADS[name]
    text = src.read_text()

    def trace_line(match: re.Match) -> str:
        path = slice_path if use_slice and slice_path is not None else (src.parent / match[1]).resolve()
        return f'trace = "{path}"'

    text = re.sub(r'^trace = "([^"]+)"', trace_line, text, flags=re.M)
    head, _, tail = text.partition("\n[bench]")
    sizes = {"replay_requests": replay_requests, "capacity_requests": capacity_requests}
    bench = re.sub(r"\n\[bench\.quick\][\s\S]*", "", "[bench]" + tail)  # --quick is not used here
    for key, value in sizes.items():
        if value is not None:
            bench = re.sub(rf"^{key} = .*$", f"{key} = {value}", bench, flags=re.M)
            if f"{key} = " not in bench:
                bench += f"\n{key} = {value}"
    path = out_dir / f"{src.stem}{'-slice' if use_slice else ''}.toml"
    path.write_text(head + "\n" + bench + "\n")
    return path


def run_workload(name: str, out_dir: Path, *, prefix: str = "pfbfd-", **sizes: Any) -> Path:
    """One bench run of workload ``name`` without the capacity ladder (the paired stage is what this
    page compares); returns its run directory."""
    from harness.bench import run_bench

    path = scenario_for(name, out_dir, **sizes)
    return run_bench(path, out_root=out_dir / path.stem, say=lambda _: None, warn=lambda _: None, progress=False,
                     prefix=prefix, with_ladder=False).out_dir  # fmt: skip


def rows(name: str, run_dir: Path) -> list[dict[str, Any]]:
    """One row per topology of a bench run: Λ_max (plan, simulate), the paired rate, and for each metric
    its (simulate, replay) pair, from the run's analysis.json."""
    analysis = json.loads((run_dir / "analysis.json").read_text())
    workload = json.loads((run_dir / "workload.json").read_text())
    records = read_records(run_dir / "simulate"), read_records(run_dir / "replay")  # once, not per topology
    scale = float(json.loads((run_dir / "replay" / "meta.json").read_text())["time_scale"])
    out = []
    for topology, side in analysis["side_by_side"].items():
        sim = analysis["topologies"][f"simulate/{topology}"]
        rep = analysis["topologies"][f"replay/{topology}"]
        out.append({
            "workload": name,
            "topology": topology,
            "plan_lambda_max": side["plan"].get("lambda_max_rps"),
            "simulate_lambda_max": side["simulate"].get("lambda_max_rps"),
            "rate_rps": workload["rate_rps"],
            "requests": workload["requests"],
            "send_lag_p99_s": rep["send_lag_p99_s"],
            "validity": rep.get("validity"),
            **{key: (sim[key], rep[key]) for key, *_ in METRICS},
            "tpot_paired_ratio_p50": paired_tpot_ratio(*records, scale, topology),
        })  # fmt: skip
    return out


def paired_tpot_ratio(
    simulated: pd.DataFrame, replayed: pd.DataFrame, scale: float, topology: str
) -> float | None:
    """The median over requests of replay TPOT / simulate TPOT, each request matched with itself by
    trace row (replay's wall seconds × ``scale`` in model seconds): whether each request decoded at the
    cost model's pace. The p50 of 40 TPOTs compares two samples instead and moves when requests swap
    ranks (the homogeneous Mooncake slice: p50 +1.1% to +5.0% over four runs while this stayed within
    0.2%)."""

    def per_row(df: pd.DataFrame) -> pd.Series:
        df = df[df["topology"] == topology]
        return pd.Series(tpot(df), index=df["trace_row"].to_numpy())

    ratio = (per_row(replayed) * scale / per_row(simulated)).dropna()
    return float(ratio.median()) if len(ratio) else None


def _pair(sim: float | None, rep: float | None, scale: float, fmt: str) -> str:
    if sim is None or rep is None:
        return "–"
    text = f"{format(sim * scale, fmt)} / {format(rep * scale, fmt)}"
    return text + (f" ({rep / sim - 1:+.1%})" if sim and scale == 1.0 else "")


def markdown(table: list[dict[str, Any]]) -> str:
    """The rows as docs/fidelity.md's table (simulate / replay, relative difference in brackets)."""
    head = ["workload", "topology", "Λ_max plan / simulate", "rate (req/s)"]
    head += [f"{col} sim / replay" for _, col, _, _ in METRICS] + ["send lag p99 (ms)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        lam = f"{r['plan_lambda_max']:.2f} / {r['simulate_lambda_max']:.2f}"
        cells = [r["workload"], r["topology"], lam, f"{r['rate_rps']:g}"]
        cells += [_pair(*r[key], scale, fmt) for key, _, scale, fmt in METRICS]
        cells.append(f"{r['send_lag_p99_s'] * 1e3:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slice", action="store_true", help="the trace workloads on the slices in tests/data")
    ap.add_argument("--replay-requests", type=int, help="paired requests per topology (default: [bench])")
    ap.add_argument("--capacity-requests", type=int, help="requests per Λ_max probe (default: [bench])")
    ap.add_argument("--workload", action="append", choices=list(WORKLOADS), help="default: all three")
    ap.add_argument("--out", type=Path, help="keep the bench runs here (default: a temporary directory)")
    args = ap.parse_args()
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for name in args.workload or list(WORKLOADS):
            run_dir = run_workload(
                name,
                out,
                use_slice=args.slice,
                replay_requests=args.replay_requests,
                capacity_requests=args.capacity_requests,
            )
            meta = json.loads((run_dir / "replay" / "meta.json").read_text())
            emu = meta["emulation"]
            print(f"{name}: {run_dir}  backend {emu['backend']}, speed-up {emu['speedup']:g}", flush=True)
            table += rows(name, run_dir)
    print(markdown(table))


if __name__ == "__main__":
    main()
