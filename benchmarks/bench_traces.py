"""Trace reader and generator speed. Prints figures; asserts nothing (speed is not a test).

    .venv/bin/python benchmarks/bench_traces.py [--rows 1000000]

Reads the real traces in ../shared/traces when present, a generated Azure-2024-style CSV of --rows
rows, and times ``synthesize`` on the paper's workload.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from harness.traces import Poisson, SynthSpec, TruncatedLogNormal, read_trace, synthesize, write_native

SHARED = Path(__file__).resolve().parents[2] / "shared" / "traces"


def timed(label: str, fn, repeat: int = 3):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    print(f"{label:<48} {best * 1000:9.1f} ms  ({len(result):,} requests, best of {repeat})")
    return result


def azure_2024_csv(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    micros = np.cumsum(rng.integers(1, 200_000, size=rows))
    with path.open("w") as fh:
        fh.write("TIMESTAMP,ContextTokens,GeneratedTokens\n")
        for us, ctx, gen in zip(micros, rng.integers(1, 8000, rows), rng.integers(1, 500, rows), strict=True):
            sec, frac = divmod(int(us), 1_000_000)
            day, sec = divmod(sec, 86_400)
            h, rem = divmod(sec, 3600)
            fh.write(
                f"2024-05-{10 + day:02d} {h:02d}:{rem // 60:02d}:{rem % 60:02d}.{frac:06d}+00:00,{ctx},{gen}\n"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the generated Azure 2024 CSV")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mooncake = SHARED / "mooncake_conversation_trace.jsonl"
        if mooncake.is_file():
            trace = timed("Mooncake conversation JSONL (3 MB)", lambda: read_trace(mooncake))
            native = write_native(trace, tmp / "mooncake.parquet")
            timed("same trace as native Parquet", lambda: read_trace(native))
        azure = SHARED / "azure_llm_2023_code.csv"
        if azure.is_file():
            timed("Azure 2023 code CSV", lambda: read_trace(azure))
        big = tmp / "azure2024.csv"
        azure_2024_csv(big, args.rows)
        size_mb = big.stat().st_size / 1e6
        timed(f"Azure 2024-style CSV ({size_mb:.0f} MB, generated)", lambda: read_trace(big), repeat=1)
        spec = SynthSpec(100_000, TruncatedLogNormal(9.9, 1.0, 128, 131072), Poisson(3.0))
        timed("synthesize 100k requests, paper lognormal", lambda: synthesize(spec, 1))


if __name__ == "__main__":
    main()
