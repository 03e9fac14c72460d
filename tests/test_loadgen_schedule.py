"""The schedule (pure numpy) and the SSE line classifier (pure bytes)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.errors import InputError
from harness.loadgen import LoadSpec, build_schedule
from harness.loadgen.schedule import COOLDOWN, MEASURE, WARMUP
from harness.loadgen.sse import BAD, CONTENT, DONE, EMPTY, FULL, SKIP, classify, parse_chunk, prfaas_fields
from harness.traces.frame import Trace


def _trace(arrivals) -> Trace:
    n = len(arrivals)
    return Trace(
        arrival_s=np.asarray(arrivals, dtype=float),
        input_tokens=np.full(n, 10),
        output_tokens=np.full(n, 2),
        hash_values=np.zeros(0, dtype=np.int64),
        hash_offsets=np.zeros(n + 1, dtype=np.int64),
    )


def test_trace_arrivals_start_at_zero_and_respect_limits():
    s = build_schedule(_trace([5.0, 5.5, 7.0, 9.0]), LoadSpec())
    np.testing.assert_allclose(s.offset_s, [0, 0.5, 2.0, 4.0])
    assert build_schedule(_trace([5.0, 5.5, 7.0, 9.0]), LoadSpec(duration_s=2.0)).count == 2
    assert build_schedule(_trace([5.0, 5.5, 7.0, 9.0]), LoadSpec(max_requests=3)).count == 3


@pytest.mark.parametrize(("arrival", "cv"), [("poisson", 1.0), ("gamma", 2.0), ("constant", 0.0)])
def test_rate_arrivals_have_the_requested_mean_and_burstiness(arrival, cv):
    s = build_schedule(
        _trace([0, 1, 2]), LoadSpec(arrival=arrival, rate_rps=50, gamma_cv=2.0, max_requests=40_000)
    )
    gaps = np.diff(s.offset_s)
    assert gaps.mean() == pytest.approx(1 / 50, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, abs=0.06)
    assert s.row.tolist()[:7] == [0, 1, 2, 0, 1, 2, 0]  # the trace's requests, cycled


def test_seed_makes_the_schedule_reproducible():
    spec = LoadSpec(arrival="poisson", rate_rps=10, max_requests=100, seed=7)
    a, b = build_schedule(_trace([0]), spec), build_schedule(_trace([0]), spec)
    np.testing.assert_array_equal(a.offset_s, b.offset_s)
    c = build_schedule(_trace([0]), LoadSpec(arrival="poisson", rate_rps=10, max_requests=100, seed=8))
    assert not np.array_equal(a.offset_s, c.offset_s)


def test_duration_fills_the_rate():
    s = build_schedule(_trace([0]), LoadSpec(arrival="constant", rate_rps=10, duration_s=3.0))
    assert s.count == 30 and s.offset_s[-1] == pytest.approx(2.9)


def test_phases_mark_warmup_and_cooldown():
    s = build_schedule(
        _trace([0]), LoadSpec(arrival="constant", rate_rps=10, duration_s=3.0, warmup_s=1, cooldown_s=0.5)
    )
    # offsets 0.0..2.9; warmup < 1.0 -> 10; cooldown > 3.0 - 0.5 -> 2.6..2.9 = 4
    assert (
        (s.phase == WARMUP).sum() == 10
        and (s.phase == COOLDOWN).sum() == 4
        and (s.phase == MEASURE).sum() == 16
    )


def test_worker_parts_cover_every_request_once():
    s = build_schedule(_trace(np.arange(101.0)), LoadSpec(concurrency=5))
    parts = [s.part(k, 3) for k in range(3)]
    idx = sorted(i for p in parts for i in p.indices())
    assert idx == list(range(101))
    assert sum(p.concurrency for p in parts) == 5


def test_closed_loop_needs_concurrency_and_is_not_materialised():
    with pytest.raises(InputError, match="concurrency"):
        LoadSpec(rate_rps=float("inf"))
    s = build_schedule(_trace([0, 1]), LoadSpec(rate_rps=float("inf"), concurrency=4, duration_s=10))
    assert s.closed_loop and s.offset_s is None and s.count > 10**9


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"arrival": "poisson"}, "needs --rate"),
        ({"arrival": "weibull", "rate_rps": 1}, "--arrival"),
        ({"rate_rps": -1}, "positive"),
        ({"concurrency": 0}, "concurrency"),
        ({"warmup_s": -1}, "warmup"),
    ],
)
def test_bad_load_specs_are_rejected(kwargs, match):
    with pytest.raises(InputError, match=match):
        LoadSpec(**kwargs)


def _line(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (_line({"choices": [{"index": 0, "text": " hi", "finish_reason": None}]}), CONTENT),
        (_line({"choices": [{"index": 0, "delta": {"content": "x"}}]}), CONTENT),
        (_line({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}), EMPTY),
        (_line({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}), EMPTY),
        (_line({"choices": [{"index": 0, "delta": {"content": None}, "finish_reason": "length"}]}), EMPTY),
        # an empty text is a generated token (a partial UTF-8 byte) unless it ends the stream
        (_line({"choices": [{"index": 0, "text": "", "finish_reason": None}]}), CONTENT),
        (_line({"choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": None}]}), CONTENT),
        (_line({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}), EMPTY),
        (_line({"choices": [{"index": 0, "text": None}]}), EMPTY),
        (_line({"choices": [], "usage": {"prompt_tokens": 1}}), FULL),
        (_line({"usage": {"prompt_tokens": 1, "completion_tokens": 3}, "choices": []}), FULL),
        (_line({"error": {"message": "boom"}}), FULL),
        (b"data: [DONE]", DONE),
        (b"data:[DONE]\r", DONE),
        (b": keep-alive", SKIP),
        (b"event: message", SKIP),
        (b"", SKIP),
        (b"<html>502 Bad Gateway</html>", BAD),
        (b'data: {"choices": [{"text": "trunc', BAD),
    ],
)
def test_classify(line, kind):
    assert classify(line)[0] == kind


def test_a_running_count_is_read_off_the_bytes_and_a_final_usage_is_parsed():
    usage = {"prompt_tokens": 5, "total_tokens": 9, "completion_tokens": 4}
    kind, _, completion = classify(
        _line({"choices": [{"index": 0, "text": "", "finish_reason": None}], "usage": usage})
    )
    assert (kind, completion) == (CONTENT, 4)
    # the usage before the empty choices: still the final usage chunk, parsed
    assert classify(_line({"usage": usage, "choices": []}))[0] == FULL
    assert (
        classify(_line({"choices": [{"text": "x"}], "usage": usage, "prfaas": {"route": "local"}}))[0] == FULL
    )
    assert classify(_line({"choices": [{"text": "x"}]}))[2] == -1


@pytest.mark.parametrize(
    ("payload", "expected"),
    [  # vLLM's compact JSON: the count last, or other fields and keys after it
        (b'{"choices":[{"text":"x"}],"usage":{"prompt_tokens":3,"completion_tokens":7}}', (CONTENT, 7)),
        (b'{"choices":[{"text":"x"}],"usage":{"completion_tokens":7,"prompt_tokens":3}}', (CONTENT, 7)),
        (b'{"choices":[{"text":"x"}],"usage":{"completion_tokens":7},"error":"e"}', (FULL, -1)),
        (b'{"choices":[{"text":"x"}],"usage":{"completion_tokens":7},"prfaas":{}}', (FULL, -1)),
        (b'{"usage":{"completion_tokens":7},"choices":[]}', (FULL, -1)),
        (b'{"choices":[{"text":"\\"completion_tokens\\":9"}],"usage":{"completion_tokens":7}}', (CONTENT, 7)),
    ],
)
def test_a_running_count_in_compact_json(payload, expected):
    kind, _, completion = classify(b"data: " + payload)
    assert (kind, completion) == expected


def test_fast_path_agrees_with_a_full_parse_on_awkward_text():
    texts = ['"', '\\"text\\":\\"', '"content":"', "", "\n", "é", "}", '{"text":""}', " "]
    for t in texts:
        for finish in (None, "length"):
            choices = ({"text": t, "finish_reason": finish}, {"delta": {"content": t}, "finish_reason": finish},
                       {"delta": {"role": "assistant", "content": t}, "finish_reason": finish})  # fmt: skip
            for choice in choices:
                kind, payload, _ = classify(_line({"choices": [choice]}))
                expected = parse_chunk(payload).has_token
                assert (kind == CONTENT) == expected, (choice, kind)


def test_prfaas_fields_are_typed_and_moved_to_the_run_clock():
    out = prfaas_fields(
        {"route": "local", "kv_bytes": "12", "prefill_start_s": 110, "cached_tokens": True}, 100.0
    )
    assert out == {"route": "local", "prefill_start_s": 10.0}  # wrong types dropped
