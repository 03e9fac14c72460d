"""``prfaas-bench trace`` through the real CLI root (click's CliRunner)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.traces import read_trace


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, list(args), catch_exceptions=False)

    return invoke


def test_inspect_mooncake_json(run, mooncake_slice):
    res = run("trace", "inspect", str(mooncake_slice), "--json", "--above", "32768")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    # the slice's facts (tests/data/README.md)
    assert out["requests"] == 300 and out["format"] == "mooncake"
    assert out["input_tokens"]["mean"] == pytest.approx(4_269_971 / 300)
    assert out["share_above"] == {"32768": pytest.approx(29 / 300)}
    assert out["prefix_reuse"] == pytest.approx(676 / 8490)


def test_inspect_table(run, azure_code_slice):
    res = run("trace", "inspect", str(azure_code_slice))
    assert res.exit_code == 0
    assert "requests        300" in res.output and "prefix reuse    0.0%" in res.output


def test_bad_line_exit_2_names_file_and_line(run, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1]}\n{oops\n')
    res = run("trace", "inspect", str(path))
    assert res.exit_code == 2
    assert f"{path}: line 2" in res.output and "Traceback" not in res.output
    res = run("trace", "inspect", str(path), "--skip-bad", "--json")
    assert res.exit_code == 0
    assert "skipped 1 bad line(s)" in res.stderr
    assert json.loads(res.stdout)["skipped_lines"] == 1


def test_missing_file_exit_2(run, tmp_path):
    res = run("trace", "inspect", str(tmp_path / "nope.jsonl"))
    assert res.exit_code == 2 and "nope.jsonl: no such file" in res.output


def test_convert_applies_transforms_in_order(run, mooncake_slice, tmp_path):
    out = tmp_path / "busy.parquet"
    res = run(
        "trace", "convert", str(mooncake_slice), str(out),
        "--window", "20:60", "--sample", "0.5", "--seed", "3", "--clip", "8192", "--speedup", "2",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    src = read_trace(mooncake_slice)
    in_window = int(((src.arrival_s >= 20) & (src.arrival_s < 80)).sum())
    got = read_trace(out)
    assert len(got) == round(in_window / 2) and in_window > 100
    assert got.arrival_s.max() < 30 and got.input_tokens.max() <= 8192
    assert (src.input_tokens[(src.arrival_s >= 20) & (src.arrival_s < 80)] > 8192).any()  # clip has work
    assert np.array_equal(np.diff(got.hash_offsets), -(-got.input_tokens // 512))
    assert f"{len(got):,} requests" in res.output and "clipped" in res.output


def test_convert_rate_and_rejections(run, azure_code_slice, tmp_path):
    out = tmp_path / "a.parquet"
    assert run("trace", "convert", str(azure_code_slice), str(out), "--rate", "10").exit_code == 0
    t = read_trace(out)
    assert (len(t) - 1) / t.duration_s == pytest.approx(10.0)
    res = run("trace", "convert", str(azure_code_slice), str(out), "--rate", "10", "--speedup", "2")
    assert res.exit_code == 2 and "only one" in res.output
    res = run("trace", "convert", str(azure_code_slice), str(out), "--window", "1e9:10")
    assert res.exit_code == 2 and "no requests" in res.output
    res = run("trace", "convert", str(azure_code_slice), str(out), "--window", "abc")
    assert res.exit_code == 2 and "START:DURATION" in res.output


def test_synth_deterministic_and_described(run, tmp_path):
    args = [
        "--requests",
        "400",
        "--arrival",
        "poisson:4",
        "--seed",
        "7",
        "--system-prompts",
        "count=2,tokens=1024",
    ]
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    assert run("trace", "synth", str(a), *args).exit_code == 0
    assert run("trace", "synth", str(b), *args).exit_code == 0
    ta, tb = read_trace(a), read_trace(b)
    assert np.array_equal(ta.arrival_s, tb.arrival_s) and np.array_equal(ta.hash_values, tb.hash_values)
    assert ta.input_tokens.min() >= 128 and ta.input_tokens.max() <= 131072  # default: the paper's lognormal
    assert np.all(ta.output_tokens == 1024)


def test_synth_sessions_and_empirical(run, tmp_path, mooncake_slice):
    out = tmp_path / "s.parquet"
    res = run(
        "trace", "synth", str(out), "-n", "300", "--arrival", "gamma:2,3",
        "--lengths", f"empirical:{mooncake_slice}", "--output", f"empirical:{mooncake_slice}",
        "--sessions", "turns=3,concurrent=4", "--turn-lengths", "fixed:100",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    t = read_trace(out)
    assert t.session_id is not None and len(np.unique(t.session_id)) < 300


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arrival", "poisson"], "--arrival: expected 1 value"),
        (["--arrival", "zipf:3"], "unknown arrival process"),
        (["--arrival", "poisson:3", "--lengths", "lognormal:mu=9"], "missing sigma"),
        (["--arrival", "poisson:3", "--lengths", "lognormal:mu=9,sigma=1,lo=500,hi=100"], "0 < lo < hi"),
        (["--arrival", "poisson:-1"], "positive"),
        (["--arrival", "poisson:3", "--system-prompts", "count=2"], "missing tokens"),
        (["--arrival", "poisson:3", "--sessions", "turns=0.5"], "turns >= 1"),
        (
            ["--arrival", "poisson:3", "--lengths", "empirical:/nonexistent.jsonl"],
            "/nonexistent.jsonl: no such file",
        ),
    ],
)
def test_synth_bad_specs_exit_2(run, tmp_path, args, message):
    res = run("trace", "synth", str(tmp_path / "x.parquet"), "-n", "10", *args)
    assert res.exit_code == 2
    assert message in res.output, res.output
    assert not (tmp_path / "x.parquet").exists()


def test_output_never_overwrites_a_raw_trace(run, mooncake_slice, tmp_path):
    # Regression: `trace convert T.jsonl T.jsonl` replaced the source trace with Parquet.
    src = tmp_path / "t.jsonl"
    src.write_bytes(mooncake_slice.read_bytes()[:100_000].rsplit(b"\n", 1)[0] + b"\n")
    before = src.read_bytes()
    res = run("trace", "convert", str(src), str(src))
    assert res.exit_code == 2 and str(src) in res.output and "refusing to overwrite" in res.output
    res = run("trace", "synth", str(src), "-n", "5", "--arrival", "poisson:1")
    assert res.exit_code == 2 and "refusing to overwrite" in res.output
    assert src.read_bytes() == before
    # A Parquet output is still replaced on a second run.
    out = tmp_path / "o.parquet"
    for n in ("5", "7"):
        assert run("trace", "synth", str(out), "-n", n, "--arrival", "poisson:1").exit_code == 0
    assert len(read_trace(out)) == 7


def test_unwritable_output_is_one_line(run, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = run("trace", "synth", str(blocker / "sub" / "o.parquet"), "-n", "5", "--arrival", "poisson:1")
    assert res.exit_code == 2 and "o.parquet: cannot" in res.output and "Traceback" not in res.output
    assert blocker.read_text() == "x"
