"""simulate end to end: exact single-request timing, byte accounting, agreement with the planner, the
prefix cache on the real Mooncake trace, determinism, segment = per-step decode, and bad input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.config.links import ModelledLink
from harness.records import read_records
from harness.scenario import load_scenario
from harness.serving.config import prepare
from harness.serving.run import SimulateRequest, simulate
from harness.serving.runner import run_topology
from harness.serving.workload import synthetic_trace
from harness.traces.arrivals import Poisson
from harness.traces.frame import Trace
from harness.traces.readers import read_trace
from harness.traces.stats import prefix_reuse

REPO = Path(__file__).resolve().parent.parent
PAPER = REPO / "workloads" / "paper-case-study.toml"


@pytest.fixture(scope="module")
def paper():
    return prepare(load_scenario(PAPER))


def with_stack(setup, **changes):
    """The same setup with some stack options replaced."""
    return replace(setup, stack=replace(setup.stack, **changes))


def _trace(inputs, outputs, arrivals=None) -> Trace:
    n = len(inputs)
    return Trace(
        arrival_s=np.zeros(n) if arrivals is None else np.asarray(arrivals, float),
        input_tokens=np.asarray(inputs, dtype=np.int64),
        output_tokens=np.asarray(outputs, dtype=np.int64),
        hash_values=np.zeros(0, dtype=np.int64),
        hash_offsets=np.zeros(n + 1, dtype=np.int64),
    )


def _records(setup, topology: str, trace: Trace) -> list:
    out: list = []
    run = run_topology(setup.stack, setup.topologies[topology], trace, sink=out.append)
    return out, run.summary


# ---------------------------------------------------------------------------------------------- one request
def test_single_request_local_ttft_is_prefill_plus_one_decode_step(paper):
    (rec,), _ = _records(paper, "homogeneous", _trace([10_000], [4]))
    cost = paper.stack.local
    prefill = cost.prefill_time_s(10_000)
    # The RDMA fabric (400 Gbps) outruns KV production, so nothing of the transfer is exposed.
    assert (rec.prefill_queue_s, rec.prefill_start_s) == (0.0, 0.0)
    assert rec.prefill_end_s == pytest.approx(prefill, abs=1e-12)
    assert rec.kv_transfer_end_s == pytest.approx(prefill, abs=1e-9)
    assert rec.kv_bytes == cost.kv_bytes(10_000)
    assert rec.first_token_s == pytest.approx(prefill + cost.decode_step_s(1, 10_000), abs=1e-9)
    assert rec.itl_s == pytest.approx([cost.decode_step_s(1, 10_000 + k) for k in (1, 2, 3)], abs=1e-12)
    assert (rec.route, rec.prefill_site, rec.decode_site, rec.source) == (
        "local",
        "local",
        "local",
        "simulate",
    )


def test_single_request_remote_ttft_includes_forwarding_and_the_exposed_transfer(paper):
    # A 1 Gbps link is slower than KV production: the transfer runs the whole time at link rate.
    slow = with_stack(paper, link=ModelledLink(bandwidth_gbps=1.0, delay_ms=5.0))
    (rec,), _ = _records(slow, "naive", _trace([10_000], [2]))
    nbytes = paper.stack.remote.kv_bytes(10_000)
    prefill = paper.stack.remote.prefill_time_s(10_000)
    delay = 0.005
    transfer = nbytes / (1e9 / 8)
    assert transfer > prefill  # the premise: part of the transfer is exposed
    assert rec.prefill_start_s == pytest.approx(delay, abs=1e-12)  # the prompt crossed the link
    assert rec.kv_transfer_end_s == pytest.approx(delay + transfer + delay, abs=1e-9)
    exposed = rec.kv_transfer_end_s - rec.prefill_end_s
    assert exposed == pytest.approx(transfer - prefill + delay, abs=1e-9)
    ttft = delay + prefill + exposed + paper.stack.local.decode_step_s(1, 10_000)
    assert rec.first_token_s - rec.scheduled_s == pytest.approx(ttft, abs=1e-9)


# ---------------------------------------------------------------------------------------------- bytes
@pytest.mark.parametrize("topology", ["prfaas", "naive", "homogeneous"])
def test_link_byte_counters_equal_transferred_kv(paper, topology):
    trace = synthetic_trace(paper, 300, 3.0, seed=3)
    records, summary = _records(paper, topology, trace)
    by_link: dict[str, int] = {}
    for r in records:
        by_link[f"{r.prefill_site}->{r.decode_site}"] = (
            by_link.get(f"{r.prefill_site}->{r.decode_site}", 0) + r.kv_bytes
        )
    assert sum(by_link.values()) == sum(paper.stack.local.kv_bytes(int(n)) for n in trace.input_tokens)
    assert {k: v for k, v in summary.link_bytes.items() if v} == by_link


# ---------------------------------------------------------------------------------------------- planner
def _stratified_trace(setup, n: int, rate: float, seed: int) -> Trace:
    """Input lengths at the n mid-quantiles of the scenario's distribution, shuffled, Poisson arrivals.

    Random draws of the heavy-tailed log-normal move a 1,000-request sample's mean prefill time by
    +-5%; quantiles represent the distribution itself, which is what the planner's Λ_max is about.
    """
    rng = np.random.default_rng(seed)
    lengths = setup.deployment.workload.lengths
    inputs = np.array([round(lengths.quantile((i + 0.5) / n)) for i in range(n)])
    return _trace(
        rng.permutation(inputs),
        np.full(n, setup.deployment.workload.output_tokens),
        Poisson(rate).times(n, rng),
    )


@pytest.mark.parametrize("topology", ["prfaas", "homogeneous", "naive"])
def test_saturation_throughput_within_10pct_of_planner(paper, topology):
    """Offered twice the planner's Λ_max, the completion rate in the middle of the run is the capacity."""
    topo = paper.topologies[topology]
    n = 1200
    records, _ = _records(paper, topology, _stratified_trace(paper, n, 2 * topo.planner_lambda_max, seed=11))
    done = np.sort([r.last_token_s for r in records])
    lo, hi = int(0.2 * n), int(0.8 * n)
    throughput = (hi - lo) / (done[hi] - done[lo])
    assert throughput == pytest.approx(topo.planner_lambda_max, rel=0.10)


def test_paper_case_study_resolves_to_table_6(paper):
    t = paper.topologies
    assert (t["prfaas"].n_prfaas, t["prfaas"].n_p, t["prfaas"].n_d) == (4, 3, 5)
    assert (t["homogeneous"].n_p, t["homogeneous"].n_d) == (9, 3)
    assert (t["naive"].n_prfaas, t["naive"].n_d) == (4, 8)
    assert paper.stack.decode_batch_max == 20


# ---------------------------------------------------------------------------------------------- prefix cache
def test_prefix_cache_hit_ratio_bounded_by_and_approaching_trace_reuse(paper, mooncake_slice):
    trace = read_trace(mooncake_slice)  # 300 rows: an 8 GiB cache evicts blocks used again, 64 GiB keeps them
    reuse = prefix_reuse(trace)
    gib = 2**30
    rates = []
    for capacity in (8 * gib, 64 * gib, 512 * gib, None):
        _, s = _records(with_stack(paper, cache_capacity_bytes=capacity), "homogeneous", trace)
        rates.append(s.cache_block_hit_rate)
    assert all(r <= reuse for r in rates)
    assert rates == sorted(rates) and rates[0] < rates[-1]
    assert rates[-1] >= 0.95 * reuse  # unbounded: only prefixes still in flight are missed


# ---------------------------------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_records(paper, tmp_path):
    request = SimulateRequest(rates=(2.5,), requests=150, seed=7, out_dir=tmp_path)
    frames = []
    for _ in range(2):
        result = simulate(paper, request)
        frames.append(read_records(result["run_dir"]).drop(columns=["run_id"]))
    assert len(frames[0]) == 3 * 150
    assert frames[0].equals(frames[1])
    other = simulate(paper, replace(request, seed=8))
    assert not read_records(other["run_dir"]).drop(columns=["run_id"]).equals(frames[0])


def test_segment_decode_equals_per_step_decode(paper):
    trace = synthetic_trace(paper, 120, 3.0, seed=5)
    trace = trace.replace(output_tokens=np.random.default_rng(5).integers(1, 300, len(trace)))
    segment, _ = _records(paper, "prfaas", trace)
    per_step, _ = _records(with_stack(paper, max_segment_steps=1), "prfaas", trace)
    key = lambda r: r.request_id  # noqa: E731
    assert [r.to_dict() for r in sorted(segment, key=key)] == [r.to_dict() for r in sorted(per_step, key=key)]


# ---------------------------------------------------------------------------------------------- the command
def _run(*args: str):
    return CliRunner().invoke(main, ["simulate", *args], catch_exceptions=False)


def test_cli_json_and_run_directory(tmp_path):
    res = _run(str(PAPER), "--rate", "2", "--requests", "60", "--out", str(tmp_path), "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert set(out["topologies"]) == {"prfaas", "homogeneous", "naive"}
    assert out["topologies"]["prfaas"]["requests"] == 60
    run_dir = Path(out["run_dir"])
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["source"] == "simulate" and meta["complete"] and meta["topologies"]["prfaas"]["n_p"] == 3
    df = read_records(run_dir)
    assert sorted(df.topology.unique()) == ["homogeneous", "naive", "prfaas"]
    import pandas as pd

    ts = pd.read_parquet(run_dir / "timeseries.parquet")
    assert {"prefill_queue", "decode_batch", "link_utilisation", "cache_hit_rate"} <= set(ts.metric)
    assert ts.loc[ts.metric == "decode_batch", "value"].max() <= 20


def test_cli_find_max_rate_table(tmp_path):
    res = _run(
        str(PAPER), "--find-max-rate", "--topology", "naive", "--requests", "150", "--out", str(tmp_path)
    )
    assert res.exit_code == 0, res.output
    assert "Λmax sim" in res.output and "naive" in res.output


def _scenario(tmp_path: Path, change: str) -> str:
    """The paper scenario with ``change`` appended, or a line replaced (``"old -> new"``)."""
    base = PAPER.read_text()
    if " -> " in change:
        old, new = change.split(" -> ")
        assert old in base
        text = base.replace(old, new)
    else:
        text = base + change
    p = tmp_path / "s.toml"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize(
    ("args", "extra", "message"),
    [
        (["--rate", "0"], "", "rates must be > 0"),
        (["--rate", "-1"], "", "rates must be > 0"),
        (
            ["--rate", "1"],
            '\n[topologies.tiny]\nkind = "homogeneous"\nlocal_instances = 0\n',
            "local_instances",
        ),
        (
            ["--rate", "1"],
            '\n[topologies.neg]\nkind = "prfaas"\nlocal_instances = 8\nremote_instances = 4\nthreshold_tokens = -5\n',
            "threshold_tokens",
        ),
        (["--rate", "1"], "requests = 2000 -> requests = 0", "requests"),
        (["--rate", "1", "--topology", "nope"], "", "unknown topology"),
    ],
)
def test_cli_bad_input_is_one_clear_line(tmp_path, args, extra, message):
    res = _run(_scenario(tmp_path, extra), *args, "--out", str(tmp_path))
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output


def test_cli_model_that_does_not_fit(tmp_path):
    text = PAPER.read_text().replace("gpus_per_instance = 8", "gpus_per_instance = 2")
    p = tmp_path / "small.toml"
    p.write_text(text)
    res = _run(str(p), "--rate", "1", "--out", str(tmp_path))
    assert res.exit_code == 2 and "does not fit" in res.output


def test_cli_trace_longer_than_context_needs_clip(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text(
        '{"timestamp": 0, "input_length": 1000, "output_length": 10, "hash_ids": [1, 2]}\n'
        '{"timestamp": 500, "input_length": 140000, "output_length": 10, "hash_ids": [3]}\n'
    )
    res = _run(str(PAPER), "--trace", str(trace), "--out", str(tmp_path))
    assert res.exit_code == 2 and "exceed the model's context" in res.output and "--clip" in res.output
    res = _run(
        str(PAPER),
        "--trace",
        str(trace),
        "--clip",
        "--topology",
        "homogeneous",
        "--out",
        str(tmp_path),
        "--json",
    )
    assert res.exit_code == 0, res.output
    df = read_records(json.loads(res.output)["run_dir"])
    assert df.prompt_tokens_trace.max() == 131072 - 10


# ---------------------------------------------------------------------------------------------- colocated
def test_colocated_prefill_waits_for_the_step_in_progress_and_carries_one_decode_step(paper):
    """Chunked prefill on the decoding GPUs, hand-computed: A (1,000 tokens, 200 out) decodes alone; B
    (20,000 tokens) arrives at 1 s, waits for A's step in progress, and is prefilled in one step (the
    preset's ``prefill_batch_tokens`` is 0: no chunking) that also carries one decode step of A."""
    from harness.serving.build import TopologyPlan

    one = TopologyPlan("coloc", "colocated", n_p=0, n_d=1)
    out: list = []
    run_topology(paper.stack, one, _trace([1000, 20_000], [200, 2], arrivals=[0.0, 1.0]), sink=out.append)
    a, b = sorted(out, key=lambda r: r.request_id)
    cost = paper.stack.local
    assert (
        a.kv_bytes is None
        and a.route == "colocated"
        and b.decode_instance == b.prefill_instance == "local-c0"
    )
    # The prefill samples A's first token as it ends (as an engine's prefill step does); the decode
    # batch makes the next ones, at a context of the prompt plus the tokens so far.
    p_a = cost.prefill_time_s(1000)
    assert a.first_token_s == pytest.approx(p_a, abs=1e-9)
    steps = [cost.decode_step_s(1, 1001 + j) for j in range(199)]
    ends = p_a + np.cumsum(steps)
    k = int(np.searchsorted(ends, 1.0))  # A's step in progress when B arrives
    assert b.prefill_start_s == pytest.approx(ends[k], abs=1e-9) and ends[k] > 1.0
    carried = cost.carried_decode_s(1, 1001 + k + 1)
    t_b = cost.prefill_time_s(20_000)
    assert b.first_token_s == pytest.approx(ends[k] + t_b + carried, abs=1e-9)
    # A made one token during B's prefill, as the step carrying it ended; none stood still longer.
    assert max(a.itl_s) == pytest.approx(t_b + carried, abs=1e-9)
    assert a.itl_s[k + 1] == pytest.approx(t_b + carried, abs=1e-9)
    assert b.output_tokens_received == 2 and len(a.itl_s) == 199


def test_colocated_chunked_prefill_gives_running_sequences_a_token_per_chunk(paper):
    """With ``prefill_batch_tokens`` 4,096, B's 20,000 tokens run in ceil(20,000 / (4,096 − 1)) = 5
    steps (A's token comes first in each step's budget), each a fifth of B's prefill plus one step of A:
    A makes five tokens in that time instead of one, and B's prefill ends four decode steps later."""
    from dataclasses import replace

    from harness.serving.build import TopologyPlan

    stack = replace(paper.stack, prefill_batch_tokens=4096)
    one = TopologyPlan("coloc", "colocated", n_p=0, n_d=1)
    out: list = []
    run_topology(stack, one, _trace([1000, 20_000], [200, 2], arrivals=[0.0, 1.0]), sink=out.append)
    a, b = sorted(out, key=lambda r: r.request_id)
    cost = stack.local
    ends = cost.prefill_time_s(1000) + np.cumsum([cost.decode_step_s(1, 1001 + j) for j in range(199)])
    k = int(np.searchsorted(ends, 1.0))
    t_b = cost.prefill_time_s(20_000)
    carried = [cost.carried_decode_s(1, 1001 + k + 1 + i) for i in range(5)]
    gaps = [t_b / 5 + c for c in carried]
    assert a.itl_s[k + 1 : k + 6] == pytest.approx(gaps, abs=1e-9)
    assert b.prefill_start_s == pytest.approx(ends[k], abs=1e-9)
    assert b.first_token_s == pytest.approx(ends[k] + sum(gaps), abs=1e-9)


# ---------------------------------------------------------------------------------------------- cache-aware routing
def _extended_prompt(setup, a_tokens: int, a_blocks: int, b_tokens: int):
    """Request A at 0 s, then B at 100 s whose prompt starts with A's ``a_blocks`` blocks, through a
    prfaas topology with t = 10,000 and one instance of each kind; returns A's and B's records and
    the run summary."""
    from harness.serving.build import TopologyPlan

    b_blocks = -(-b_tokens // 512)  # the trace's hash ids: one per 512-token block, the last partial
    a_ids, b_ids = list(range(a_blocks)), [*range(a_blocks), *range(1000, 1000 + b_blocks - a_blocks)]
    trace = Trace(
        arrival_s=np.array([0.0, 100.0]),
        input_tokens=np.array([a_tokens, b_tokens]),
        output_tokens=np.array([2, 2]),
        hash_values=np.array(a_ids + b_ids, dtype=np.int64),
        hash_offsets=np.array([0, len(a_ids), len(a_ids) + len(b_ids)]),
    )
    topo = TopologyPlan("p", "prfaas", n_p=1, n_d=1, n_prfaas=1, threshold_tokens=10_000)
    out: list = []
    summary = run_topology(setup.stack, topo, trace, sink=out.append).summary
    a, b = sorted(out, key=lambda r: r.request_id)
    return a, b, summary


@pytest.mark.parametrize("mode", ["local", "global"])
def test_cache_aware_routing_counts_the_prefix_where_the_mode_says(paper, mode):
    # A (30,000 tokens) goes remote and leaves 59 blocks in the remote cache; B extends A's prompt.
    # The 1T hybrid resumes where A's linear state was saved, after its last full block: 58 blocks.
    a, b, summary = _extended_prompt(with_stack(paper, prfaas_cache=mode), 30_000, 59, 31_000)
    kv = paper.stack.local.kv_bytes
    prefix = 30_000 // 512 * 512
    assert a.route == "remote" and b.cached_tokens == prefix
    if mode == "local":  # the local site holds nothing: 31,000 uncached tokens > t, so B goes remote too
        assert b.route == "remote"
        assert summary.link_bytes["remote->local"] == kv(30_000) + kv(31_000)
    else:  # 1,304 uncached tokens: B prefills locally after pulling the prefix's KV across the link
        assert b.route == "local"
        assert summary.link_bytes["remote->local"] == kv(30_000) + kv(prefix)
        assert b.prefill_end_s - b.prefill_start_s == pytest.approx(
            paper.stack.local.prefill_time_s(31_000 - prefix, prefix), abs=1e-12
        )


def test_a_remote_prefill_pulls_the_local_prefix_after_its_prompt_arrived(paper):
    # The lifecycle's order, in one request: the prompt crosses the link (d), the prefill site asks the
    # holder for the prefix (d back), the prefix's KV crosses at link rate (+ d), then the prefill runs.
    # A (5,120 tokens, 10 blocks) prefills locally; B extends it to 30,000 and goes remote.
    slow = type(paper.stack.link)(bandwidth_gbps=1.0, delay_ms=5.0)  # 1 Gbps, 5 ms one way
    setup = with_stack(paper, prfaas_cache="global", link=slow)
    a, b, _ = _extended_prompt(setup, 5_120, 10, 30_000)
    assert a.route == "local" and b.route == "remote" and b.cached_tokens == 5_120
    d, pull_s = 0.005, paper.stack.local.kv_bytes(5_120) / (1e9 / 8)
    assert b.prefill_start_s - b.scheduled_s == pytest.approx(d + d + pull_s + d, abs=1e-9)
    assert b.prefill_end_s - b.prefill_start_s == pytest.approx(
        paper.stack.remote.prefill_time_s(30_000 - 5_120, 5_120), abs=1e-12
    )


def test_bandwidth_aware_router_lowers_a_threshold_that_overloads_the_local_site(paper):
    from harness.serving.build import TopologyPlan
    from harness.serving.router import BandwidthAware

    # t = 100K keeps almost every prompt on the 3 local prefill instances, far beyond their capacity.
    topo = TopologyPlan("p", "prfaas", n_p=3, n_d=5, n_prfaas=4, threshold_tokens=100_000)
    trace = synthetic_trace(paper, 400, 2.5, seed=2)
    fixed = run_topology(paper.stack, topo, trace).summary
    tuned = run_topology(with_stack(paper, bandwidth_aware=BandwidthAware()).stack, topo, trace).summary
    assert fixed.offload_share < 0.05
    assert tuned.offload_share > 0.3
    assert tuned.ttft_p90_s < fixed.ttft_p90_s / 3


def test_cli_unusable_out_is_one_line(tmp_path):
    # Regression: --out under a regular file ended in a mkdir FileNotFoundError traceback.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = _run(str(PAPER), "--rate", "2", "--requests", "5", "--out", str(blocker / "sub"))
    assert res.exit_code == 2 and "cannot write the run directory" in res.output
    assert str(blocker / "sub") in res.output and len(res.output.strip().splitlines()) == 1


def test_ctrl_c_keeps_records_and_marks_run_incomplete(tmp_path):
    """SIGINT mid-run: exit 130, one line, every streamed record kept, meta says interrupted."""
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "harness", "simulate", str(PAPER), "--rate", "2", "--requests", "100000"]
    proc = subprocess.Popen(
        [*cmd, "--topology", "prfaas", "--out", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a background shell ignores it
    )
    try:
        log = None
        while proc.poll() is None and (log is None or log.stat().st_size == 0):
            log = next(tmp_path.glob("*/records.jsonl"), None)
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill() if proc.poll() is None else None
    assert proc.returncode == 130, err.decode()
    assert err.decode().strip() == "interrupted"
    run_dir = log.parent
    meta = json.loads((run_dir / "meta.json").read_text())
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    assert meta["complete"] is False and meta["incomplete_reason"] == "interrupted"
    assert 0 < meta["records"] == len(lines) < 100000
    assert len(read_records(run_dir)) == len(lines)
