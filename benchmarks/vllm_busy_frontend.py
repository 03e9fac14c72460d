"""Does a prefill take longer while another request decodes? A real vLLM, pinned. Prints figures; not a test.

    .venv/bin/python benchmarks/vllm_busy_frontend.py [--frontend server|client] [--rounds N] [--repeats N]

Needs ``make vllm-venv`` and two cores. vLLM's engine core and worker run on core 0, the client on
core 1; ``--frontend`` puts vLLM's API server on core 0 beside the worker (``server``) or on core 1
beside the client (``client``, the default, as ``sim_vs_vllm.py`` runs it). Each round replays two
schedules of single-token requests of 300, 1,800 and 3,500 prompt tokens, 0.6 s apart, no cache hits:
once to an idle server, once while one long request (200-token prompt, 4,000 output tokens) decodes.
It prints each length's TTFT p50 and, from vLLM's own ``/metrics`` histograms over the run, the mean
time to first token, queue time and prefill time that vLLM saw, so that an excess of the busy case
can be placed inside or outside the engine core.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from realengine.vllm import build_tiny_model  # noqa: E402
from sim_vs_vllm import SERVER_CORE, PinnedVllm, pin_client  # noqa: E402
from test_real_vllm_calibrate import partial_utf8_tokens  # noqa: E402

from harness.loadgen import Endpoint, ReplayConfig, replay  # noqa: E402
from harness.records import read_meta, read_records  # noqa: E402
from harness.traces.readers import read_trace  # noqa: E402

LENGTHS = (300, 1800, 3500)
GAP_S = 0.6
HISTOGRAMS = ("time_to_first_token", "request_queue_time", "request_prefill_time")


class FrontendOnServerCore(PinnedVllm):
    """Every vLLM process on the server's core: the API server is not moved."""

    frontend_core = None


def histogram_sums(url: str) -> dict[str, float]:
    """``vllm:<h>_seconds_sum`` and ``_count`` of each histogram we read, summed over label sets."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith(("_sum", "_count")) and any(h in s.name for h in HISTOGRAMS):
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def mean_ms(before: dict[str, float], after: dict[str, float], histogram: str) -> float:
    """Mean milliseconds of ``histogram`` over the observations between two scrapes (NaN if none)."""
    s, c = (
        after.get(f"vllm:{histogram}_seconds_{k}", 0) - before.get(f"vllm:{histogram}_seconds_{k}", 0)
        for k in ("sum", "count")
    )
    return 1e3 * s / c if c else float("nan")


def schedule(path: Path, *, busy: bool, repeats: int, first_block: int) -> tuple[Path, int]:
    """The JSONL trace; returns it and the next unused block id (no two prompts share a block)."""
    rows, block = [], first_block
    if busy:
        rows.append({"timestamp": 0, "input_length": 200, "output_length": 4000, "hash_ids": [block]})
        block += 1
    start = 0.5 if busy else 0.0
    for k in range(repeats * len(LENGTHS)):
        n = LENGTHS[k % len(LENGTHS)]
        blocks = -(-n // 512)
        rows.append(
            {
                "timestamp": int((start + k * GAP_S) * 1000),
                "input_length": n,
                "output_length": 1,
                "hash_ids": list(range(block, block + blocks)),
            }
        )
        block += blocks
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, block


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--frontend",
        choices=("server", "client"),
        default="client",
        help="the core vLLM's API server runs on: the worker's, or the client's (default)",
    )
    ap.add_argument("--rounds", type=int, default=2, help="idle-then-busy rounds (default 2)")
    ap.add_argument("--repeats", type=int, default=5, help="requests of each length per run (default 5)")
    args = ap.parse_args()
    python = pin_client()
    base = Path(tempfile.mkdtemp(prefix="vllm-busy-frontend-"))
    model = build_tiny_model(base / "model", python)
    server_cls = PinnedVllm if args.frontend == "client" else FrontendOnServerCore
    env = {"VLLM_CPU_OMP_THREADS_BIND": str(SERVER_CORE)}
    block = 0
    with server_cls(python, model, base / "server.log", extra_env=env) as server:
        config = ReplayConfig(
            endpoints=(Endpoint(name="vllm", model="tiny-llama", url=server.url),),
            tokenize_url=server.url,
            extra_body={"logit_bias": partial_utf8_tokens(model)},
            max_send_lag_s=10.0,
            progress=False,
        )
        runs = [("warm-up", False)] + [
            (f"round {r} {'busy' if busy else 'idle'}", busy)
            for r in range(args.rounds)
            for busy in (False, True)
        ]
        for i, (name, busy) in enumerate(runs):
            trace, block = schedule(
                base / f"run{i}.jsonl", busy=busy, repeats=args.repeats, first_block=block
            )
            before = histogram_sums(server.url)
            replay(read_trace(trace), config, base / f"run{i}", quiet=True)
            after = histogram_sums(server.url)
            if i == 0:
                continue
            recs = read_records(base / f"run{i}")
            recs = recs[recs["output_tokens_requested"] == 1]  # the single-token requests only
            ttft = ((recs["first_token_s"] - recs["scheduled_s"]) * 1e3).groupby(recs["prompt_tokens_trace"])

            means = {h: mean_ms(before, after, h) for h in HISTOGRAMS}
            verdict = (read_meta(base / f"run{i}").get("validity") or {}).get("verdict", "unknown")
            p50 = ", ".join(f"{n}: {v:.1f}" for n, v in ttft.median().items())
            print(
                f"{name} [{verdict}] TTFT p50 ms by prompt tokens {p50} | vLLM's means over the run (ms): "
                + ", ".join(f"{h} {v:.1f}" for h, v in means.items()),
                flush=True,
            )
    print(f"runs in {base}")


if __name__ == "__main__":
    main()
