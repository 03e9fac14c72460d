"""``prfaas-bench replay``: the Done-when command, bad flags, exit codes, and Ctrl-C keeping records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from aiohttp import web
from click.testing import CliRunner
from refused import refused_port
from threaded_server import ServerThread

from harness.cli import main
from harness.loadgen.fakeserver import FakeServer
from harness.records import iter_jsonl_records, read_meta, read_records


def _mooncake_file(path, n: int, gap_ms: int = 100, n_in: int = 600, n_out: int = 8):
    with open(path, "w") as fh:
        for i in range(n):
            blocks = list(range(i % 3, i % 3 + (n_in + 511) // 512))
            fh.write(
                json.dumps(
                    {
                        "timestamp": i * gap_ms,
                        "input_length": n_in,
                        "output_length": n_out,
                        "hash_ids": blocks,
                    }
                )
                + "\n"
            )
    return str(path)


def test_done_when_command_on_the_real_trace(tmp_path, mooncake_slice):
    with ServerThread(FakeServer()) as srv:
        args = ["replay", "--endpoint", srv.url, "--model", "m", "--trace", str(mooncake_slice)]
        args += ["--window", "0:60", "--speedup", "10", "--out", str(tmp_path / "run"), "--quiet"]
        res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    df = read_records(tmp_path / "run")
    meta = read_meta(tmp_path / "run")
    assert meta["complete"] is True and meta["topologies"] == ["default"]
    assert len(df) == meta["schedule"]["requests"] > 100 and (df.status == "ok").all()
    assert (df.topology == "default").all() and (df.source == "replay").all()
    # 60 trace seconds at 10x: the schedule spans under 6 s
    assert df.scheduled_s.max() < 6.0
    assert (df.prompt_tokens_server == df.prompt_tokens_trace).all()  # word-per-token prompts


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--window", "5"], "--window must be START:DUR"),
        (["--rate", "0"], "--rate values must be positive"),
        (["--rate", "inf"], "--concurrency"),
        (
            ["--api", "chat", "--prefill-url", "http://127.0.0.1:1"],
            "--prefill-url and --decode-url go together",
        ),
        (["--endpoint", "http://127.0.0.1:1", "--endpoint", "http://127.0.0.1:2"], "name each as NAME=URL"),
        (["--endpoint", "a=http://127.0.0.1:1", "--endpoint", "a=http://127.0.0.1:2"], "unique"),
        (["--workers", "0"], "--workers"),
        (["--workers", "4", "--concurrency", "2"], "--workers 4 exceeds --concurrency 2"),
        (["--tokenizer", "/nonexistent/tokenizer.json"], "tokenizer file not found"),
    ],
)
def test_bad_flags_give_one_clear_line(tmp_path, args, message):
    trace = _mooncake_file(tmp_path / "t.jsonl", 3)
    base = ["replay", "--model", "m", "--trace", trace, "--out", str(tmp_path / "o")]
    with ServerThread(FakeServer()) as srv:  # an endpoint that answers: the flag is what is wrong
        if not any(a in ("--endpoint", "--prefill-url") for a in args):
            base += ["--endpoint", srv.url]
        res = CliRunner().invoke(main, base + args)
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output


def test_missing_trace_file_is_a_clear_error(tmp_path):
    res = CliRunner().invoke(
        main,
        [
            "replay",
            "--endpoint",
            "http://127.0.0.1:1",
            "--model",
            "m",
            "--trace",
            str(tmp_path / "no.jsonl"),
            "--out",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 2 and "no.jsonl" in res.output


def test_exit_code_is_nonzero_only_under_fail_on_error_rate(tmp_path):
    trace = _mooncake_file(tmp_path / "t.jsonl", 4, gap_ms=10)
    with ServerThread(FakeServer(mode_for=lambda i: "http_500" if i % 2 else "ok")) as srv:
        base = ["replay", "--endpoint", srv.url, "--model", "m", "--trace", trace, "--quiet"]
        plain = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "a")])
        strict = CliRunner().invoke(
            main, [*base, "--out", str(tmp_path / "b"), "--fail-on-error-rate", "0.25"]
        )
        lenient = CliRunner().invoke(
            main, [*base, "--out", str(tmp_path / "c"), "--fail-on-error-rate", "0.5"]
        )
    assert plain.exit_code == 0 and lenient.exit_code == 0
    assert strict.exit_code == 1 and "exceeds --fail-on-error-rate" in strict.output
    assert "http_500=2" in plain.output  # the failure summary


def test_rate_sweep_writes_one_run_per_rate(tmp_path):
    trace = _mooncake_file(tmp_path / "t.jsonl", 5)
    with ServerThread(FakeServer()) as srv:
        res = CliRunner().invoke(
            main,
            ["replay", "--endpoint", srv.url, "--model", "m", "--trace", trace, "--rate", "50,100",
             "--max-requests", "5", "--out", str(tmp_path / "sweep"), "--quiet"],
        )  # fmt: skip
    assert res.exit_code == 0, res.output
    for tag in ("50", "100"):
        meta = read_meta(tmp_path / "sweep" / f"rate-{tag}")
        assert meta["config"]["load"]["rate_rps"] == float(tag) and meta["complete"] is True
        assert len(read_records(tmp_path / "sweep" / f"rate-{tag}")) == 5


def interrupted(cmd: list[str], out: Path, env: dict, timeout_s: float = 60) -> tuple[int, str]:
    """Run ``cmd`` (a replay into ``out``), Ctrl-C it once it has written 3 records; (exit code, stderr)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    jsonl = out / "records.jsonl"
    try:
        deadline = time.monotonic() + timeout_s
        while not (jsonl.is_file() and jsonl.read_bytes().count(b"\n") >= 3):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"replay never wrote 3 records (exit {proc.poll()})")
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err.decode()


@pytest.mark.parametrize(
    ("workers", "mode"), [(1, []), (2, []), (1, ["--rate", "inf", "--concurrency", "4"])]
)
def test_sigint_keeps_every_record_and_marks_the_run_incomplete(tmp_path, workers, mode):
    trace = _mooncake_file(
        tmp_path / "t.jsonl", 40, gap_ms=500, n_out=40
    )  # arrivals spread over 20 s: Ctrl-C lands mid-run even on a loaded machine
    out = tmp_path / "run"
    with ServerThread(FakeServer(itl_s=0.05)) as srv:  # 2 s per request: many in flight at Ctrl-C
        cmd = [sys.executable, "-m", "harness", "replay", "--endpoint", srv.url, "--model", "m", "--trace", trace,
               "--out", str(out), "--quiet", "--workers", str(workers), *mode]  # fmt: skip
        code, err = interrupted(cmd, out, {**os.environ, "CI": ""})
    assert code == 130, err
    meta = read_meta(out)
    assert meta["complete"] is False and meta["incomplete_reason"] == "interrupted"
    logged = list(iter_jsonl_records(out / "records.jsonl"))
    df = read_records(out)
    assert len(df) == len(logged) == meta["records"] >= 3
    assert df.request_id.is_unique
    cancelled = df[df.error_class == "cancelled"]
    assert len(cancelled) >= 1 and (df.status[df.error_class.isna()] == "ok").all()
    if mode:  # closed loop: nothing new is sent after Ctrl-C (the open loop had sent all 40 by then)
        assert len(df) < 40
    # The servers' series scraped so far are kept the same way (the fake server's running gauge).
    scraped = pd.read_parquet(out / "server_metrics.parquet")
    assert len(scraped) == len(list(iter_jsonl_records(out / "server_metrics.jsonl"))) > 0
    running = scraped[scraped.metric == "vllm:num_requests_running"]
    assert running.value.max() >= 1 and running.time_s.max() <= df.end_s.max() + 1.0


def test_scenario_replay_table_names_endpoints_and_defaults(tmp_path):
    _mooncake_file(tmp_path / "t.jsonl", 4, gap_ms=10)  # the scenario names it relative to itself
    a, b = FakeServer(keep_bodies=True), FakeServer(keep_bodies=True)
    with ServerThread(a) as sa, ServerThread(b) as sb:
        scenario = tmp_path / "s.toml"
        scenario.write_text(
            f'name = "x"\n[replay]\nmodel = "scen-model"\ntrace = "t.jsonl"\nshaping_backend = "relay"\nseed = 3\n'
            f'[replay.endpoints]\nprfaas = "{sa.url}/v1"\nhomogeneous = {{ url = "{sb.url}", api = "chat" }}\n'
        )
        res = CliRunner().invoke(
            main, ["replay", "--scenario", str(scenario), "--out", str(tmp_path / "o"), "--quiet"]
        )
    assert res.exit_code == 0, res.output
    meta = read_meta(tmp_path / "o")
    assert meta["topologies"] == ["prfaas", "homogeneous"]
    assert meta["shaping_backend"] == "relay" and meta["seed"] == 3
    assert all(x["model"] == "scen-model" and "prompt" in x for x in a.bodies)
    assert all("messages" in x for x in b.bodies) and len(b.bodies) == 4


def test_scenario_errors_name_the_table(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text('[replay]\nmodel = "m"\nspeedup = "fast"\n')
    res = CliRunner().invoke(main, ["replay", "--scenario", str(scenario), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "[replay]" in res.output and "speedup" in res.output
    scenario.write_text('[replay]\nmodel = "m"\nendpoint = "http://x"\n')
    res = CliRunner().invoke(main, ["replay", "--scenario", str(scenario), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and f"{scenario}: [replay] endpoint: unknown key (known: model" in res.output
    for window in ('["a", 5]', "[10, 5]", "[-1, 5]"):  # once a ValueError traceback, or blamed on --window
        scenario.write_text(f'[replay]\nmodel = "m"\nwindow_s = {window}\n')
        res = CliRunner().invoke(main, ["replay", "--scenario", str(scenario), "--out", str(tmp_path / "o")])
        assert res.exit_code == 2 and "[replay]" in res.output and "window_s" in res.output, window
    scenario.write_text(
        '[replay]\nmodel = "m"\ntrace = "t.jsonl"\n[replay.endpoints]\n'
        'pd = { prefill_url = 5, decode_url = "http://127.0.0.1:2" }\n'
    )
    res = CliRunner().invoke(main, ["replay", "--scenario", str(scenario), "--out", str(tmp_path / "o")])
    assert (
        res.exit_code == 2
        and f"{scenario}: [replay.endpoints.pd] prefill_url: must be a string, got 5" in res.output
    )
    scenario.write_text(
        '[replay]\nmodel = "m"\ntrace = "t.jsonl"\n[replay.endpoints]\n'
        'pd = { prefill_url = "ftp://x", decode_url = "http://127.0.0.1:2" }\n'
    )
    res = CliRunner().invoke(main, ["replay", "--scenario", str(scenario), "--out", str(tmp_path / "o")])
    assert (
        res.exit_code == 2
        and f"{scenario}: [replay.endpoints] pd: --prefill-url must be an http(s) URL" in res.output
    )


def test_out_holding_a_run_is_refused_and_left_intact(tmp_path):
    # Regression: a second replay into the same --out appended its records to the first run's
    # records.jsonl and overwrote meta.json, mixing two runs under one run_id.
    trace = _mooncake_file(tmp_path / "t.jsonl", 3, gap_ms=10)
    out = tmp_path / "run"
    with ServerThread(FakeServer()) as srv:
        base = [
            "replay",
            "--endpoint",
            srv.url,
            "--model",
            "m",
            "--trace",
            trace,
            "--quiet",
            "--out",
            str(out),
        ]
        assert CliRunner().invoke(main, base).exit_code == 0
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        again = CliRunner().invoke(main, base)
    assert again.exit_code == 2 and f"{out}: already holds a run" in again.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert len(read_records(out)) == 3


def test_window_is_start_and_duration_like_trace_convert():
    from harness.traces.specs import parse_window

    assert parse_window("600:300") == (600.0, 300.0)  # one parser for both commands
    assert parse_window("0:60") == (0.0, 60.0)


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(c) for c in (task / "children").read_text().split()]
    return kids


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_kill_9_of_the_parent_stops_its_workers_sending_at_once(tmp_path):
    # Regression: workers re-parented to init kept sending load for 50 s, and nobody recorded it.
    trace = _mooncake_file(tmp_path / "t.jsonl", 2400, gap_ms=25, n_out=4)  # 60 s of steady load
    server = FakeServer(itl_s=0.001)
    with ServerThread(server) as srv:
        cmd = [sys.executable, "-m", "harness", "replay", "--endpoint", srv.url, "--model", "m", "--trace", trace,
               "--out", str(tmp_path / "run"), "--quiet", "--workers", "2"]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while server.requests < 20 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.02)
            workers = _children(proc.pid)
            assert server.requests >= 20 and len(workers) >= 2
        finally:
            proc.kill()
            proc.wait()
        gone_by = time.monotonic() + 5  # far less than the 60 s the schedule had left
        while any(_running(w) for w in workers) and time.monotonic() < gone_by:
            time.sleep(0.02)
        assert not any(_running(w) for w in workers)
        sent = server.requests
        time.sleep(0.5)  # at 40 req/s, live workers would have sent about 20 more by now
        assert server.requests == sent


def _replay_cli(
    tmp_path, *endpoint_args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """The real command in a subprocess (what a user sees: stdout, stderr, exit code, files)."""
    trace = _mooncake_file(tmp_path / "t.jsonl", 3, gap_ms=10)
    cmd = [sys.executable, "-m", "harness", "replay", *endpoint_args, "--model", "m", "--trace", trace,
           "--out", str(tmp_path / "run"), "--quiet"]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "CI": "", **(env or {})})


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:99999", " is not a valid URL (Port out of range"),
        ("http://127.0.0.1:{free}/v1", ": http://127.0.0.1:{free} does not answer: Connect call failed"),
        ("http://nonexistent.invalid:8000", ": http://nonexistent.invalid:8000 does not answer: "),
    ],
)
def test_an_endpoint_that_does_not_answer_is_one_line_before_any_request(tmp_path, url, says):
    with refused_port() as free:
        res = _replay_cli(tmp_path, "--endpoint", url.format(free=free))
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith(
        f"error: endpoint 'default'{says.format(free=free)}"
    )
    assert not (tmp_path / "run").exists()  # refused before the run directory or schedule exists


def test_url_credentials_with_an_api_key_are_refused_without_printing_either(tmp_path):
    # Regression: aiohttp raised "Cannot combine AUTHORIZATION header ..." (ValueError) inside the
    # first request: a traceback and no records.
    with ServerThread(FakeServer()) as srv:
        url = srv.url.replace("http://", "http://alice:hunter2@")
        res = _replay_cli(tmp_path, "--endpoint", url, env={"OPENAI_API_KEY": "sk-topsecret"})
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert f"{srv.url} carries user:password@ and $OPENAI_API_KEY is set too" in res.stderr
    assert "hunter2" not in res.stderr + res.stdout and "sk-topsecret" not in res.stderr + res.stdout


class _Denying:
    """A server that answers every request with 401, as one with a different API key does."""

    def app(self) -> web.Application:
        async def deny(_request: web.Request) -> web.Response:
            return web.json_response({"error": "bad key"}, status=401)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", deny)
        return app


def test_an_endpoint_that_rejects_the_key_is_refused(tmp_path):
    with ServerThread(_Denying()) as srv:  # type: ignore[arg-type]
        res = _replay_cli(tmp_path, "--endpoint", srv.url, env={"OPENAI_API_KEY": "sk-wrong"})
    assert res.returncode == 2
    assert res.stderr.strip() == f"error: endpoint 'default': {srv.url} rejects the credentials (HTTP 401)"


def test_the_api_key_is_sent_but_never_written_to_results_or_output(tmp_path):
    server = FakeServer(keep_bodies=True)
    with ServerThread(server) as srv:
        res = _replay_cli(tmp_path, "--endpoint", srv.url, env={"OPENAI_API_KEY": "sk-topsecret-4711"})
    assert res.returncode == 0, res.stderr
    assert server.requests == 3 and {h.get("authorization") for h in server.headers} == {
        "Bearer sk-topsecret-4711"
    }
    written = b"".join(p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file())
    assert len(written) > 0 and b"sk-topsecret-4711" not in written
    assert "sk-topsecret-4711" not in res.stdout + res.stderr
