"""Session mode over real HTTP and in virtual time.

* against the built-in fake server: no turn goes out before its predecessor ended plus its think time,
  asserted from the records alone, and each turn's prompt is the previous prompt + answer + new text;
* against the emulated clusters (loopback sites): the cached prefix the server reports for each turn is
  the previous turn's prompt, to within one block (completions and chat); and simulate and replay of
  the same multi-turn trace agree within docs/fidelity.md's bounds (or the replay's own verdict says
  why it cannot be trusted);
* in simulate, the same rule holds exactly (virtual time).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_serve_api import drop_tables  # tests/ is on sys.path (no package)
from threaded_server import ServerThread

from harness.analysis import metrics as m
from harness.analysis.sessions import session_figures
from harness.emulation.clusters import EmulatedClusters
from harness.loadgen.config import Endpoint, ReplayConfig
from harness.loadgen.fakeserver import FakeServer, fake_server_process
from harness.loadgen.runner import replay
from harness.records import read_records
from harness.scenario import load_scenario
from harness.serving.config import prepare
from harness.serving.runner import run_topology
from harness.traces import Fixed, Poisson, Sessions, SynthSpec, Trace, synthesize
from harness.traces.sessions import ThinkTime, session_plan

REPO = Path(__file__).resolve().parent.parent
CLOCK_READ_S = 1e-6  # send and end are read on one monotonic clock: only float rounding separates them


def conversations(n: int, *, seed: int, rate: float, first: int, user: int, output: int) -> Trace:
    spec = SynthSpec(
        requests=n, lengths=Fixed(first), arrivals=Poisson(rate), outputs=Fixed(output),
        sessions=Sessions(mean_turns=3, concurrent=4, user_tokens=Fixed(user)),
    )  # fmt: skip
    return synthesize(spec, seed=seed)


def _with_predecessors(df: pd.DataFrame) -> pd.DataFrame:
    """Each later turn's record beside its previous turn's record (joined on session and turn)."""
    prev = df[["session_id", "turn", "end_s", "prompt_tokens_server", "output_tokens_received"]].copy()
    prev["turn"] += 1
    return df[df.turn > 0].merge(prev, on=["session_id", "turn"], suffixes=("", "_prev"), validate="1:1")


def assert_dependency(df: pd.DataFrame, think_s: np.ndarray) -> pd.DataFrame:
    """No later turn was sent before its predecessor's end + its think time (``think_s`` by trace row)."""
    later = _with_predecessors(df)
    assert len(later) == (df.turn > 0).sum() > 0
    # the end the record says it waited for is its predecessor's own recorded end
    assert (later.predecessor_end_s == later.end_s_prev).all()
    due = later.end_s_prev + think_s[later.trace_row]
    assert (later.sent_s >= due - CLOCK_READ_S).all()
    assert np.allclose(later.scheduled_s, due)
    assert df[df.turn == 0].predecessor_end_s.isna().all()
    return later


def test_replay_sends_no_turn_before_its_predecessor_ended(tmp_path):
    # Turns arrive 20 ms apart in the trace while a request takes > 80 ms: open loop would overlap them.
    trace = conversations(24, seed=2, rate=50.0, first=40, user=7, output=6)
    plan = session_plan(trace)
    assert (plan.predecessor >= 0).sum() >= 8
    with fake_server_process("--ttft-ms", "60", "--itl-ms", "4") as url:
        config = ReplayConfig(
            endpoints=(Endpoint(name="f", url=url, model="m"),), progress=False, sessions=ThinkTime()
        )
        replay(trace, config, tmp_path / "run", quiet=True)
    df = read_records(tmp_path / "run")
    assert len(df) == len(trace) and m.ok_mask(df).all()
    assert df.session_id.tolist() == plan.session_id[df.trace_row].tolist()
    assert df.turn.tolist() == plan.turn[df.trace_row].tolist()
    later = assert_dependency(df, plan.think_s)
    # The prompt the server counted is the previous one + the answer it sent + the new user words.
    grown = later.prompt_tokens_server_prev + later.output_tokens_received_prev + 7
    assert (later.prompt_tokens_server == grown).all()
    figures = session_figures(df)
    assert figures["sessions"] == plan.sessions and figures["turns_max"] == plan.turn.max() + 1


def test_token_exact_prompts_stay_exact_across_turns(tmp_path):
    """--tokenize-url: a first turn is fitted to the trace's length; a later turn adds to the previous
    prompt the answer as the server tokenizes it and exactly its new user tokens."""
    pytest.importorskip("tokenizers")
    from test_loadgen_tokenize import _bos_bpe  # a byte-level BPE with BOS, trained at test time

    tok = _bos_bpe()
    trace = conversations(16, seed=3, rate=40.0, first=300, user=50, output=8)
    trace = trace.replace(block_tokens=64)
    plan = session_plan(trace)
    with ServerThread(FakeServer(tokenizer=tok)) as srv:
        endpoint = Endpoint(name="f", url=srv.url, model="m")
        config = ReplayConfig(
            endpoints=(endpoint,), progress=False, sessions=ThinkTime(), tokenize_url=srv.url
        )
        replay(trace, config, tmp_path / "run", quiet=True)
    df = read_records(tmp_path / "run")
    assert m.ok_mask(df).all()
    first = df[df.turn == 0]
    assert (first.prompt_tokens_server == first.prompt_tokens_trace).all()
    later = assert_dependency(df, plan.think_s)
    answer = len(tok.encode(" tok" * 8, add_special_tokens=False).ids)  # the fake server's 8 tokens, re-read
    assert (later.prompt_tokens_server == later.prompt_tokens_server_prev + answer + 50).all()


def test_simulate_follows_the_same_rule_in_virtual_time():
    setup = prepare(load_scenario(REPO / "workloads" / "paper-case-study.toml"))
    trace = conversations(60, seed=4, rate=2.0, first=3000, user=400, output=64)
    plan = session_plan(trace, ThinkTime.parse("fixed:1.5"))
    records = run_topology(setup.stack, setup.topologies["homogeneous"], trace, sessions=plan).records
    records["end_s"] = m.request_end(records)
    records["sent_s"] = records["scheduled_s"]
    later = assert_dependency(records, plan.think_s)
    assert np.allclose(later.scheduled_s - later.end_s_prev, 1.5)
    # the simulated prompt grew by the answer and the user message, like the replayed one
    assert (later.prompt_tokens_trace == later.prompt_tokens_server_prev + 64 + 400).all()


# --- against the emulated clusters ------------------------------------------------------------------

SPEEDUP = 10.0
FIXED_WALL_S = 0.010  # the emulator's fixed per-request wall cost (docs/fidelity.md)
MAX_SEND_LAG_S = 0.25


@pytest.fixture(scope="module")
def emulated_sessions(tmp_path_factory):
    """One multi-turn trace replayed in session mode against emulated homogeneous PD, and simulated."""
    tmp = tmp_path_factory.mktemp("sessions")
    text = drop_tables((REPO / "workloads" / "paper-case-study.toml").read_text(), "emulation")
    path = tmp / "scenario.toml"
    path.write_text(text + f"\n[emulation]\nspeedup = {SPEEDUP}\nkv_rate_mbit = 800\n")
    trace = conversations(30, seed=5, rate=1.0, first=2300, user=300, output=32)
    results = {}
    with EmulatedClusters(path, netns=False, topologies=["homogeneous"]) as clusters:
        block = clusters.spec.block_tokens
        for api in ("completions", "chat"):  # chat: the turns go as a message list
            url = clusters.urls["homogeneous"]
            endpoint = Endpoint(name="homogeneous", model=clusters.model, url=url, api=api)
            config = ReplayConfig(endpoints=(endpoint,), progress=False, sessions=ThinkTime())
            fast = trace.replace(arrival_s=trace.arrival_s / SPEEDUP)
            results[api] = replay(fast, config, tmp / api, quiet=True)
    setup = prepare(load_scenario(path), topologies=["homogeneous"])
    sim = run_topology(
        setup.stack, setup.topologies["homogeneous"], trace, sessions=session_plan(trace)
    ).records
    runs = {api: read_records(tmp / api) for api in results}
    return trace, runs, sim, results["completions"], block


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_the_cached_prefix_of_each_turn_is_the_previous_prompt(emulated_sessions, api):
    trace, runs, _, _, block = emulated_sessions
    df = runs[api]
    assert m.ok_mask(df).all() and len(df) == len(trace)
    assert_dependency(df, session_plan(trace.replace(arrival_s=trace.arrival_s / SPEEDUP)).think_s)
    later = _with_predecessors(df)
    # The server holds the previous turn's prompt in whole blocks; this turn starts with it.
    expected = later.prompt_tokens_server_prev // block * block
    assert (abs(later.cached_tokens - expected) <= block).all(), later[["cached_tokens"]].assign(e=expected)
    assert (later.cached_tokens > 0).all()


def test_simulate_and_replay_of_the_same_sessions_agree(emulated_sessions):
    _, runs, sim, result, _ = emulated_sessions
    emu = runs["completions"]
    if result.verdict.startswith("invalid"):  # a machine too busy to trust: it must say why
        assert len(result.verdict) > len("invalid: ")
        return
    lag = float(np.percentile(m.col(emu, "sent_s") - m.col(emu, "scheduled_s"), 99))
    assert lag <= MAX_SEND_LAG_S, f"send lag p99 {lag * 1e3:.0f} ms, the client missed its schedule"
    resolution = SPEEDUP * (FIXED_WALL_S + lag)
    # In session mode a turn leaves when its predecessor ends, so each turn's latency error (at most
    # ``resolution``) moves every later turn of its session: the span may differ by 5% plus one
    # resolution per turn of the longest session (a quiet CI run: 5.2% over 30 requests, 9 sessions).
    chain = int(np.nanmax(m.col(emu, "turn"))) + 1
    span_sim, span_emu = m.duration(sim), m.duration(emu) * SPEEDUP
    assert abs(span_emu - span_sim) <= 0.05 * span_sim + chain * resolution, (span_sim, span_emu, chain)
    ttft_sim, ttft_emu = m.ttft(sim), m.ttft(emu) * SPEEDUP
    for q in (50, 90):
        s, r = np.percentile(ttft_sim, q), np.percentile(ttft_emu, q)
        assert abs(r - s) <= 0.10 * s + resolution, f"TTFT p{q}: simulate {s:.3f} s, replay {r:.3f} s"
    hit = [m.col(d, "cached_tokens").sum() / m.col(d, "prompt_tokens_trace").sum() for d in (sim, emu)]
    assert abs(hit[1] - hit[0]) <= 0.05, f"cached share: simulate {hit[0]:.3f}, replay {hit[1]:.3f}"
