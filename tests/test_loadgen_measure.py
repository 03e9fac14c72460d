"""What replay measures: TTFT and send lag from the scheduled time, token counts, server-reported fields,
the PD two-leg protocol, paired endpoints and worker processes — against real servers on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from threaded_server import ServerThread

from harness.loadgen import PD_PREFILL_KV_PARAMS, Endpoint, LoadSpec, ReplayConfig, replay
from harness.loadgen.config import Timeouts
from harness.loadgen.driver import WorkerSetup
from harness.loadgen.fakeserver import FakeServer
from harness.loadgen.schedule import build_schedule
from harness.loadgen.workers import run_workers
from harness.records import read_meta, read_records
from harness.traces.frame import Trace


def _trace(n: int, gap_s: float = 0.01, n_in: int = 32, n_out: int = 8) -> Trace:
    return Trace(
        arrival_s=np.arange(n) * gap_s,
        input_tokens=np.full(n, n_in),
        output_tokens=np.full(n, n_out),
        hash_values=np.arange(n, dtype=np.int64) % 3,  # three shared prefixes
        hash_offsets=np.arange(n + 1, dtype=np.int64),
    )


def _config(*endpoints: Endpoint, **kw) -> ReplayConfig:
    return ReplayConfig(endpoints=endpoints, progress=False, **kw)


def test_ttft_counts_from_the_scheduled_time_and_matches_a_known_server_delay(tmp_path):
    delay = 0.25
    with ServerThread(FakeServer(first_token_delay_s=delay)) as srv:
        replay(
            _trace(5, gap_s=0.1), _config(Endpoint(name="d", url=srv.url, model="m")), tmp_path, quiet=True
        )
    df = read_records(tmp_path)
    ttft = df.first_token_s - df.scheduled_s
    assert (ttft >= delay).all()
    # Headers first, then the delay: causally the token leaves >= delay after the request arrived, so
    # after the send; first_byte -> token can be shorter when the client reads the headers late.
    assert ((df.first_token_s - df.sent_s) >= delay).all() and (df.first_token_s > df.first_byte_s).all()
    assert (ttft < delay + 1.0).all()  # a gross-error bound (wrong origin, lost time), not a speed check
    np.testing.assert_allclose(df.scheduled_s.sort_values(), np.arange(5) * 0.1)
    lag = df.sent_s - df.scheduled_s
    assert (lag >= 0).all()


def test_no_coordinated_omission_a_binding_cap_shows_as_send_lag_and_in_ttft(tmp_path):
    # Cap 1, offered every 0.05 s, each request takes >= 0.15 s: request k goes out ~0.1 s * k late.
    with ServerThread(FakeServer(first_token_delay_s=0.15)) as srv:
        load = LoadSpec(arrival="constant", rate_rps=20, concurrency=1, max_requests=4)
        replay(
            _trace(4), _config(Endpoint(name="c", url=srv.url, model="m"), load=load), tmp_path, quiet=True
        )
    df = read_records(tmp_path).sort_values("scheduled_s")
    np.testing.assert_allclose(df.scheduled_s, [0, 0.05, 0.10, 0.15])
    lag = (df.sent_s - df.scheduled_s).to_numpy()
    assert np.all(np.diff(lag) > 0.08)  # each waits ~0.15 - 0.05 s longer than the one before
    ttft = (df.first_token_s - df.scheduled_s).to_numpy()
    assert np.all(ttft >= lag + 0.15)  # latency includes the wait: nothing hidden


def test_chat_ttft_is_the_first_content_token_not_the_role_chunk(tmp_path):
    with ServerThread(FakeServer(role_chunk_delay_s=0.2)) as srv:
        ep = Endpoint(name="chat", url=srv.url + "/v1", model="m", api="chat")
        replay(_trace(2), _config(ep), tmp_path, quiet=True)
    df = read_records(tmp_path)
    # Causality, not timing: the first content token left the server 0.2 s after the role chunk, so it
    # comes >= 0.2 s after the send (a late read on a busy machine can shorten first_byte -> token).
    assert ((df.first_token_s - df.sent_s) >= 0.2).all() and (df.first_token_s > df.first_byte_s).all()
    assert (df.output_tokens_received == 8).all() and (df.itl_s.map(len) >= 1).all()


def test_completions_body_forces_trace_lengths(tmp_path):
    server = FakeServer(keep_bodies=True, cached_tokens=16)
    with ServerThread(server) as srv:
        replay(
            _trace(3, n_in=40, n_out=5),
            _config(Endpoint(name="c", url=srv.url, model="mx")),
            tmp_path,
            quiet=True,
        )
    for body in server.bodies:
        assert body["model"] == "mx" and body["stream"] is True
        assert body["max_tokens"] == body["min_tokens"] == 5 and body["ignore_eos"] is True
        assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
        assert len(body["prompt"].split()) == 40
    df = read_records(tmp_path)
    assert (df.prompt_tokens_server == 40).all() and df.warning.isna().all()
    assert (df.cached_tokens == 16).all()  # usage.prompt_tokens_details.cached_tokens


def test_usage_mismatch_is_flagged_not_failed(tmp_path):
    with ServerThread(FakeServer(prompt_token_offset=3, completion_token_offset=-1)) as srv:
        replay(_trace(2), _config(Endpoint(name="u", url=srv.url, model="m")), tmp_path, quiet=True)
    df = read_records(tmp_path)
    assert (df.status == "ok").all()
    assert all("usage_mismatch:prompt=35/32" in w and "usage_mismatch:output=7/8" in w for w in df.warning)
    assert (df.prompt_tokens_server == 35).all() and (df.output_tokens_received == 7).all()


def test_cached_tokens_and_prfaas_breakdown_are_recorded_on_the_run_clock(tmp_path):
    epoch = time.time() + 1000.0  # a server timestamp 1000 s after (about) run start
    breakdown = {
        "route": "remote", "prefill_site": "dc-b", "prefill_instance": "p0", "decode_site": "dc-a",
        "decode_instance": "d1", "cached_tokens": 512, "kv_bytes": 123456, "prefill_queue_s": 0.5,
        "prefill_start_s": epoch, "prefill_end_s": epoch + 1, "kv_transfer_start_s": epoch + 0.5,
        "kv_transfer_end_s": epoch + 1.5, "decode_start_s": epoch + 2, "unknown_field": 1,
    }  # fmt: skip
    with ServerThread(FakeServer(prfaas=breakdown)) as srv:
        replay(_trace(1), _config(Endpoint(name="p", url=srv.url, model="m")), tmp_path, quiet=True)
    r = read_records(tmp_path).iloc[0]
    assert (r.route, r.prefill_site, r.prefill_instance, r.decode_site, r.decode_instance) == (
        "remote", "dc-b", "p0", "dc-a", "d1"
    )  # fmt: skip
    assert r.kv_bytes == 123456 and r.prefill_queue_s == 0.5
    assert r.cached_tokens == 512  # from the breakdown when usage has no prompt_tokens_details
    assert abs(r.prefill_start_s - 1000.0) < 5  # epoch seconds moved onto the run clock
    assert r.prefill_end_s - r.prefill_start_s == pytest.approx(1.0)
    assert r.kv_transfer_end_s - r.kv_transfer_start_s == pytest.approx(1.0)
    assert r.decode_start_s - r.prefill_start_s == pytest.approx(2.0)


def test_api_key_is_sent_but_never_written(tmp_path, monkeypatch, capfd):
    secret = "sk-test-9f8e7d6c5b4a"
    monkeypatch.setenv("LOADGEN_TEST_KEY", secret)
    server = FakeServer(keep_bodies=True, mode_for=lambda i: "http_500" if i == 0 else "ok")
    with ServerThread(server) as srv:
        cfg = _config(Endpoint(name="k", url=srv.url, model="m"), api_key_env="LOADGEN_TEST_KEY")
        replay(_trace(3), cfg, tmp_path, quiet=False)
    assert all(h.get("authorization") == f"Bearer {secret}" for h in server.headers)
    for f in tmp_path.iterdir():
        assert secret.encode() not in f.read_bytes(), f.name
    out, err = capfd.readouterr()
    assert secret not in out + err
    assert read_meta(tmp_path)["config"]["api_key_env"] == "LOADGEN_TEST_KEY"


def test_pd_two_leg_protocol_against_a_prefill_and_a_decode_server(tmp_path):
    prefill, decode = FakeServer(keep_bodies=True), FakeServer(keep_bodies=True)
    with ServerThread(prefill) as p, ServerThread(decode) as d:
        ep = Endpoint(name="pd", model="m", prefill_url=p.url, decode_url=d.url)
        replay(_trace(2, n_out=6), _config(ep), tmp_path, quiet=True)
    assert len(prefill.bodies) == len(decode.bodies) == 2
    for pb, db, ph, dh in zip(prefill.bodies, decode.bodies, prefill.headers, decode.headers, strict=True):
        assert pb["stream"] is False and pb["max_tokens"] == 1
        assert pb["kv_transfer_params"] == PD_PREFILL_KV_PARAMS
        assert "min_tokens" not in pb and "stream_options" not in pb
        assert db["stream"] is True and db["max_tokens"] == 6
        assert db["kv_transfer_params"]["remote_engine_id"] == "fake-prefill"  # what the prefill returned
        assert db["kv_transfer_params"]["do_remote_prefill"] is True
        assert ph["x-request-id"] == dh["x-request-id"]
    df = read_records(tmp_path)
    assert (df.status == "ok").all() and (df.route == "pd").all()
    assert (df.prefill_start_s <= df.prefill_end_s).all() and (df.prefill_end_s <= df.decode_start_s).all()
    assert (df.first_token_s >= df.decode_start_s).all() and (df.output_tokens_received == 6).all()
    assert (df.kv_bytes == 4096 * 32).all()  # a breakdown field the prefill leg returned beside vLLM's keys


def test_several_endpoints_get_the_same_schedule_and_prompts(tmp_path):
    a, b = FakeServer(keep_bodies=True), FakeServer(keep_bodies=True)
    with ServerThread(a) as sa, ServerThread(b) as sb:
        cfg = _config(
            Endpoint(name="homog", url=sa.url, model="m"), Endpoint(name="prfaas", url=sb.url, model="m")
        )
        result = replay(_trace(6, n_in=700), cfg, tmp_path, quiet=True)
    assert [x["prompt"] for x in a.bodies] == [x["prompt"] for x in b.bodies]
    df = read_records(tmp_path)
    assert sorted(result.summaries) == ["homog", "prfaas"]
    by = {name: g.sort_values("trace_row") for name, g in df.groupby("topology")}
    np.testing.assert_array_equal(by["homog"].scheduled_s, by["prfaas"].scheduled_s)
    np.testing.assert_array_equal(by["homog"].trace_row, by["prfaas"].trace_row)
    assert read_meta(tmp_path)["topologies"] == ["homog", "prfaas"]


def test_two_worker_processes_share_one_schedule(tmp_path):
    server = FakeServer()
    with ServerThread(server) as srv:
        cfg = _config(Endpoint(name="w", url=srv.url, model="m"), workers=2)
        replay(_trace(40, gap_s=0.005), cfg, tmp_path, quiet=True)
    df = read_records(tmp_path)
    assert len(df) == 40 and df.request_id.is_unique and server.requests == 40
    np.testing.assert_allclose(np.sort(df.scheduled_s), np.arange(40) * 0.005)
    assert (df.status == "ok").all() and (df.sent_s >= df.scheduled_s).all()
    # Each worker watched its own loop; the parent merged them (counts add, the longest stalls stay).
    loop = read_meta(tmp_path)["summaries"]["w"]["client_loop"]
    assert loop["count"] >= len(loop["worst"]) and loop["stalled_s"] >= sum(
        w["length_s"] for w in loop["worst"]
    )


def test_ctrl_c_while_a_batch_is_written_keeps_every_record_the_workers_send():
    # Regression: Ctrl-C raised KeyboardInterrupt inside the parent's record callback, which dropped the
    # rest of that batch (or left a record written but not counted). All 20 requests start at once and
    # end together, so the workers hand them over in batches; Ctrl-C lands on the first record.
    received, ticks = [], []

    def on_record(rec) -> None:
        if not received:
            os.kill(os.getpid(), signal.SIGINT)
        received.append(rec)

    trace = _trace(20, gap_s=0.0)
    with ServerThread(FakeServer(first_token_delay_s=0.3)) as srv:
        ep = Endpoint(name="w", url=srv.url, model="m")
        setup = lambda t0, wall: WorkerSetup(  # noqa: E731
            run_id="r", t0=t0, wall_offset_s=wall, timeouts=Timeouts(), api_key=None, extra_body={}, seed=0
        )
        with pytest.raises(KeyboardInterrupt):
            run_workers(2, ep, trace, build_schedule(trace, LoadSpec()), setup, on_record, ticks.append)
    # Each request a worker sent (its own count, reported last) ends in exactly one record.
    assert len(received) == ticks[-1] >= 2 and len({r.request_id for r in received}) == len(received)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_warmup_and_cooldown_are_marked_not_dropped(tmp_path):
    with ServerThread(FakeServer()) as srv:
        load = LoadSpec(arrival="constant", rate_rps=20, max_requests=20, warmup_s=0.2, cooldown_s=0.2)
        replay(
            _trace(20), _config(Endpoint(name="p", url=srv.url, model="m"), load=load), tmp_path, quiet=True
        )
    df = read_records(tmp_path)
    # offsets 0, 0.05, ... 0.95: < 0.2 -> 4 warmup; > 0.95 - 0.2 = 0.75 -> 4 cooldown (0.8 .. 0.95)
    assert len(df) == 20
    assert df.phase.value_counts().to_dict() == {"measure": 12, "warmup": 4, "cooldown": 4}


def test_closed_loop_keeps_concurrency_and_stops_at_max_requests(tmp_path):
    with ServerThread(FakeServer(first_token_delay_s=0.02)) as srv:
        load = LoadSpec(rate_rps=float("inf"), concurrency=3, max_requests=12)
        replay(
            _trace(5), _config(Endpoint(name="cl", url=srv.url, model="m"), load=load), tmp_path, quiet=True
        )
    df = read_records(tmp_path).sort_values("sent_s")
    assert len(df) == 12 and (df.status == "ok").all()
    assert sorted(df.trace_row.tolist()) == sorted([i % 5 for i in range(12)])
    # at most 3 in flight at any send time
    starts, ends = df.sent_s.to_numpy(), df.last_token_s.to_numpy()
    assert max(int(((starts <= t) & (ends > t)).sum()) for t in starts) <= 3
