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
    assert n >= 40
