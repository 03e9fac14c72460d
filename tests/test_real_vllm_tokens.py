"""Prompt exactness against a real vLLM (CPU build, tiny random-weight Llama): what the server counts.

The tiny model's tokenizer prepends BOS to a completion prompt and its chat template adds tokens around
a message; its /tokenize reports max_model_len 16384; its prefix cache uses 128-token blocks. The
expectations come from the trace (input_length, hash_ids), the tokenizer file itself and the server's
own counters, never from the harness's arithmetic.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from realengine.results import counter, read_records

from harness.cli import main
from harness.records import read_meta
from harness.traces.context import fit_context
from harness.traces.readers import read_trace

DATA = Path(__file__).parent / "data"
MOONCAKE_SLICE = DATA / "mooncake_conversation_head300.jsonl"
MODEL = "tiny-llama"
CONTEXT = 16384  # the fixture's --max-model-len
TRACE_BLOCK = 512  # Mooncake's hash block
VLLM_BLOCK = 128  # vLLM's CPU prefix-cache block
TEMPLATE = "<|user|>\n{}\n<|assistant|>\n"  # the tiny model's chat template, rendered for one user message

pytestmark = pytest.mark.vllm


def _mooncake_head(path: Path, n: int, max_output: int) -> Path:
    """The slice's first ``n`` rows, outputs capped (decode on two cores is not what is tested here)."""
    with MOONCAKE_SLICE.open() as src, path.open("w") as dst:
        for line in list(src)[:n]:
            row = json.loads(line)
            row["output_length"] = min(row["output_length"], max_output)
            dst.write(json.dumps(row) + "\n")
    return path


def _replay(url: str, trace: Path, out: Path, *extra: str):
    args = ["replay", "--endpoint", url, "--model", MODEL, "--trace", str(trace), "--out", str(out),
            "--rate", "inf", "--concurrency", "1", "--max-send-lag-ms", "1000", "--quiet", *extra]  # fmt: skip
    return CliRunner().invoke(main, args)


def _implied_hits(trace, order: list[int]) -> dict[int, int]:
    """Prefix-cache hits (tokens) the trace's hash_ids imply for each row, sent one at a time in ``order``.

    The rule: a row reuses the longest run of leading block ids it shares with any row that finished
    before it was sent (one request in flight, and a KV cache that holds every prompt, so none is in
    flight or evicted), counted in tokens up to either row's length; vLLM then serves whole 128-token
    blocks of it and never the prompt's last token.
    """
    done: list[tuple[list[int], int]] = []
    implied = {}
    for row in order:
        ids, n = list(trace.hash_ids(row)), int(trace.input_tokens[row])
        shared = 0
        for ids2, n2 in done:
            k = next(
                (i for i, (a, b) in enumerate(zip(ids, ids2, strict=False)) if a != b),
                min(len(ids), len(ids2)),
            )
            shared = max(shared, min(TRACE_BLOCK * k, n, n2))
        implied[row] = min(shared, n - 1) // VLLM_BLOCK * VLLM_BLOCK
        done.append((ids, n))
    return implied


def test_200_mooncake_rows_the_server_counts_input_length_and_caches_what_hash_ids_imply(real_vllm, tmp_path):
    """The issue's acceptance run: 200 Mooncake rows (clipped to the server's 16384 before the run),
    prompts fitted with the server's /tokenize. Every request: usage.prompt_tokens == input_length, no
    usage_mismatch, and vLLM's cached tokens within one of its blocks of what the hash ids imply."""
    path = _mooncake_head(tmp_path / "m200.jsonl", 200, max_output=8)
    out = tmp_path / "run"
    before = counter(real_vllm.metrics_text(), "vllm:prefix_cache_hits")
    res = _replay(real_vllm.url, path, out, "--tokenize-url", real_vllm.url, "--clip")
    assert res.exit_code == 0, res.output
    records = read_records(out)
    assert len(records) == 200 and all(r["status"] == "ok" for r in records), res.output
    meta = read_meta(out)
    assert meta["context"]["context_tokens"] == CONTEXT and meta["context"]["from"].startswith("server")
    assert meta["prompts"]["preparation"]["special_tokens"] == 1  # the tokenizer's BOS
    # Clipped as the shared context rule clips, from the trace file itself.
    trace, fit = fit_context(read_trace(path), CONTEXT, "clip")
    assert meta["context"]["rows"] == fit.rows > 0
    for r in records:
        assert (
            r["prompt_tokens_server"] == r["prompt_tokens_trace"] == int(trace.input_tokens[r["trace_row"]])
        )
        assert "usage_mismatch" not in (r["warning"] or "")
    order = [r["trace_row"] for r in sorted(records, key=lambda r: r["sent_s"])]
    implied = _implied_hits(trace, order)
    worst = max(abs(r["cached_tokens"] - implied[r["trace_row"]]) for r in records)
    assert worst <= VLLM_BLOCK, worst
    assert sum(implied.values()) > 100 * TRACE_BLOCK  # the slice does reuse prefixes
    # The records' cached tokens are the server's own counter's.
    hits = counter(real_vllm.metrics_text(), "vllm:prefix_cache_hits") - before
    assert hits == sum(r["cached_tokens"] for r in records)


def _rows(path: Path, rows: list[tuple[int, int, list[int]]]) -> Path:
    path.write_text(
        "".join(
            json.dumps({"timestamp": i * 100, "input_length": n, "output_length": out, "hash_ids": ids})
            + "\n"
            for i, (n, out, ids) in enumerate(rows)
        )
    )
    return path


def test_chat_prompts_take_the_template_off_and_share_exact_blocks(real_vllm, tmp_path):
    """Chat: the template's tokens (some before the message, some after) are measured and taken off;
    two requests sharing 3 hash ids share exactly 3 trace blocks of the server's tokens."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(real_vllm.model_dir / "tokenizer.json"))
    sample = " the of and to in"
    bare = len(tok.encode(sample, add_special_tokens=False).ids)
    overhead = len(tok.encode(TEMPLATE.format(sample), add_special_tokens=False).ids) - bare
    head = len(tok.encode(TEMPLATE.split("{}")[0], add_special_tokens=False).ids)
    path = _rows(tmp_path / "t.jsonl", [(2000, 4, [7, 8, 9, 10]), (1900, 4, [7, 8, 9, 11]), (300, 4, [12])])
    out = tmp_path / "run"
    res = _replay(real_vllm.url, path, out, "--tokenize-url", real_vllm.url, "--api", "chat")
    assert res.exit_code == 0, res.output
    prep = read_meta(out)["prompts"]["preparation"]
    assert (prep["special_tokens"], prep["special_tokens_before_text"]) == (overhead, head)
    by_row = {r["trace_row"]: r for r in read_records(out)}
    assert [by_row[i]["prompt_tokens_server"] for i in range(3)] == [2000, 1900, 300]
    assert not any(r["warning"] for r in by_row.values())
    assert by_row[1]["cached_tokens"] == 3 * TRACE_BLOCK  # exactly the shared blocks, template head included


def test_a_local_tokenizer_file_fits_before_the_run_and_counts_bos(real_vllm, tmp_path):
    """--tokenizer with the model's own tokenizer.json: fitted before the run (meta says how long it
    took), BOS taken off, so the server counts input_length on every request."""
    path = _rows(
        tmp_path / "t.jsonl", [(n, 4, [i, 100 + i]) for i, n in enumerate([900, 700, 513, 40, 1024])]
    )
    out = tmp_path / "run"
    res = _replay(real_vllm.url, path, out, "--tokenizer", str(real_vllm.model_dir / "tokenizer.json"))
    assert res.exit_code == 0, res.output
    prep = read_meta(out)["prompts"]["preparation"]
    assert prep["source"] == "tokenizer" and prep["rows"] == 5 and prep["special_tokens"] == 1
    records = read_records(out)
    assert all(r["prompt_tokens_server"] == r["prompt_tokens_trace"] and not r["warning"] for r in records)


def test_a_wrong_model_says_what_the_server_said(real_vllm, tmp_path):
    path = _rows(tmp_path / "t.jsonl", [(100, 4, [1])])
    res = CliRunner().invoke(
        main,
        ["replay", "--endpoint", real_vllm.url, "--tokenize-url", real_vllm.url, "--model", "no-such-model",
         "--trace", str(path), "--out", str(tmp_path / "o")],
    )  # fmt: skip
    assert res.exit_code == 2
    assert (
        "The model `no-such-model` does not exist" in res.output and "no /tokenize endpoint" not in res.output
    )


def test_rows_beyond_max_model_len_are_refused_or_dropped_before_the_run(real_vllm, tmp_path):
    rows = [(1000, 4, [1]), (CONTEXT - 2, 4, [2]), (CONTEXT + 50, 4, [3]), (500, 4, [4])]
    path = _rows(tmp_path / "t.jsonl", rows)
    refused = _replay(real_vllm.url, path, tmp_path / "refused", "--tokenize-url", real_vllm.url)
    assert refused.exit_code == 2 and "2 of 4 requests exceed the model's context of 16,384" in refused.output
    assert not (tmp_path / "refused").exists()  # nothing was sent
    res = _replay(real_vllm.url, path, tmp_path / "dropped", "--tokenize-url", real_vllm.url, "--drop")
    assert res.exit_code == 0, res.output
    records = read_records(tmp_path / "dropped")
    assert sorted(r["prompt_tokens_server"] for r in records) == [500, 1000]


def test_the_servers_refusal_reaches_the_summaries(real_vllm, tmp_path):
    """Without --tokenize-url nothing knows the context: the server refuses the long row, and its own
    words (not just "http_400") are in replay's summary and analyze's failure table."""
    path = _rows(tmp_path / "t.jsonl", [(200, 4, [1]), (CONTEXT + 500, 4, [2])])
    out = tmp_path / "run"
    res = _replay(real_vllm.url, path, out)
    assert res.exit_code == 0, res.output
    failed = [r for r in read_records(out) if r["status"] != "ok"]
    assert [r["error_class"] for r in failed] == ["http_400"]
    said = failed[0]["error_message"]
    assert "16384" in said and not said.startswith("{")  # the message, not the JSON around it
    assert said[:60] in res.output  # replay's end summary (stderr)
    analyzed = CliRunner().invoke(main, ["analyze", str(out)])
    assert analyzed.exit_code == 0 and "http_400" in analyzed.output and said[:40] in analyzed.output
