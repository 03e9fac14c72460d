"""A real SGLang (the registry's build, CPU torch, tiny random-weight Llama) driven by replay.

Opt-in: the ``real_sglang`` fixture needs ``make sglang-venv`` and skips without it (CI included). One
server serves the module; replay flushes its radix cache before each run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from harness.cli import main
from harness.records import read_meta

pytestmark = pytest.mark.sglang


def _counter(text: str, name: str) -> float:
    """A counter family's value in Prometheus exposition text, summed over its labels."""
    for family in text_string_to_metric_families(text):
        if family.name == name:
            return sum(s.value for s in family.samples if s.name == name + "_total")
    raise KeyError(name)


def _replay(server, rows: list[dict], tmp_path: Path, name: str, *extra: str) -> list[dict]:
    trace = tmp_path / f"{name}.jsonl"
    trace.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / name
    result = CliRunner().invoke(
        main,
        ["replay", "--endpoint", server.url, "--model", "tiny-llama", "--trace", str(trace),
         "--out", str(out), "--max-send-lag-ms", "1000", *extra],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert read_meta(out)["complete"] is True
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def test_a_short_replay_against_real_sglang_streams_every_output_token(real_sglang, tmp_path):
    """Twenty small rows: every request succeeds with exactly the output the trace asks for
    (ignore_eos), and SGLang's own counters saw the prompt and output tokens the records report."""
    before = real_sglang.metrics_text()
    rows = [
        {"timestamp": i * 50, "input_length": 200 + 37 * i, "output_length": 8 + i, "hash_ids": [i]}
        for i in range(20)
    ]
    records = _replay(real_sglang, rows, tmp_path, "run")
    assert len(records) == 20
    assert all(r["status"] == "ok" for r in records), [r.get("error_message") for r in records]
    assert sorted(r["output_tokens_received"] for r in records) == sorted(r["output_length"] for r in rows)
    after = real_sglang.metrics_text()
    prompt = _counter(after, "sglang:prompt_tokens") - _counter(before, "sglang:prompt_tokens")
    generated = _counter(after, "sglang:generation_tokens") - _counter(before, "sglang:generation_tokens")
    assert prompt == sum(r["prompt_tokens_server"] for r in records)
    assert generated == sum(r["output_length"] for r in rows)


def test_replays_reset_reaches_sglangs_flush_cache(real_sglang, tmp_path):
    """Replay resets the server before its run (SGLang answers on /flush_cache): the same prompt run
    again with --no-reset hits the radix cache (cached_tokens in the usage the record carries), and run
    again with the default reset is computed from nothing."""
    row = [{"timestamp": 0, "input_length": 600, "output_length": 4, "hash_ids": [90, 91]}]
    first = _replay(real_sglang, row, tmp_path, "first")[0]
    warm = _replay(real_sglang, row, tmp_path, "warm", "--no-reset")[0]
    reset = _replay(real_sglang, row, tmp_path, "reset")[0]
    assert [r["status"] for r in (first, warm, reset)] == ["ok"] * 3
    assert first["prompt_tokens_server"] == warm["prompt_tokens_server"] == reset["prompt_tokens_server"]
    assert not first["cached_tokens"]
    # Every prompt token but the last comes from the cache: the last one is recomputed for its logits.
    assert warm["cached_tokens"] == warm["prompt_tokens_server"] - 1
    assert not reset["cached_tokens"]
