"""No traceback, ever: the CLI over a corpus of bad inputs answers each in one ``error:`` line, exit 2.

Bad scenarios have their own corpus (tests/test_scenario_cli.py, tests/test_config.py); this one holds
the other kinds: trace files of every format, flags, URLs and servers that answer badly. Each case runs
the real command in-process (click's runner), so an uncaught exception shows as one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from test_loadgen_badresponses import ScriptedServer
from threaded_server import ServerThread

from harness.cli import main
from harness.loadgen.fakeserver import FakeServer

GOOD_LINE = {"timestamp": 0, "input_length": 8, "output_length": 2, "hash_ids": [1]}
AZURE_HEAD = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def _jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


# name -> (file name, content: str or bytes)
TRACES = {
    "jsonl truncated mid-object": ("t.jsonl", _jsonl(GOOD_LINE, '{"timestamp": 1, "input_length": 8')),
    "jsonl line is a list": ("t.jsonl", _jsonl(GOOD_LINE, "[1, 2, 3]")),
    "jsonl negative input length": ("t.jsonl", _jsonl({**GOOD_LINE, "input_length": -5})),
    "jsonl negative output length": ("t.jsonl", _jsonl({**GOOD_LINE, "output_length": -1})),
    "jsonl length is a word": ("t.jsonl", _jsonl({**GOOD_LINE, "output_length": "two"})),
    "jsonl NaN timestamp": ("t.jsonl", _jsonl(GOOD_LINE, '{"timestamp": NaN, "input_length": 8, "output_length": 2, "hash_ids": []}')),
    "jsonl missing field": ("t.jsonl", _jsonl({"timestamp": 0, "input_length": 8})),
    "jsonl hash_ids not a list": ("t.jsonl", _jsonl({**GOOD_LINE, "hash_ids": 7})),
    "jsonl empty file": ("t.jsonl", ""),
    "jsonl binary garbage": ("t.jsonl", bytes(range(256)) * 4),
    "jsonl invalid utf-8": ("t.jsonl", b'{"timestamp": 0, "input_length": 8, "output_length": 2, "hash_ids": [], "x": "\xff\xfe"}\n'),
    "csv wrong columns": ("t.csv", "a,b,c\n1,2,3\n"),
    "csv empty file": ("t.csv", ""),
    "csv header only": ("t.csv", AZURE_HEAD),
    "csv negative lengths": ("t.csv", AZURE_HEAD + "2023-11-16 18:15:46.6805900,-374,44\n"),
    "csv text in a number column": ("t.csv", AZURE_HEAD + "2023-11-16 18:15:46.6805900,many,44\n"),
    "csv bad timestamp": ("t.csv", AZURE_HEAD + "yesterday,374,44\n"),
    "csv binary garbage": ("t.csv", bytes(range(255, -1, -1)) * 4),
    "burstgpt wrong types": ("t.csv", "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\nx,ChatGPT,a,b,c,Conversation log\n"),
    "parquet garbage": ("t.parquet", b"PAR1" + os.urandom(64)),
    "parquet wrong columns": ("t.parquet", None),  # written below
}  # fmt: skip


def _write_trace(tmp: Path, name: str) -> Path:
    fname, content = TRACES[name]
    path = tmp / fname
    if content is None:
        pd.DataFrame({"x": [1, 2], "y": [3.0, 4.0]}).to_parquet(path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _assert_one_line_exit_2(res) -> None:
    text = res.output
    assert "Traceback" not in text, text
    assert res.exit_code == 2, f"exit {res.exit_code}: {text}\n{res.exception!r}"
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text


def _run(*args: str):
    return CliRunner().invoke(main, list(args), env={"OPENAI_API_KEY": ""})


@pytest.mark.parametrize("name", sorted(TRACES))
def test_bad_trace_files(tmp_path, name):
    _assert_one_line_exit_2(_run("trace", "inspect", str(_write_trace(tmp_path, name))))


@pytest.mark.parametrize("name", ["jsonl truncated mid-object", "csv negative lengths", "jsonl empty file"])
def test_bad_trace_files_given_to_replay(tmp_path, name):
    trace = _write_trace(tmp_path, name)
    args = ("replay", "--endpoint", "http://127.0.0.1:9", "--model", "m", "--trace", str(trace))
    _assert_one_line_exit_2(_run(*args, "--out", str(tmp_path / "out")))


@pytest.fixture
def good_trace(tmp_path) -> Path:
    path = tmp_path / "good.jsonl"
    path.write_text(_jsonl(GOOD_LINE, {**GOOD_LINE, "timestamp": 100, "hash_ids": [2]}))
    return path


BAD_REPLAY_FLAGS = {
    "rate negative": ["--rate", "-1"],
    "rate not a number": ["--rate", "fast"],
    "window not START:DUR": ["--window", "abc"],
    "window negative duration": ["--window", "5:-1"],
    "speedup zero": ["--speedup", "0"],
    "workers zero": ["--workers", "0"],
    "concurrency zero": ["--rate", "inf", "--concurrency", "0"],
    "closed loop without concurrency": ["--rate", "inf"],
    "max requests zero": ["--rate", "1", "--max-requests", "0"],
    "unknown api": ["--api", "embeddings"],
    "unknown arrival": ["--arrival", "weibull"],
    "unknown trace format": ["--format", "xml"],
    "fail-on-error-rate above 1": ["--fail-on-error-rate", "2"],
    "max send lag negative": ["--max-send-lag-ms", "-1"],
    "tokenizer file missing": ["--tokenizer", "/nonexistent/tokenizer.json"],
    "unknown flag": ["--bogus-flag", "1"],
}


@pytest.mark.parametrize("name", sorted(BAD_REPLAY_FLAGS))
def test_bad_replay_flags(tmp_path, good_trace, name):
    args = ["replay", "--endpoint", "http://127.0.0.1:9", "--model", "m", "--trace", str(good_trace)]
    _assert_one_line_exit_2(_run(*args, *BAD_REPLAY_FLAGS[name], "--out", str(tmp_path / "out")))


def test_replay_out_is_a_file(tmp_path, good_trace):
    out = tmp_path / "file"
    out.write_text("x")
    args = ["replay", "--endpoint", "http://127.0.0.1:9", "--model", "m", "--trace", str(good_trace)]
    _assert_one_line_exit_2(_run(*args, "--out", str(out)))


@pytest.mark.parametrize(
    "args",
    [
        ["analyze", "/nonexistent/run"],
        ["analyze", "{tmp}", "--ttft-slo", "-1"],
        ["compare", "{tmp}/a.json", "{tmp}/b.json", "--max-regression", "lots"],
        ["compare", "{tmp}/garbage.json", "{tmp}/garbage.json"],
        ["report", "/nonexistent/run", "-o", "{tmp}/r.html"],
        ["trace", "inspect", "/nonexistent/trace.jsonl"],
        ["trace", "inspect", "{tmp}"],
    ],
    ids=["analyze-missing", "analyze-slo", "compare-bound", "compare-garbage", "report-missing",
         "inspect-missing", "inspect-dir"],
)  # fmt: skip
def test_bad_flags_and_paths_of_other_commands(tmp_path, args):
    (tmp_path / "garbage.json").write_bytes(b"\x00\x01not json")
    _assert_one_line_exit_2(_run(*[a.replace("{tmp}", str(tmp_path)) for a in args]))


BAD_URLS = {
    "port out of range": ["--endpoint", "http://127.0.0.1:99999"],
    "port not a number": ["--endpoint", "http://127.0.0.1:http"],
    "ftp scheme": ["--endpoint", "ftp://127.0.0.1:21"],
    "missing host": ["--endpoint", "http://:8000"],
    "no scheme": ["--endpoint", "127.0.0.1:8000"],
    "unclosed IPv6 bracket": ["--endpoint", "http://[::1"],
    "prefill url without decode url": ["--prefill-url", "http://127.0.0.1:9"],
    "tokenize url not http": ["--endpoint", "http://127.0.0.1:9", "--tokenize-url", "ftp://x"],
    "nothing listening": ["--endpoint", "http://127.0.0.1:9"],
}


@pytest.mark.parametrize("name", sorted(BAD_URLS))
def test_bad_urls(tmp_path, good_trace, name):
    args = ["replay", "--model", "m", "--trace", str(good_trace), "--quiet", *BAD_URLS[name]]
    _assert_one_line_exit_2(_run(*args, "--out", str(tmp_path / "out")))


def test_url_credentials_together_with_an_api_key(tmp_path, good_trace):
    args = ["replay", "--model", "m", "--trace", str(good_trace), "--endpoint", "http://u:secret@127.0.0.1:9"]
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "out")], env={"OPENAI_API_KEY": "sk-test"})
    _assert_one_line_exit_2(res)
    assert "secret" not in res.output and "sk-test" not in res.output


# Against a server that answers (the fake), so the flag, not a dead endpoint, is what is refused.
# --scrape-interval 0 is not bad input: it turns scraping off (tests/test_telemetry.py).
BAD_SCRAPE_FLAGS = {
    "scrape interval negative": ["--scrape-interval", "-1"],
    "scrape interval not a number": ["--scrape-interval", "often"],
    "scrape interval nan": ["--scrape-interval", "nan"],
    "scrape interval inf": ["--scrape-interval", "inf"],
    "scrape metric empty": ["--scrape-metric", ""],
    "scrape metric with a space": ["--scrape-metric", "vllm num_requests"],
    "scrape metric with a hyphen": ["--scrape-metric", "vllm-num-requests"],
    "scrape metric unclosed bracket": ["--scrape-metric", "vllm:num[abc"],
    "metrics url not a url": ["--metrics-url", "not a url"],
    "metrics url empty": ["--metrics-url", ""],
    "metrics url ftp": ["--metrics-url", "ftp://127.0.0.1:21"],
    "metrics url no host": ["--metrics-url", "http://:8000"],
    "time scale nan": ["--time-scale", "nan"],
}


@pytest.fixture(scope="module")
def fake_server():
    with ServerThread(FakeServer()) as srv:
        yield srv


@pytest.mark.parametrize("name", sorted(BAD_SCRAPE_FLAGS))
def test_bad_scrape_flags(tmp_path, good_trace, fake_server, name):
    args = ["replay", "--endpoint", fake_server.url, "--model", "m", "--trace", str(good_trace), "--quiet"]
    res = _run(*args, *BAD_SCRAPE_FLAGS[name], "--out", str(tmp_path / "out"))
    _assert_one_line_exit_2(res)
    assert BAD_SCRAPE_FLAGS[name][0] in res.output
    assert not (tmp_path / "out").exists()  # refused before the run


def test_bad_scrape_metric_in_a_scenario_names_the_key(tmp_path, good_trace, fake_server):
    scenario = tmp_path / "s.toml"
    scenario.write_text('name = "x"\n[replay]\nscrape_metrics = ["vllm:num_requests_running", "kv usage"]\n')
    args = ["replay", "--endpoint", fake_server.url, "--model", "m", "--trace", str(good_trace), "--quiet"]
    res = _run(*args, "--scenario", str(scenario), "--out", str(tmp_path / "out"))
    _assert_one_line_exit_2(res)
    assert "[replay] scrape_metrics 'kv usage'" in res.output


def test_an_unreachable_metrics_url_is_not_bad_input(tmp_path, good_trace, fake_server):
    """Scraping is telemetry: a --metrics-url nobody answers neither stops nor fails the run; meta.json
    records every failed scrape, and one warning says there is no series for it."""
    args = ["replay", "--endpoint", fake_server.url, "--model", "m", "--trace", str(good_trace), "--quiet"]
    res = _run(
        *args, "--speedup", "100", "--metrics-url", "http://127.0.0.1:9", "--out", str(tmp_path / "out")
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "out" / "meta.json").read_text())["summaries"]["default"]
    assert summary["requests"] == 2 and summary["failed"] == 0
    dead = summary["server_metrics"]["http://127.0.0.1:9"]
    assert dead["scrapes"] == 0 and dead["failed"] >= 1 and "no scrape answered" in dead["warning"]
    assert summary["server_metrics"][fake_server.url]["scrapes"] >= 1
    assert "http://127.0.0.1:9/metrics: no scrape answered" in res.output


# Each is refused before anything is measured: calibrate against the fake server would otherwise run.
# The flag refused comes first; the flags after it are good. Each is refused before anything is
# measured: calibrate against the fake server would otherwise run.
BAD_CALIBRATE_FLAGS = {
    "peak tflops zero": ["--peak-tflops", "0", "--hbm-tbps", "1", "--hbm-gb", "1"],
    "peak tflops negative": ["--peak-tflops", "-1", "--hbm-tbps", "1", "--hbm-gb", "1"],
    "peak tflops nan": ["--peak-tflops", "nan", "--like", "H200"],
    "peak tflops inf": ["--peak-tflops", "inf", "--like", "H200"],
    "hbm tbps zero": ["--hbm-tbps", "0", "--like", "H200"],
    "hbm tbps negative": ["--hbm-tbps", "-4.8", "--like", "H200"],
    "hbm tbps not a number": ["--hbm-tbps", "fast", "--like", "H200"],
    "hbm gb nan": ["--hbm-gb", "nan", "--like", "H200"],
    "gpus zero": ["--gpus", "0", "--like", "H200"],
    "max prompt tokens below the minimum": ["--max-prompt-tokens", "100", "--like", "H200"],
    "max prompt tokens beyond the server's context": ["--max-prompt-tokens", "2000000", "--like", "H200"],
    "like preset that does not exist": ["--like", "B900"],
    "like preset file that does not exist": ["--like", "/nonexistent/gpu.toml"],
    "model preset that does not exist": ["--model-preset", "no-such-model", "--like", "H200"],
    "time scale inf": ["--time-scale", "inf", "--like", "H200"],
    "out under a file": ["--out", "{tmp}/a-file/p.toml", "--like", "H200"],
    "out in a read-only place": ["--out", "/proc/prfaas-calibrated.toml", "--like", "H200"],
    "out is a directory": ["--out", "{tmp}", "--like", "H200"],
}


@pytest.mark.parametrize("name", sorted(BAD_CALIBRATE_FLAGS))
def test_bad_calibrate_flags(tmp_path, fake_server, name):
    (tmp_path / "a-file").write_text("x")
    flags = [a.replace("{tmp}", str(tmp_path)) for a in BAD_CALIBRATE_FLAGS[name]]
    base = ["calibrate", "--endpoint", fake_server.url, "--model", "m", "--quick"]
    base += [] if "--model-preset" in flags else ["--model-preset", "kimi-1t-hybrid"]
    base += [] if "--out" in flags else ["--out", str(tmp_path / "p.toml")]
    before = fake_server.server.requests
    res = _run(*base, *flags)
    _assert_one_line_exit_2(res)
    assert flags[0] in res.output, res.output
    assert fake_server.server.requests == before  # nothing measured
    assert not (tmp_path / "p.toml").exists() and not (tmp_path / "p.runs").exists()


def test_calibrate_against_a_server_whose_context_is_too_short(tmp_path):
    """The default longest prompt is half the server's max_model_len (from /tokenize): below the
    plan's minimum that is one line naming the server's figure and the flag, not a traceback."""
    with ServerThread(FakeServer(max_model_len=300)) as srv:
        res = _run("calibrate", "--endpoint", srv.url, "--model", "m", "--model-preset", "kimi-1t-hybrid",
                   "--like", "H200", "--out", str(tmp_path / "p.toml"))  # fmt: skip
        assert srv.server.requests == 0
    _assert_one_line_exit_2(res)
    assert "max_model_len 300" in res.output and "--max-prompt-tokens" in res.output


def test_calibrate_makes_a_missing_out_directory_it_can(tmp_path):
    """Not bad input: --out in directories that do not exist yet, under one that can be written, is
    accepted like replay's --out (they are made when the preset is written). Shown by the check alone,
    which must pass and leave nothing behind."""
    from harness.cli.calibrate import _check_out

    _check_out(tmp_path / "new" / "deeper" / "p.toml")
    assert list(tmp_path.iterdir()) == []


class BadJsonServer(ScriptedServer):
    """An event stream whose data is not JSON."""

    def __init__(self) -> None:
        super().__init__("sse")

    async def completions(self, request):
        from aiohttp import web

        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices": [{"text": " tok"\n\ndata: [DONE]\n\n')
        return resp


SERVERS = {
    "html page with 200": lambda: ScriptedServer("html"),
    "json body to a streamed request": lambda: ScriptedServer("json"),
    "negative usage": lambda: ScriptedServer("sse", -5),
    "invalid json in sse": BadJsonServer,
    "500 everywhere": lambda: FakeServer(mode_for=lambda i: "http_500"),
    "429 everywhere": lambda: FakeServer(mode_for=lambda i: "http_429"),
    "reset every connection": lambda: FakeServer(mode_for=lambda i: "reset"),
    "non-sse line": lambda: FakeServer(mode_for=lambda i: "garbage"),
}


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_servers_that_answer_badly(tmp_path, good_trace, name):
    with ServerThread(SERVERS[name]()) as srv:
        args = ["replay", "--model", "m", "--trace", str(good_trace), "--endpoint", srv.url, "--quiet"]
        res = _run(*args, "--speedup", "100", "--out", str(tmp_path / "out"))
    _assert_one_line_exit_2(res)
    assert "every request failed" in res.output
    assert (tmp_path / "out" / "records.jsonl").read_text().count("\n") == 2  # the records stay


def test_the_corpus_has_at_least_40_cases():
    n = len(TRACES) + 3 + len(BAD_REPLAY_FLAGS) + 1 + 7 + len(BAD_URLS) + 1 + len(SERVERS)
    n += len(BAD_SCRAPE_FLAGS) + 1 + len(BAD_CALIBRATE_FLAGS) + 1
    assert n >= 70
