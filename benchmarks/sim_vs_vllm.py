"""simulate against a real vLLM, with the client on a core of its own. Prints figures; not a test.

    .venv/bin/python benchmarks/sim_vs_vllm.py [--rounds N] [--keep DIR]

Needs ``make vllm-venv`` and two cores. vLLM's engine core and worker run on core 0 (``taskset -c 0``,
``VLLM_CPU_OMP_THREADS_BIND=0``); its API server and this process, the client, on core 1. So the
model's work never takes the client's core or the frontend's, as on a GPU host (docs/calibration.md
says why both matter on two cores). Then, as
``tests/test_real_vllm_calibrate.py`` does: ``calibrate --quick``, and the same 40 Mooncake rows
simulated with the fitted preset and replayed against the server, all at once and Poisson at 1.5 req/s.

Besides the table, it prints the Poisson run request by request (TTFT in simulate and in replay, the
prompt's length, and how many other requests the replay had in flight when it was sent), so a gap
between the two can be traced to the requests that make it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from click.testing import CliRunner  # noqa: E402
from realengine.vllm import VllmServer, build_tiny_model, vllm_python  # noqa: E402
from test_real_vllm_calibrate import TINY_PRESET, _table, compare, verdict  # noqa: E402

from harness.cli import main as cli  # noqa: E402
from harness.records import read_records  # noqa: E402

SERVER_CORE, CLIENT_CORE = 0, 1


class PinnedVllm(VllmServer):
    """The tests' vLLM with its model work on ``SERVER_CORE`` and its API server beside the client.

    Started under ``taskset -c SERVER_CORE``, so the engine core and its worker (children started
    then) stay there; once healthy, the API server's own threads move to ``CLIENT_CORE``, as on a GPU
    host, where the frontend has CPUs of its own and the accelerator does the model's work. Sharing
    the worker's core, the API server made every request that arrived while another decoded 5–16 ms
    slower (docs/calibration.md).
    """

    frontend_core: int | None = CLIENT_CORE  # None: leave the API server on SERVER_CORE

    def command(self) -> list[str]:
        return ["taskset", "-c", str(SERVER_CORE), *super().command()]

    def __enter__(self) -> PinnedVllm:
        super().__enter__()
        if self.frontend_core is None:
            return self
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
                os.sched_setaffinity(int(task.name), {self.frontend_core})
        return self


def pin_client() -> Path:
    """The vLLM venv's Python, with this process (the client) moved to ``CLIENT_CORE``; exits with a
    line when there is no venv or fewer than two cores."""
    python = vllm_python()
    if python is None:
        raise SystemExit("no vLLM venv: make vllm-venv")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs two cores: one for vLLM's model work, one for the client")
    os.sched_setaffinity(0, {CLIENT_CORE})
    return python


def calibrate(url: str, out: Path) -> Path:
    preset = out / "cpu.toml"
    result = CliRunner().invoke(
        cli,
        ["calibrate", "--endpoint", url, "--model", "tiny-llama", "--model-preset", str(TINY_PRESET),
         "--peak-tflops", "4", "--hbm-tbps", "0.05", "--hbm-gb", "2.4", "--name", "cpu-core0",
         "--quick", "--out", str(preset)],
    )  # fmt: skip
    if result.exit_code != 0:
        raise SystemExit(f"calibrate failed:\n{result.output}")
    lines = result.output.strip().splitlines()
    print("\n".join(line for line in lines if line.startswith(("frontend:", "fitted:"))), lines[-1], sep="\n")
    return preset


def per_request(work: Path) -> pd.DataFrame:
    """The Poisson run joined row by row: TTFT (ms) in both, prompt tokens, replay's in-flight count."""
    (sim_run,) = [p for p in (work / "sim").iterdir() if p.is_dir()]
    sim = read_records(sim_run).set_index("trace_row")
    rep = read_records(work / "replay").set_index("trace_row")
    out = pd.DataFrame(
        {
            "prompt": rep["prompt_tokens_trace"],
            "sim_ttft_ms": (sim["first_token_s"] - sim["scheduled_s"]) * 1e3,
            "rep_ttft_ms": (rep["first_token_s"] - rep["scheduled_s"]) * 1e3,
        }
    )
    sent, end = rep["sent_s"], rep["end_s"]
    out["in_flight"] = [int(((sent < s) & (end > s)).sum()) for s in sent]
    out["gap_ms"] = out["rep_ttft_ms"] - out["sim_ttft_ms"]
    return out.sort_index()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--rounds", type=int, default=1, help="calibrate-and-compare rounds on one server (default 1)"
    )
    ap.add_argument("--keep", type=Path, help="keep the runs here (default: a temporary directory)")
    args = ap.parse_args()
    python = pin_client()
    base = args.keep or Path(tempfile.mkdtemp(prefix="sim-vs-vllm-"))
    base.mkdir(parents=True, exist_ok=True)
    model = build_tiny_model(base / "model", python)
    env = {"VLLM_CPU_OMP_THREADS_BIND": str(SERVER_CORE)}
    with PinnedVllm(python, model, base / "server.log", extra_env=env) as server:
        for r in range(args.rounds):
            work = base / f"round{r}"
            work.mkdir()
            preset = calibrate(server.url, work)
            burst = compare(server.url, model, preset, work, burst=True)
            poisson = compare(server.url, model, preset, work, burst=False)
            print(f"round {r}: verdicts {verdict(work / 'replay-burst')} / {verdict(work / 'replay')}")
            print(_table("all at once", burst))
            print(_table("Poisson 1.5 req/s", poisson))
            rows = per_request(work)
            print(rows.round(1).to_string())
            busy = rows["in_flight"] > 0
            print(
                f"TTFT gap (replay - simulate), median: {rows['gap_ms'].median():.1f} ms; "
                f"sent to an idle server {rows.loc[~busy, 'gap_ms'].median():.1f} ms ({(~busy).sum()}), "
                f"to a busy one {rows.loc[busy, 'gap_ms'].median():.1f} ms ({busy.sum()})"
            )
    print(f"runs in {base}")


if __name__ == "__main__":
    main()
