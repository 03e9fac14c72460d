"""Tokens per chunk and the first generated token: hand-computed attributions, then real streams from
a fake server on 127.0.0.1 that sends 1, 4 or a varying number of tokens per chunk, with and without
vLLM's running usage (continuous_usage_stats), and tokens whose text is empty."""

from __future__ import annotations

import math

import numpy as np
import pytest
from threaded_server import ServerThread

from harness.analysis import metrics as m
from harness.loadgen import Endpoint, ReplayConfig, replay
from harness.loadgen.chunks import chunk_timing, largest_read, token_gaps
from harness.loadgen.client import STREAM_OPTIONS
from harness.loadgen.fakeserver import FakeServer
from harness.records import read_records
from harness.traces.frame import Trace

# --- attribution, by hand ----------------------------------------------------------------------


def test_four_tokens_per_chunk_spread_over_the_chunk_gap():
    # 8 tokens in two chunks of 4 at 1.0 s and 1.4 s: the first chunk's 3 extra tokens came with
    # the first token (gaps 0), the second chunk's 4 tokens share its 0.4 s gap.
    t = chunk_timing([1.0, 1.4], [(0, 4), (1, 4)], total=8)
    assert t.itl_s == pytest.approx([0, 0, 0, 0.1, 0.1, 0.1, 0.1])
    assert (t.tokens_per_chunk, t.tokens_per_chunk_max, t.itl_unresolved) == (4.0, 4, False)
    assert sum(t.itl_s) == pytest.approx(1.4 - 1.0)  # gaps add up to last − first


def test_a_varying_count_gives_one_gap_per_token():
    # chunks of 1, 3, 2, 2 tokens, each k × 0.1 s after the previous: every token 0.1 s apart
    t = chunk_timing([1.0, 1.3, 1.5, 1.7], [(1, 3), (2, 2), (3, 2)], total=8)
    assert t.itl_s == pytest.approx([0.1] * 7)
    assert (t.tokens_per_chunk, t.tokens_per_chunk_max, t.itl_unresolved) == (2.0, 3, False)


def test_packed_tokens_without_counts_keep_chunk_gaps_and_are_unresolved():
    # the same stream from a server that sends no running count: only its total (8) is known
    t = chunk_timing([1.0, 1.3, 1.5, 1.7], [], total=8)
    assert t.itl_s == pytest.approx([0.3, 0.2, 0.2])
    assert (t.tokens_per_chunk, t.tokens_per_chunk_max, t.itl_unresolved) == (2.0, None, True)


def test_most_tokens_in_one_read_is_unresolved():
    assert largest_read([1.0, 1.0, 1.0, 2.0], [(1, 2)]) == 4
    assert chunk_timing([1.0, 1.0, 1.0, 1.0, 2.0], [], total=5).itl_unresolved  # 4 of 5 in one read
    assert not chunk_timing([1.0, 1.0, 2.0, 3.0], [], total=4).itl_unresolved  # 2 of 4: not most
    one = chunk_timing([0.0, 0.1, 0.2], [], total=3)
    assert one.itl_s == pytest.approx([0.1, 0.1]) and (one.tokens_per_chunk_max, one.itl_unresolved) == (
        1,
        False,
    )
    assert token_gaps([5.0], [(0, 3)]) == [0.0, 0.0]


# --- real streams ------------------------------------------------------------------------------

N_OUT = 8


def _trace(n: int, n_out: int = N_OUT) -> Trace:
    return Trace(
        arrival_s=np.arange(n) * 0.05,
        input_tokens=np.full(n, 16),
        output_tokens=np.full(n, n_out),
        hash_values=np.arange(n, dtype=np.int64),
        hash_offsets=np.arange(n + 1, dtype=np.int64),
    )


def _replay(server: FakeServer, out, *, n: int = 3, api: str = "completions", **cfg):
    with ServerThread(server) as srv:
        config = ReplayConfig(
            endpoints=(Endpoint(name="t", url=srv.url, model="m", api=api),), progress=False, **cfg
        )
        replay(_trace(n), config, out, quiet=True)
    return read_records(out)


def _longest_zero_run(gaps: np.ndarray) -> int:
    best = run = 0
    for g in gaps:
        run = run + 1 if g == 0 else 0
        best = max(best, run)
    return best


def _chunks_of(pattern: tuple[int, ...], n: int) -> list[int]:
    out: list[int] = []
    while sum(out) < n:
        out.append(min(pattern[len(out) % len(pattern)], n - sum(out)))
    return out


@pytest.mark.parametrize("api", ["completions", "chat"])
@pytest.mark.parametrize("deltas", [True, False], ids=["usage-deltas", "no-deltas"])
@pytest.mark.parametrize("pattern", [(1,), (4,), (1, 3, 2, 2)], ids=["1", "4", "varying"])
def test_tokens_per_chunk_from_a_real_stream(tmp_path, pattern, deltas, api):
    server = FakeServer(chunk_tokens=pattern, usage_deltas=deltas, itl_s=0.03, keep_bodies=True)
    df = _replay(server, tmp_path / "run", api=api)
    assert server.bodies[0]["stream_options"] == STREAM_OPTIONS  # the running count is asked for
    chunks = _chunks_of(pattern, N_OUT)
    assert (df["status"] == "ok").all()
    assert (df["output_tokens_received"] == N_OUT).all()
    assert df["tokens_per_chunk"].tolist() == pytest.approx([N_OUT / len(chunks)] * len(df))
    tpot = m.tpot(df)
    for i, rec in df.iterrows():
        itl = np.asarray(rec["itl_s"])
        span = rec["last_token_s"] - rec["first_token_s"]
        assert tpot[i] == pytest.approx(span / (N_OUT - 1))  # TPOT counts every token, packed or not
        assert itl.sum() == pytest.approx(span)
        if deltas or pattern == (1,):
            # one gap per token: the first chunk's extras are 0, a chunk of k shares its gap k ways
            assert rec["tokens_per_chunk_max"] == max(chunks)
            # tokens of one read have gap 0 (a busy client may read two chunks at once)
            assert rec["itl_unresolved"] == (2 * (_longest_zero_run(itl) + 1) > N_OUT)
            assert len(itl) == N_OUT - 1
            assert itl.mean() == pytest.approx(tpot[i])
            assert (itl[: chunks[0] - 1] == 0).all()
            start = chunks[0] - 1
            for k in chunks[1:]:
                group = itl[start : start + k]
                assert group.max() - group.min() <= 1e-12
                start += k
        else:
            # tokens packed without counts: only the total is known, gaps stay per chunk
            assert math.isnan(rec["tokens_per_chunk_max"]) and rec["itl_unresolved"]
            assert len(itl) == len(chunks) - 1


@pytest.mark.parametrize("api", ["completions", "chat"])
@pytest.mark.parametrize("deltas", [True, False], ids=["usage-deltas", "no-deltas"])
def test_empty_text_tokens_set_the_first_token(tmp_path, deltas, api):
    # The first 3 tokens decode to "" (partial UTF-8 bytes): they are generated tokens all the same.
    server = FakeServer(empty_text=3, usage_deltas=deltas, itl_s=0.03, first_token_delay_s=0.05)
    df = _replay(server, tmp_path / "run", api=api)
    assert (df["status"] == "ok").all() and df["first_token_s"].notna().all()
    for itl in df["itl_s"]:
        assert len(itl) == N_OUT - 1  # every token timed, the empty ones included
    assert np.isfinite(m.ttft(df)).all()


def test_an_ok_stream_without_a_token_is_an_error(tmp_path):
    df = _replay(FakeServer(mode="no_tokens"), tmp_path / "run", api="chat")
    assert (df["status"] == "error").all() and (df["error_class"] == "no_tokens").all()
    assert df["first_token_s"].isna().all()
    assert "completion_tokens=0" in df["error_message"].iloc[0]
    assert m.output_tps(df) == 0.0 or math.isnan(m.output_tps(df))  # nothing counted as throughput


def test_instant_streams_are_flagged_unresolved(tmp_path):
    # itl_s=0: the server writes each whole stream at once; the client reads it in one go
    df = _replay(FakeServer(itl_s=0.0), tmp_path / "run")
    assert (df["output_tokens_received"] == N_OUT).all() and df["itl_unresolved"].all()


def test_unresolved_itl_is_left_out_of_itl_and_noted():
    from harness.analysis.analyze import _record_notes
    from harness.analysis.summary import Slo, summarize
    from harness.records import RequestRecord, records_frame

    def rec(i: int, itl: list[float], unresolved: bool) -> RequestRecord:
        return RequestRecord(run_id="r", topology="t", request_id=str(i), trace_row=i, scheduled_s=0.0,
                             first_token_s=1.0, last_token_s=1.0 + sum(itl), itl_s=itl,
                             output_tokens_received=len(itl) + 1, itl_unresolved=unresolved)  # fmt: skip

    df = records_frame([rec(0, [0.1, 0.3], False).to_dict(), rec(1, [0.0, 0.0, 0.0, 2.0], True).to_dict()])
    assert sorted(m.itl(df)) == pytest.approx([0.1, 0.3])  # the one-read gaps are not ITL
    assert m.tpot(df) == pytest.approx([0.2, 0.5])  # TPOT holds for both
    s = summarize(df, Slo())
    assert s["itl_unresolved"] == 1 and s["itl_max_s"] == pytest.approx(0.3)
    (note,) = _record_notes("t", s)
    assert note.startswith("t: ITL unresolved on 1 of 2 successful requests")
