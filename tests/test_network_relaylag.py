"""The relay's lateness histogram: quantiles, windows between two readings, the published file."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.network.relaylag import LagHistogram, lag_path, read_lag, write_lag


def _hist(lates_us: list[float], **kw) -> LagHistogram:
    h = LagHistogram(**kw)
    for us in lates_us:
        h.add(us / 1e6)
    return h


def test_quantiles_are_the_upper_edge_of_the_10_us_bin():
    h = _hist([3.0] * 50 + [25.0] * 49 + [1234.0], delay_us=4000)
    # 100 frames: the 50th is in [0, 10) µs, the 99th in [20, 30) µs, the largest in [1230, 1240) µs
    assert h.quantile(0.5) == pytest.approx(10e-6)
    assert h.quantile(0.99) == pytest.approx(30e-6)
    assert h.quantile(1.0) == pytest.approx(1240e-6)
    s = h.summary()
    assert (s["frames"], s["late_ms_p50"], s["late_ms_p99"], s["late_ms_max"]) == (100, 0.01, 0.03, 1.24)
    assert (s["delay_ms"], s["achieved_ms_p50"], s["achieved_ms_p99"]) == (4.0, 4.01, 4.03)
    assert LagHistogram().quantile(0.5) is None


def test_since_gives_the_lateness_between_two_readings_only():
    early = _hist([5.0] * 10, dropped_loss=2)
    later = _hist([5.0] * 10 + [2005.0] * 3 + [15.0], dropped_loss=5, dropped_full=1)
    window = later.since(early)
    assert window.counts == {200: 3, 1: 1} and window.frames == 4
    assert (window.dropped_loss, window.dropped_full) == (3, 1)
    assert window.quantile(0.5) == pytest.approx(2010e-6)  # 3 of the 4 were 2.005 ms late


def test_the_published_file_round_trips(tmp_path: Path):
    path = lag_path(tmp_path / "pfbx-a-b.ctl.json")
    assert path.name == "pfbx-a-b.lag.json" and read_lag(path) is None
    h = _hist([7.0, 70.0, 700.0], seq=3, delay_us=5000, jitter_us=100, dropped_full=2)
    write_lag(path, h)
    assert read_lag(path) == h
