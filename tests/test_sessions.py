"""Sessions in a trace (pure): inference from hash_ids prefix chains, turn checks, the session plan,
the native format's turn column, synth's turns, and bad sessions as one line with exit code 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.errors import InputError, TraceError
from harness.traces import (
    Fixed,
    Poisson,
    Sessions,
    SynthSpec,
    Trace,
    offsets_from_lists,
    synthesize,
    write_native,
)
from harness.traces.readers import read_trace
from harness.traces.sessions import ThinkTime, infer_sessions, session_plan, with_turns

REPO_SCENARIO = "workloads/paper-case-study.toml"


def _trace(rows, *, session_id=None, turn=None) -> Trace:
    """rows: (arrival s, input tokens, output tokens, hash ids); 512-token blocks."""
    values, offsets = offsets_from_lists([r[3] for r in rows])
    return Trace(
        arrival_s=np.array([r[0] for r in rows], dtype=float),
        input_tokens=np.array([r[1] for r in rows], dtype=np.int64),
        output_tokens=np.array([r[2] for r in rows], dtype=np.int64),
        hash_values=values, hash_offsets=offsets,
        session_id=None if session_id is None else np.array(session_id, dtype=np.int64),
        turn=None if turn is None else np.array(turn, dtype=np.int64),
        source="hand.parquet",
    )  # fmt: skip


# Hand-made rows, each chosen for one part of the rule (512-token blocks):
HAND = [
    (0.0, 1100, 100, [1, 2, 3]),  # r0: full blocks (1, 2); its partial block 3 is rewritten next turn
    (1.0, 600, 50, [8, 9]),  # r1: shares nothing with r0
    (5.0, 1600, 100, [1, 2, 4, 5]),  # r2: starts with r0's full blocks, 1600 >= 1100 + 100: r0's next turn
    (6.0, 1150, 10, [1, 2, 7]),  # r3: r0's prefix again, but r0 is continued already: a new session
    (7.0, 700, 5, [8, 10]),  # r4: r1's full block (8), 700 >= 650: r1's next turn
    (8.0, 2300, 5, [1, 2, 4, 12, 13]),  # r5: (1, 2, 4), r2's full blocks, beats (1, 2): r2's next turn
    (9.0, 650, 5, [8, 10]),  # r6: r4's full block (8), but 650 < 700 + 5: no answer inside, new session
    (10.0, 900, 10, [1, 20]),  # r7: a first turn whose only full block (1) is shared context ...
    (11.0, 2000, 5, [1, 21, 22, 23]),  # r8: ... so this row, sharing only (1), does not continue it
]


def test_sessions_are_inferred_from_prefix_chains_by_the_documented_rule():
    t = infer_sessions(_trace(HAND))
    assert t.session_id.tolist() == [0, 1, 0, 2, 1, 0, 3, 4, 5]
    assert t.turn.tolist() == [0, 0, 1, 0, 1, 2, 0, 0, 0]


def test_the_plan_has_each_turns_predecessor_think_time_and_new_user_tokens():
    plan = session_plan(_trace(HAND))
    assert plan.predecessor.tolist() == [-1, -1, 0, -1, 1, 2, -1, -1, -1]
    # think = the trace's gap between the two turns; user = this prompt − (previous prompt + answer)
    assert plan.think_s.tolist() == [0, 0, 5.0, 0, 6.0, 3.0, 0, 0, 0]
    assert plan.user_tokens.tolist() == [1100, 600, 400, 1150, 50, 600, 650, 900, 2000]
    assert plan.sessions == 6


def test_think_time_from_the_scenario_replaces_the_gap():
    fixed = session_plan(_trace(HAND), ThinkTime.parse("fixed:2.5"))
    assert fixed.think_s[fixed.predecessor >= 0].tolist() == [2.5, 2.5, 2.5]
    drawn = session_plan(_trace(HAND), ThinkTime.parse("exp:4"), seed=3)
    again = session_plan(_trace(HAND), ThinkTime.parse("exp:4"), seed=3)
    assert (drawn.think_s == again.think_s).all() and (drawn.think_s[drawn.predecessor < 0] == 0).all()
    for bad in ("poisson:3", "fixed:-1", "fixed:x", "exp"):
        with pytest.raises(InputError, match="think time"):
            ThinkTime.parse(bad)


def test_given_sessions_are_kept_and_turns_follow_arrival_order():
    rows = [(float(i), 100 * (i + 1), 10, []) for i in range(5)]
    t = with_turns(_trace(rows, session_id=[7, 3, 7, -1, 7]))
    assert t.turn.tolist() == [0, 0, 1, -1, 2]
    plan = session_plan(t)
    assert plan.predecessor.tolist() == [-1, -1, 0, -1, 2]
    assert plan.user_tokens.tolist() == [100, 200, 300 - 110, 400, 500 - 310]


@pytest.mark.parametrize(
    ("turns", "row", "problem"),
    [
        ([0, 2, 3], 2, "session 5: turn 2 has no predecessor (turn 1 is missing)"),
        ([1, 2, 3], 1, "session 5: turn 1 has no predecessor (turn 0 is missing)"),
        ([0, 1, 1], 3, "session 5: turn 1 repeats turn 1 of row 2"),
    ],
)
def test_a_session_with_a_gap_or_a_missing_predecessor_names_its_row(turns, row, problem):
    rows = [(float(i), 100 * (i + 1), 10, []) for i in range(3)]
    with pytest.raises(TraceError) as err:
        session_plan(_trace(rows, session_id=[5, 5, 5], turn=turns))
    assert str(err.value) == f"hand.parquet: row {row}: {problem}"


def test_the_native_format_keeps_session_and_turn(tmp_path):
    t = infer_sessions(_trace(HAND))
    back = read_trace(write_native(t, tmp_path / "s.parquet"))
    assert back.session_id.tolist() == t.session_id.tolist() and back.turn.tolist() == t.turn.tolist()
    # a file with sessions but no turn column gets turns by arrival order
    plain = read_trace(write_native(t.replace(turn=None), tmp_path / "p.parquet"))
    assert plain.turn is None and with_turns(plain).turn.tolist() == t.turn.tolist()


def test_synth_sessions_carry_turns_that_the_plan_accepts():
    spec = SynthSpec(
        requests=400, lengths=Fixed(2000), arrivals=Poisson(4.0), outputs=Fixed(100),
        sessions=Sessions(mean_turns=3, concurrent=8, user_tokens=Fixed(300)),
    )  # fmt: skip
    t = synthesize(spec, seed=1)
    plan = session_plan(t)
    follow = plan.predecessor >= 0
    assert follow.sum() > 100
    # every later turn grew by exactly its user message: prompt + answer + 300 new tokens
    assert (plan.user_tokens[follow] == 300).all()
    assert (t.input_tokens[follow] == t.input_tokens[plan.predecessor[follow]] + 100 + 300).all()
    # and inference from its hash ids alone finds the same conversations
    inferred = infer_sessions(t.replace(session_id=None, turn=None))
    assert (session_plan(inferred).predecessor == plan.predecessor).all()


def _bad_native(tmp_path):
    rows = [(float(i), 100 * (i + 1), 10, [i]) for i in range(3)]
    return write_native(_trace(rows, session_id=[5, 5, 5], turn=[0, 2, 3]), tmp_path / "gap.parquet")


def test_replay_and_simulate_refuse_a_broken_session_in_one_line(tmp_path):
    path = _bad_native(tmp_path)
    runner = CliRunner()
    replay = runner.invoke(
        main,
        ["replay", "--endpoint", "http://127.0.0.1:9", "--model", "m", "--trace", str(path), "--sessions",
         "--out", str(tmp_path / "out")],
    )  # fmt: skip
    simulate = runner.invoke(
        main, ["simulate", REPO_SCENARIO, "--trace", str(path), "--sessions", "--out", str(tmp_path / "s")]
    )
    for result in (replay, simulate):
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert lines == [f"error: {path}: row 2: session 5: turn 2 has no predecessor (turn 1 is missing)"]


def _session_scenario(tmp_path, value: str):
    text = Path(REPO_SCENARIO).read_text().split("[workload]")
    assert len(text) == 2
    body = text[1].split("\n[", 1)
    trace = Path("tests/data/mooncake_conversation_head300.jsonl").resolve()
    workload = f'[workload]\nkind = "trace"\ntrace = "{trace}"\nsessions = "{value}"\n'
    path = tmp_path / "s.toml"
    path.write_text(text[0] + workload + "\n[" + body[1])
    return path


def test_the_scenario_key_is_checked_and_the_commands_that_ignore_it_say_so(tmp_path):
    from harness.scenario import load_scenario

    loaded = load_scenario(_session_scenario(tmp_path, "exp:2"))
    assert loaded.config.workload.sessions == "exp:2"
    assert any("[workload] sessions = 'exp:2' is ignored: bench" in w for w in loaded.warnings("bench"))
    assert not any("sessions" in w for w in loaded.warnings("simulate"))
    with pytest.raises(InputError, match=r"\[workload\] sessions: .*think time"):
        load_scenario(_session_scenario(tmp_path, "poisson:3"))


def test_synth_with_think_time_starts_sessions_and_spaces_their_turns():
    spec = SynthSpec(
        requests=4000, lengths=Fixed(2000), arrivals=Poisson(2.0), outputs=Fixed(100),
        sessions=Sessions(mean_turns=4, user_tokens=Fixed(300), think_s=20.0),
    )  # fmt: skip
    t = synthesize(spec, seed=1)
    assert len(t) == 4000 and (np.diff(t.arrival_s) >= 0).all()
    plan = session_plan(t)
    follow = plan.predecessor >= 0
    assert (t.input_tokens[follow] == t.input_tokens[plan.predecessor[follow]] + 100 + 300).all()
    assert (t.turn[~follow] == 0).all()
    # session starts come from the arrival process: 2 per second, so about 2 × span sessions
    assert plan.sessions == pytest.approx(2.0 * t.duration_s, rel=0.1)
    # exponential think times of mean 20 s (those cut off at the trace's end are more often long ones)
    assert plan.think_s[follow].mean() == pytest.approx(20.0, rel=0.15)
    assert (
        session_plan(infer_sessions(t.replace(session_id=None, turn=None))).predecessor == plan.predecessor
    ).all()


def test_synth_sessions_take_concurrent_or_think_not_both(tmp_path):
    out = tmp_path / "x.parquet"
    res = CliRunner().invoke(
        main, ["trace", "synth", str(out), "-n", "20", "--arrival", "poisson:1", "--sessions", "turns=3,think=2,concurrent=4"]
    )  # fmt: skip
    assert res.exit_code == 2 and res.output.strip().splitlines() == [
        "error: --sessions: give concurrent=C or think=S, not both (with think, arrivals start sessions)"
    ]
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rate", "2"], "--sessions replays the trace's own timestamps: drop --rate/--arrival"),
        (
            ["--workers", "2"],
            "--sessions needs --workers 1 (a session's turns wait on each other), or --ray-address (whose "
            "workers each get whole sessions)",
        ),
        (["--think", "poisson:1"], "think time must be trace, fixed:S or exp:MEAN, got 'poisson:1'"),
    ],
)
def test_replay_session_mode_refuses_what_it_cannot_honour(tmp_path, extra, message):
    args = ["replay", "--endpoint", "http://127.0.0.1:9", "--model", "m", "--sessions", "--out", str(tmp_path / "o"),
            "--trace", "tests/data/mooncake_conversation_head300.jsonl", *extra]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and res.output.strip().splitlines() == [f"error: {message}"]
    assert not (tmp_path / "o").exists()


def test_inspect_and_convert_show_and_write_the_inferred_sessions(tmp_path):
    import json

    src = "tests/data/mooncake_conversation_head300.jsonl"
    expected = infer_sessions(read_trace(src))
    res = CliRunner().invoke(main, ["trace", "inspect", src, "--sessions", "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)["session_plan"]
    assert got["inferred"] is True and got["sessions"] == len(set(expected.session_id.tolist()))
    assert got["later_turns"] == int((expected.turn > 0).sum()) > 0 and got["max_turn"] == expected.turn.max()
    out = tmp_path / "s.parquet"
    assert CliRunner().invoke(main, ["trace", "convert", src, str(out), "--sessions"]).exit_code == 0
    back = read_trace(out)
    assert (
        back.session_id.tolist() == expected.session_id.tolist()
        and back.turn.tolist() == expected.turn.tolist()
    )


def test_agentic_synth_has_short_tool_calls_and_long_growing_contexts(tmp_path):
    out = tmp_path / "agent.parquet"
    args = ["trace", "synth", str(out), "-n", "1500", "--arrival", "poisson:0.2", "--lengths", "uniform:2000,6000",
            "--agentic", "steps=15", "--seed", "4"]  # fmt: skip
    assert CliRunner().invoke(main, args).exit_code == 0
    t = read_trace(out)
    plan = session_plan(t)
    later = plan.predecessor >= 0
    # the agent defaults: tool calls of 16-128 generated tokens, tool results of 256-4096 tokens
    assert t.output_tokens.min() >= 16 and t.output_tokens.max() <= 128
    assert plan.user_tokens[later].min() >= 256 and plan.user_tokens[later].max() <= 4096
    grown = t.input_tokens[plan.predecessor[later]] + t.output_tokens[plan.predecessor[later]]
    assert (t.input_tokens[later] == grown + plan.user_tokens[later]).all()
    assert later.mean() > 0.8  # most requests are later steps of a session
    assert plan.think_s[later].mean() == pytest.approx(0.5, rel=0.15)  # the tool's latency
    both = CliRunner().invoke(main, [*args, "--sessions", "turns=3"])
    assert both.exit_code == 2 and both.output.strip() == "error: give --sessions or --agentic, not both"


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        (b'{"choices":[{"index":0,"text":" tok","logprobs":null}]}', " tok"),
        (b'{"choices":[{"delta":{"content":"h\\u00e9 \\"x\\"\\n"}}]}', 'hé "x"\n'),  # JSON escapes
        ('{"choices":[{"delta":{"content":"été"}}]}'.encode(), "été"),  # raw UTF-8
        (b'{"choices":[{"delta":{"role":"assistant","content":""}}]}', ""),
        (b'{"choices":[],"usage":{"completion_tokens":3}}', ""),
    ],
)
def test_the_answer_text_a_later_turn_carries_is_read_as_json_says(payload, text):
    from harness.loadgen.sse import chunk_text

    assert chunk_text(payload) == text
