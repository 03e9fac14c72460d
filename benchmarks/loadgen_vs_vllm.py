"""Our replay client beside vLLM's ``bench serve``, in one run: the same requests (32-token prompts,
1,024-token outputs, ``ignore_eos``), closed loop at concurrency 64, alternating A/B/A/B against three
``fake-server --writes`` modes (``burst``: 64 KiB writes, the server never the limit; ``token``: one
write per token, chunks pre-encoded; ``token-dumps``: one write per token, ``json.dumps`` each, a
CPU-bound server sharing the cores with the client).

Per client and server: req/s and token events/s over the client's own span (first send to last token,
from its own timestamps), and the client's CPU seconds per million token events in that span, read
from /proc for the client's processes (children included) — not its start-up; the server's likewise.
``ours (include_usage)`` is our client with vLLM's ``stream_options`` (no running usage per chunk,
``--extra-body``): the same request bodies as vLLM's, so the server does the same work for both.

vLLM's client runs from the cached vLLM venv (``make vllm-venv``), never installed into here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.proc_cpu import TreeCPU, pid_of
from harness.loadgen.fakeserver import WRITES, fake_server_process
from harness.records import read_records

REPO = Path(__file__).resolve().parent.parent
N_IN, N_OUT, CONCURRENCY = 32, 1024, 64
CLIENTS = ("vllm", "ours", "ours (include_usage)")
SERVERS = {
    "burst": "64 KiB writes (server never the limit)",
    "token": "one write per token, pre-encoded",
    "token-dumps": "one write per token, json.dumps each",
}
assert tuple(SERVERS) == WRITES

# Our client in its own process, so /proc shows its CPU alone: prints the run's monotonic zero (t0).
_OURS = """
import json, sys
from benchmarks.bench_loadgen import synthetic_trace
from harness.loadgen import Endpoint, LoadSpec, ReplayConfig, replay
url, n, n_in, n_out, c, out, plain = sys.argv[1:8]
started = {}
extra = {"stream_options": {"include_usage": True}} if plain == "1" else {}
cfg = ReplayConfig(endpoints=(Endpoint(name="m", url=url, model="m"),), progress=False, extra_body=extra,
                   load=LoadSpec(rate_rps=float("inf"), concurrency=int(c), max_requests=int(n)),
                   on_start=lambda name, t0: started.setdefault("t0", t0))
replay(synthetic_trace(1000, int(n_in), int(n_out)), cfg, out, quiet=True)
print(json.dumps(started))
"""


@dataclass
class Tally:
    """Sums over a client's runs against one server."""

    requests: int = 0
    events: int = 0
    span_s: float = 0.0
    cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    failed: int = 0
    runs: list[float] = field(default_factory=list)  # token events/s of each run

    def add(
        self, requests: int, events: int, span_s: float, cpu_s: float, server_cpu_s: float, failed: int
    ) -> None:
        self.requests += requests
        self.events += events
        self.span_s += span_s
        self.cpu_s += cpu_s
        self.server_cpu_s += server_cpu_s
        self.failed += failed
        self.runs.append(events / span_s)


def _measured(name: str, cmd: list[str], env: dict[str, str]) -> tuple[TreeCPU, str]:
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with TreeCPU(proc.pid) as cpu:
        out, err = proc.communicate(timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} exited with {proc.returncode}: {err[-2000:]}")
    return cpu, out


def run_vllm(python: Path, tokenizer: Path, url: str, n: int, work: Path) -> tuple:
    """vLLM's bench serve (its parser and main, ``tests/realengine/vllm_bench_serve.py``): its result file
    gives each request's perf_counter start, latency and ITLs."""
    result = work / "vllm.json"
    result.unlink(missing_ok=True)
    cmd = [
        str(python), "-P", str(REPO / "tests" / "realengine" / "vllm_bench_serve.py"), "--backend", "openai",
        "--base-url", url, "--model", "m", "--tokenizer", str(tokenizer), "--dataset-name", "random",
        "--random-input-len", str(N_IN), "--random-output-len", str(N_OUT), "--num-prompts", str(n),
        "--max-concurrency", str(CONCURRENCY), "--request-rate", "inf", "--ignore-eos", "--temperature", "0",
        "--seed", "1", "--disable-tqdm", "--save-result", "--save-detailed", "--result-dir", str(work),
        "--result-filename", result.name,
    ]  # fmt: skip
    cpu, _ = _measured("vLLM's bench serve", cmd, {**os.environ, "VLLM_TARGET_DEVICE": "cpu"})
    v = json.loads(result.read_text())
    ok = [i for i, e in enumerate(v["errors"]) if not e]
    start = min(v["start_times"][i] for i in ok)
    end = max(v["start_times"][i] + v["latencies"][i] for i in ok)
    events = sum(len(v["itls"][i]) + 1 for i in ok)  # one timestamp per chunk with choices
    return len(ok), events, start, end, cpu, len(v["errors"]) - len(ok)


def run_ours(url: str, n: int, work: Path, plain: bool) -> tuple:
    """Our replay in a child process; span and events from its records."""
    out = Path(tempfile.mkdtemp(dir=work)) / "run"
    cmd = [sys.executable, "-c", _OURS, url, str(n), str(N_IN), str(N_OUT), str(CONCURRENCY), str(out),
           "1" if plain else "0"]  # fmt: skip
    cpu, stdout = _measured("our replay", cmd, {**os.environ, "PYTHONPATH": str(REPO)})
    t0 = json.loads(stdout.strip().splitlines()[-1])["t0"]
    df = read_records(out)
    ok = df[df.status == "ok"]
    events = int(ok.itl_s.map(len).sum() + len(ok))  # one chunk per token from these servers
    start, end = t0 + float(ok.sent_s.min()), t0 + float(ok.last_token_s.max())
    return len(ok), events, start, end, cpu, len(df) - len(ok)


def side_by_side(
    requests: int, reps: int, python: Path, tokenizer: Path, servers: tuple[str, ...] = WRITES
) -> dict[str, dict[str, Tally]]:
    """Each server, each client ``reps`` times in turn (vllm, ours, ours plain, vllm, ...)."""
    table: dict[str, dict[str, Tally]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for writes in servers:
            table[writes] = {c: Tally() for c in CLIENTS}
            with fake_server_process("--writes", writes) as url:
                port = url.rsplit(":", 1)[1]
                for _ in range(reps):
                    for client in CLIENTS:
                        with TreeCPU(pid_of("fake-server", "--port", port)) as server:
                            if client == "vllm":
                                got = run_vllm(python, tokenizer, url, requests, work)
                            else:
                                got = run_ours(url, requests, work, plain=client != "ours")
                        n, events, start, end, cpu, failed = got
                        table[writes][client].add(
                            n,
                            events,
                            end - start,
                            cpu.between(start, end),
                            server.between(start, end),
                            failed,
                        )
    return table


def print_table(table: dict[str, dict[str, Tally]]) -> None:
    """One row per server and client; ratios against vLLM's client on the same server."""
    print(f"  {'server':<40} {'client':<22} {'req/s':>7} {'tok events/s':>13} {'vs vLLM':>8} "
          f"{'client CPU-s/M ev':>18} {'server CPU-s/M ev':>18}  per run (events/s)")  # fmt: skip
    for writes, row in table.items():
        base = row["vllm"].events / row["vllm"].span_s
        for client, t in row.items():
            rate = t.events / t.span_s
            runs = ", ".join(f"{r:,.0f}" for r in t.runs)
            failed = f"  ({t.failed} failed)" if t.failed else ""
            print(
                f"  {SERVERS[writes]:<40} {client:<22} {t.requests / t.span_s:>7.1f} {rate:>13,.0f} "
                f"{rate / base:>7.2f}x {t.cpu_s / t.events * 1e6:>18.1f} {t.server_cpu_s / t.events * 1e6:>18.1f}  "
                f"{runs}{failed}"
            )
