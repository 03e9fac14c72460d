"""A real vLLM prefill/decode pair (CPU build, NixlConnector over UCX/TCP) driven by replay's PD proxy.

Opt-in (CI included): ``PRFAAS_NIXL_PD=1`` and ``make vllm-nixl-venv``; the ``real_vllm_pd`` fixture skips
otherwise (docs/engines.md says why).
The decode server's own counters say where its prompt tokens came from and how many KV bytes NIXL
moved; both are checked against what the trace and the model's shape imply.
"""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from harness.cli import main
from harness.records import read_meta

pytestmark = pytest.mark.vllm_pd


def _sample(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def test_replay_through_a_real_pd_pair_moves_every_prompts_kv_to_decode(real_vllm_pd, tmp_path):
    """Twenty rows through the two-leg PD protocol: every request succeeds with its exact output, the
    prefill leg hands back kv_transfer_params, the decode server computes none of the prompt itself (all
    of it arrives by KV transfer), and NIXL moved one cache block of K and V per started 128 tokens."""
    from realengine.pd import kv_bytes_per_block

    prefill, decode, model = real_vllm_pd
    rows = [
        {"timestamp": i * 50, "input_length": 200 + 37 * i, "output_length": 8 + i, "hash_ids": [i]}
        for i in range(20)
    ]
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = decode.metrics_text()
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        ["replay", "--prefill-url", prefill.url, "--decode-url", decode.url, "--model", "tiny-llama",
         "--trace", str(trace), "--out", str(out), "--max-send-lag-ms", "1000",
         # a request whose KV never arrives fails in minutes instead of hanging the suite for an hour
         "--timeout-first-token", "180", "--timeout-total", "300"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert read_meta(out)["complete"] is True
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 20
    assert all(r["status"] == "ok" for r in records), [r.get("error_message") for r in records]
    assert sorted(r["output_tokens_received"] for r in records) == sorted(r["output_length"] for r in rows)
    assert not any("pd_no_kv_transfer_params" in (r.get("warning") or "") for r in records)
    assert {r["prefill_instance"] for r in records} == {prefill.url.removeprefix("http://")}

    after = decode.metrics_text()

    def delta(name: str, **labels: str) -> float:
        return _sample(after, name, **labels) - _sample(before, name, **labels)

    prompts = [r["prompt_tokens_server"] for r in records]
    by_source = "vllm:prompt_tokens_by_source_total"
    assert delta(by_source, source="external_kv_transfer") == sum(prompts)
    assert delta(by_source, source="local_compute") == 0
    blocks = sum(math.ceil(n / 128) for n in prompts)
    assert delta("vllm:nixl_bytes_transferred_sum") == blocks * kv_bytes_per_block(model)
    assert delta("vllm:nixl_num_failed_transfers_total") == 0
