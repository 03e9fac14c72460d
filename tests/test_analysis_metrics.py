"""Metric functions against hand-computed values from hand-built records."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from synthetic_runs import SyntheticTopology, synthetic_records

from harness.analysis import metrics as m
from harness.analysis.summary import Slo, summarize
from harness.records import RequestRecord


def _df(*recs: RequestRecord) -> pd.DataFrame:
    return pd.DataFrame([r.to_dict() for r in recs])


# A: remote prefill, KV crosses the link and is exposed for 0.3 s.
A = RequestRecord(
    run_id="r", topology="t", request_id="a", trace_row=0, scheduled_s=0.0, sent_s=0.002,
    first_token_s=2.35, last_token_s=2.53, itl_s=[0.02] * 9, prompt_tokens_trace=4000,
    output_tokens_received=10, cached_tokens=1000, route="remote", prefill_site="remote",
    decode_site="local", prefill_start_s=0.5, prefill_end_s=2.0, kv_bytes=1_000_000_000,
    kv_transfer_start_s=1.0, kv_transfer_end_s=2.3,
)  # fmt: skip
# B: local, no transfer recorded; 5 tokens 50 ms apart.
B = RequestRecord(
    run_id="r", topology="t", request_id="b", trace_row=1, scheduled_s=1.0, sent_s=1.001,
    first_token_s=1.9, last_token_s=2.1, itl_s=[0.05] * 4, prompt_tokens_trace=1000,
    prompt_tokens_server=1000, output_tokens_received=5, cached_tokens=0, route="local",
    prefill_site="local", decode_site="local", prefill_start_s=1.2, prefill_end_s=1.8,
    kv_bytes=200_000_000,
)  # fmt: skip
# C: failed. D: one output token, server reports queue time only.
C = RequestRecord(
    run_id="r", topology="t", request_id="c", trace_row=2, scheduled_s=2.0, sent_s=2.5, status="error"
)
D = RequestRecord(
    run_id="r", topology="t", request_id="d", trace_row=3, scheduled_s=3.0, sent_s=3.0,
    first_token_s=3.4, last_token_s=3.4, output_tokens_received=1, route="local", prefill_queue_s=0.1,
)  # fmt: skip
DF = _df(A, B, C, D)


def test_per_request_latencies():
    assert m.ttft(DF)[[0, 1, 3]] == pytest.approx([2.35, 0.9, 0.4])
    assert np.isnan(m.ttft(DF)[2])
    assert m.tpot(DF)[:2] == pytest.approx([0.18 / 9, 0.2 / 4])
    assert np.isnan(m.tpot(DF)[3])  # one token: no TPOT, not zero
    assert m.e2e(DF)[[0, 1, 3]] == pytest.approx([2.53, 1.1, 0.4])
    assert m.send_lag(DF) == pytest.approx([0.002, 0.001, 0.5, 0.0])
    assert sorted(m.itl(DF)) == pytest.approx([0.02] * 9 + [0.05] * 4)


def test_tpot_of_an_answer_delivered_in_one_read_is_undefined_not_zero():
    """A busy vLLM frontend can hand over a whole answer at once: first and last token in one read.
    No time between tokens was observed, so its TPOT is NaN (percentiles leave it out; an SLO on TPOT
    cannot miss it), and the summary counts it for analyze's note."""
    burst = RequestRecord(
        run_id="r", topology="t", request_id="e", trace_row=4, scheduled_s=4.0, sent_s=4.0,
        first_token_s=4.3, last_token_s=4.3, itl_s=[0.0] * 39, output_tokens_received=40,
        itl_unresolved=True,
    )  # fmt: skip
    df = _df(A, B, burst)
    assert np.isnan(m.tpot(df)[2]) and m.tpot(df)[:2] == pytest.approx([0.18 / 9, 0.2 / 4])
    assert m.meets_slo(df, None, 0.001).tolist() == [False, False, True]
    assert summarize(df, Slo())["tpot_one_read"] == 1


def test_ttft_breakdown_by_hand():
    assert m.ttft_queue(DF)[[0, 1, 3]] == pytest.approx([0.5, 0.2, 0.1])  # D: server's queue time
    assert m.ttft_prefill(DF)[:2] == pytest.approx([1.5, 0.6])
    assert m.ttft_transfer(DF)[:2] == pytest.approx([0.3, 0.0])  # B moved nothing across: 0 exposed
    assert m.ttft_first_token(DF)[:2] == pytest.approx([0.05, 0.1])
    assert np.isnan(m.ttft_prefill(DF)[3])


def test_aggregates_by_hand():
    duration = 3.4 - 0.0  # last token of a successful request − first scheduled send
    assert m.duration(DF) == pytest.approx(duration)
    assert m.throughput_rps(DF) == pytest.approx(3 / duration)
    assert m.output_tps(DF) == pytest.approx(16 / duration)
    # TTFT ≤ 1 s: B and D; TPOT ≤ 30 ms: A (20 ms) and D (no TPOT), not B (50 ms).
    assert m.goodput_rps(DF, ttft_slo_s=1.0) == pytest.approx(2 / duration)
    assert m.goodput_rps(DF, tpot_slo_s=0.03) == pytest.approx(2 / duration)
    assert m.goodput_rps(DF, ttft_slo_s=1.0, tpot_slo_s=0.03) == pytest.approx(1 / duration)
    assert m.slo_attainment(DF, ttft_slo_s=1.0, tpot_slo_s=0.03) == pytest.approx(1 / 4)
    assert m.offload_share(DF) == pytest.approx(1 / 3)  # C has no route
    assert m.kv_bytes_total(DF) == 1_200_000_000
    assert m.egress_gbps(DF) == pytest.approx(8.0 / duration)  # only A's gigabyte crossed sites
    assert m.cache_hit_rate(DF) == pytest.approx(1000 / 5000)  # D has no cached count: left out


def test_slo_bound_met_despite_float_rounding():
    # 64 tokens 25 ms apart from t = 0.1·14: (last − first)/63 rounds to 0.025000000000000005.
    rec = RequestRecord(
        run_id="r", topology="t", request_id="x", trace_row=0, scheduled_s=0.0, first_token_s=0.1 * 14,
        last_token_s=0.1 * 14 + 63 * 0.025, output_tokens_received=64,
    )  # fmt: skip
    df = _df(rec)
    assert m.tpot(df)[0] > 0.025
    assert m.meets_slo(df, None, 0.025).all()
    assert not m.meets_slo(df, None, 0.0249).any()


def test_unobservable_metrics_are_nan_not_zero():
    bare = _df(RequestRecord(run_id="r", topology="t", request_id="x", trace_row=0, scheduled_s=0.0))
    for fn in (m.offload_share, m.kv_bytes_total, m.egress_gbps, m.cache_hit_rate, m.duration):
        assert math.isnan(fn(bare)), fn.__name__


def test_measured_drops_warmup_and_cooldown():
    df = _df(A, B, C, D)
    df["phase"] = ["warmup", "measure", None, "cooldown"]
    assert list(m.measured(df)["request_id"]) == ["b", "c"]


def test_lambda_max_is_highest_rate_before_first_miss():
    rates, att = [4.0, 1.0, 3.0, 2.0], [0.999, 1.0, 0.97, 0.995]
    assert m.lambda_max(rates, att, 0.99) == 2.0  # 4.0 meets it again, but 3.0 already failed
    assert m.lambda_max(rates, [1.0] * 4, 0.99) == 4.0
    assert math.isnan(m.lambda_max(rates, [0.5] * 4, 0.99))


def test_every_metric_is_tagged_with_name_and_unit():
    assert m.ttft.metric.unit == "s" and m.ttft.metric.better == "lower"
    assert m.throughput_rps.metric.unit == "req/s" and m.throughput_rps.metric.better == "higher"
    assert m.METRICS["egress"].unit == "Gbit/s"


@settings(max_examples=30, deadline=None)
@given(
    queue=st.floats(0.0, 5.0), prefill=st.floats(0.01, 10.0), transfer=st.floats(0.0, 3.0),
    remote=st.floats(0.0, 1.0), seed=st.integers(0, 1000),
)  # fmt: skip
def test_breakdown_sums_to_ttft(queue, prefill, transfer, remote, seed):
    topo = SyntheticTopology(queue_s=queue, prefill_s=prefill, transfer_s=transfer, remote_share=remote)
    df = _df(*synthetic_records("r", "t", topo, 20, seed=seed))
    parts = m.ttft_queue(df) + m.ttft_prefill(df) + m.ttft_transfer(df) + m.ttft_first_token(df)
    assert parts == pytest.approx(m.ttft(df), abs=1e-9)
    assert (m.ttft_transfer(df) >= 0).all()
