"""A real vLLM (CPU build, tiny random-weight Llama) driven by replay: real HTTP, real engine.

The fixture (``real_vllm`` in conftest) needs ``make vllm-venv``; without it these tests skip on a
laptop and fail under CI=true. One server serves the whole session; tests reset its prefix cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from realengine.results import counter, read_records

from harness.cli import main
from harness.records import read_meta

DATA = Path(__file__).parent / "data"
MOONCAKE_SLICE = DATA / "mooncake_conversation_head300.jsonl"

pytestmark = pytest.mark.vllm


def test_a_short_replay_against_real_vllm_streams_every_output_token(real_vllm, tmp_path):
    """Twenty small rows, closed loop: every request succeeds and gets exactly the output the trace asks
    for (ignore_eos), and the server counts the prompt tokens the records say it was sent."""
    trace = tmp_path / "t.jsonl"
    rows = [
        {"timestamp": i * 50, "input_length": 200 + 37 * i, "output_length": 8 + i, "hash_ids": [i]}
        for i in range(20)
    ]
    trace.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        ["replay", "--endpoint", real_vllm.url, "--model", "tiny-llama", "--trace", str(trace),
         "--out", str(out), "--max-send-lag-ms", "1000"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = read_records(out)
    assert len(records) == 20
    assert all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    assert sorted(r["output_tokens_received"] for r in records) == sorted(r["output_length"] for r in rows)
    assert read_meta(out)["complete"] is True
    # The server's own counter saw at least the prompt tokens every record says the server reported.
    prompt_total = counter(real_vllm.metrics_text(), "vllm:prompt_tokens")
    assert prompt_total >= sum(r["prompt_tokens_server"] for r in records)
