"""The Λ_max search's verdict on one probe, on hand-made records whose queue is known exactly.

Requests arrive every 1/λ seconds and are served FIFO by one server taking 1/μ each, so the waiting count
at any time, the completion rate and every TTFT follow by hand: a stable run (μ > λ) never queues, an
overloaded one (μ < λ) queues at exactly λ − μ requests per second.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from harness.analysis.summary import Slo
from harness.serving.stability import judge_probe, waiting_counts


def fifo_records(rate: float, service_s: float, n: int, *, output_tokens: int = 2) -> pd.DataFrame:
    """``n`` arrivals every ``1/rate`` s through one FIFO server taking ``service_s`` each; the first
    token comes when service ends, the last token 0.1 s later."""
    arrival = np.arange(n) / rate
    first = np.empty(n)
    free = 0.0
    for i, a in enumerate(arrival):
        free = max(free, a) + service_s
        first[i] = free
    return pd.DataFrame(
        {
            "scheduled_s": arrival,
            "first_token_s": first,
            "last_token_s": first + 0.1,
            "output_tokens_received": np.full(n, output_tokens),
            "status": "ok",
        }
    )


SLO = Slo(ttft_s=30.0, tpot_s=None, attainment=0.99)


def test_a_stable_run_passes_with_every_figure_as_computed_by_hand():
    # λ = 2/s, service 0.4 s: no request ever waits for another; TTFT 0.4 s.
    rec = fifo_records(2.0, 0.4, 2_000)
    v = judge_probe(rec, 2.0, SLO)
    assert v.passed and v.reason is None
    span = 1999 / 2.0
    assert v.window_start_s == pytest.approx(0.2 * span) and v.window_end_s == pytest.approx(span)
    assert v.offered_rps == pytest.approx(2.0, rel=2e-3)
    assert v.achieved_rps == pytest.approx(2.0, rel=2e-3)  # completions lag arrivals by 0.5 s, one request
    assert v.attainment == 1.0
    assert abs(v.queue_slope_rps) < 1e-3  # the waiting count is 0 or 1 throughout


def test_a_linearly_growing_queue_fails_as_unstable_even_while_the_slo_is_met():
    # λ = 2/s against μ = 1.9/s: the queue grows at 0.1/s. Over 1,000 s of arrivals the last request
    # waits about 50 s, so a 100 s TTFT bound is never breached: only the steady-state test sees it.
    rec = fifo_records(2.0, 1 / 1.9, 2_000)
    v = judge_probe(rec, 2.0, Slo(ttft_s=100.0, attainment=0.99))
    assert v.attainment == 1.0
    assert not v.passed and v.reason == "unstable"
    assert v.achieved_rps == pytest.approx(1.9, rel=5e-3)
    assert v.queue_slope_rps == pytest.approx(0.1, rel=0.02)


def test_a_slow_drift_within_the_throughput_tolerance_is_caught_by_the_queue_trend():
    # μ = 1.98/s at λ = 2: completions are 1% short (inside the 2% tolerance), but over the 800 s window
    # the queue grows by 8 requests, 4 s of waiting: more than X.
    rec = fifo_records(2.0, 1 / 1.98, 2_000)
    v = judge_probe(rec, 2.0, Slo(ttft_s=10.0, attainment=0.5))
    assert v.achieved_rps / v.offered_rps == pytest.approx(0.99, abs=2e-3)
    assert v.reason == "unstable" and "grow" in v.detail
    assert v.queue_slope_rps == pytest.approx(0.02, rel=0.05)
    assert v.queue_slope_bound_rps == pytest.approx(0.5 * 10.0 * v.achieved_rps / (0.8 * 999.5), rel=1e-9)


def test_a_stable_run_that_misses_the_slo_fails_as_slo():
    # Stable (service 0.4 s at λ = 2), but every 20th request takes 5 s longer to its first token: 5% of
    # the window's arrivals miss a 2 s bound, against a 99% target.
    rec = fifo_records(2.0, 0.4, 2_000)
    slow = np.arange(len(rec)) % 20 == 0
    rec.loc[slow, "first_token_s"] += 5.0
    rec.loc[slow, "last_token_s"] += 5.0
    v = judge_probe(rec, 2.0, Slo(ttft_s=2.0, attainment=0.99))
    assert v.reason == "slo" and not v.passed
    in_window = rec["scheduled_s"] >= v.window_start_s
    assert v.attainment == pytest.approx(1 - slow[in_window].mean())


def test_warm_up_and_drain_are_outside_the_window():
    # A burst of 200 slow requests in the warm-up and a stuck last-second tail change nothing measured.
    rec = fifo_records(2.0, 0.4, 2_000)
    early = rec["scheduled_s"] < 100  # inside the first 20% (200 s) of the span
    rec.loc[early, "first_token_s"] += 60.0
    rec.loc[early, "last_token_s"] += 60.0
    v = judge_probe(rec, 2.0, SLO)
    assert v.passed and v.attainment == 1.0


def test_failed_requests_count_against_attainment_and_throughput():
    rec = fifo_records(2.0, 0.4, 2_000)
    rec.loc[rec.index % 10 == 0, "status"] = "error"  # 10% fail: completions fall 10% short
    v = judge_probe(rec, 2.0, SLO)
    assert v.reason == "unstable" and v.achieved_rps == pytest.approx(1.8, rel=5e-3)


def test_waiting_counts_by_hand():
    arrival = np.array([0.0, 1.0, 2.0, 3.0])
    first = np.array([0.5, 4.0, np.nan, 3.5])  # the third never gets a first token
    assert waiting_counts(arrival, first, np.array([0.0, 0.6, 2.0, 3.2, 3.6, 5.0])).tolist() == [
        1, 0, 2, 3, 2, 1,
    ]  # fmt: skip
