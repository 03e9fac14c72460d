"""One rule for prompts beyond the model's context (harness/traces/context.py): refuse in one line naming
how many rows and the longest, or ``--clip`` / ``--drop`` and say so in the results — the same in plan,
simulate and replay."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from threaded_server import ServerThread

from harness.cli import main
from harness.errors import InputError
from harness.loadgen.fakeserver import FakeServer
from harness.records import read_meta, read_records
from harness.traces.context import fit_context
from harness.traces.frame import Trace, offsets_from_lists

CASE_STUDY = Path(__file__).resolve().parent.parent / "workloads" / "paper-case-study.toml"
CONTEXT = 131_072  # kimi-1t-hybrid
# prompt, output: rows 1 and 3 do not fit (131,063 + 10 and 200,000 + 10 tokens); row 2 exactly does.
ROWS = [(1_000, 10), (131_063, 10), (131_062, 10), (200_000, 10), (5_000, 10)]


def _trace(rows=ROWS, block=512) -> Trace:
    ids = [list(range(100 * i, 100 * i + -(-n // block))) for i, (n, _) in enumerate(rows)]
    values, offsets = offsets_from_lists(ids)
    return Trace(
        arrival_s=np.arange(len(rows), dtype=float),
        input_tokens=np.array([n for n, _ in rows]),
        output_tokens=np.array([o for _, o in rows]),
        hash_values=values,
        hash_offsets=offsets,
    )


# ---------------------------------------------------------------------------------------------- the rule
def test_refuse_names_how_many_and_the_longest():
    with pytest.raises(InputError) as err:
        fit_context(_trace(), CONTEXT, where="t.jsonl")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("t.jsonl: 2 of 5 requests exceed the model's context of 131,072 tokens")
    assert "longest: row 3, 200,000 prompt + 10 output" in msg and "--clip" in msg and "--drop" in msg


def test_clip_cuts_prompts_to_context_minus_output_and_keeps_their_leading_blocks():
    out, fit = fit_context(_trace(), CONTEXT, "clip")
    assert out.input_tokens.tolist() == [1_000, 131_062, 131_062, 131_062, 5_000]
    assert (fit.policy, fit.rows, fit.longest_tokens, fit.requests) == ("clip", 2, 200_010, 5)
    blocks = np.diff(out.hash_offsets)
    assert blocks.tolist() == (-(-out.input_tokens // 512)).tolist()
    assert out.hash_ids(3).tolist() == list(range(300, 300 + 256))  # its first 256 blocks, unchanged


def test_drop_leaves_the_rows_out_in_order():
    out, fit = fit_context(_trace(), CONTEXT, "drop")
    assert out.input_tokens.tolist() == [1_000, 131_062, 5_000]
    assert out.hash_ids(1).tolist() == list(range(200, 200 + 256))
    assert (fit.policy, fit.rows) == ("drop", 2)
    with pytest.raises(InputError, match="all 1 requests exceed"):
        fit_context(_trace([(200_000, 10)]), CONTEXT, "drop")


def test_a_trace_that_fits_is_untouched_by_every_policy():
    trace = _trace([(1_000, 10), (131_062, 10)])
    for policy in ("refuse", "clip", "drop"):
        out, fit = fit_context(trace, CONTEXT, policy)
        assert out is trace and fit.rows == 0 and fit.longest_tokens == 0


# ---------------------------------------------------------------------------------------------- commands
def _scenario(tmp_path: Path) -> Path:
    lines = [
        json.dumps({"timestamp": i * 1000, "input_length": n, "output_length": o, "hash_ids": [i]})
        for i, (n, o) in enumerate(ROWS)
    ]
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    text = CASE_STUDY.read_text(encoding="utf-8")
    start, end = text.index("[workload]"), text.index("[slo]")
    path = tmp_path / "over.toml"
    path.write_text(text[:start] + '[workload]\nkind = "trace"\ntrace = "t.jsonl"\n\n' + text[end:])
    return path


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("command", ["plan", "simulate"])
def test_refusal_is_one_line_exit_2(tmp_path, command):
    res = _invoke(command, str(_scenario(tmp_path)))
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith("error: ") and "t.jsonl: 2 of 5 requests exceed" in lines[0]
    )
    res = _invoke(command, str(_scenario(tmp_path)), "--clip", "--drop")
    assert res.exit_code == 2 and res.output.strip() == "error: give --clip or --drop, not both"


@pytest.mark.parametrize(("flag", "requests", "mean"), [("--clip", 5, 79_837.2), ("--drop", 3, 137_062 / 3)])
def test_plan_records_what_it_did(tmp_path, flag, requests, mean):
    res = _invoke("plan", str(_scenario(tmp_path)), flag, "--json")
    assert res.exit_code == 0, res.output
    workload = json.loads(res.output)["workload"]
    assert workload["context"] == {
        "policy": flag[2:],
        "context_tokens": CONTEXT,
        "requests": 5,
        "rows": 2,
        "longest_tokens": 200_010,
    }
    assert workload["requests"] == requests
    assert workload["mean_input_tokens"] == pytest.approx(
        mean
    )  # (1000+131062*3+5000)/5, (1000+131062+5000)/3
    text = _invoke("plan", str(_scenario(tmp_path)), flag).output
    done = "clipped to fit" if flag == "--clip" else "dropped"
    assert (
        f"context: 2 of 5 requests beyond the 131,072-token context {done} (longest 200,010 tokens)" in text
    )


@pytest.mark.parametrize(
    ("flag", "prompts"),
    [("--clip", [1_000, 131_062, 131_062, 131_062, 5_000]), ("--drop", [1_000, 131_062, 5_000])],
)
def test_simulate_records_what_it_did(tmp_path, flag, prompts):
    res = _invoke(
        "simulate",
        str(_scenario(tmp_path)),
        flag,
        "--topology",
        "homogeneous",
        "--out",
        str(tmp_path),
        "--json",
    )
    assert res.exit_code == 0, res.output
    run_dir = json.loads(res.output)["run_dir"]
    meta = read_meta(run_dir)
    assert meta["context"]["policy"] == flag[2:] and meta["context"]["rows"] == 2
    assert meta["planner"]["workload"]["context"] == meta["context"]  # the planner saw the same rows
    df = read_records(run_dir).sort_values("trace_row")
    assert df.prompt_tokens_trace.tolist() == prompts


def test_replay_applies_the_rule_at_the_served_context(tmp_path):
    _scenario(tmp_path)
    trace = str(tmp_path / "t.jsonl")
    base = ["replay", "--model", "m", "--trace", trace, "--quiet", "--max-model-len", "131072"]
    res = _invoke(*base, "--endpoint", "http://127.0.0.1:9", "--out", str(tmp_path / "a"))
    assert res.exit_code == 2 and "2 of 5 requests exceed the model's context of 131,072" in res.output
    res = _invoke(
        "replay",
        "--model",
        "m",
        "--trace",
        trace,
        "--drop",
        "--endpoint",
        "http://127.0.0.1:9",
        "--out",
        str(tmp_path / "b"),
    )
    assert res.exit_code == 2 and "--max-model-len" in res.output
    with ServerThread(FakeServer()) as srv:
        res = _invoke(*base, "--drop", "--endpoint", srv.url, "--out", str(tmp_path / "c"))
    assert res.exit_code == 0, res.output
    run_dir = next(p.parent for p in (tmp_path / "c").rglob("meta.json"))
    assert read_meta(run_dir)["context"]["rows"] == 2
    assert sorted(read_records(run_dir).prompt_tokens_trace) == [1_000, 5_000, 131_062]
