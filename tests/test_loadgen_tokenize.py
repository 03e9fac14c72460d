"""Token-exact prompts from a server's /tokenize: real HTTP on 127.0.0.1, a real `tokenizers` tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from aiohttp import web
from click.testing import CliRunner
from refused import refused_port
from threaded_server import ServerThread

from harness.cli import main
from harness.errors import InputError
from harness.loadgen.fakeserver import FakeServer
from harness.loadgen.tokenize import prepare_prompts, tokenize_endpoint
from harness.records import read_meta
from harness.traces.frame import Trace
from harness.traces.prompts import VOCABULARY, PromptFits, PromptSynth

tokenizers = pytest.importorskip("tokenizers")

BLOCK = 64


def _bpe():
    """A small byte-level BPE trained here: most vocabulary words split into several tokens, unevenly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    rng = np.random.default_rng(1)
    corpus = [" ".join(rng.choice(VOCABULARY, 50)) for _ in range(200)]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    return tok


def _wordlevel():
    """One token per vocabulary word (the case the vocabulary is chosen for)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(VOCABULARY)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def _phrases():
    """Word-level plus added tokens for 1,600 word pairs ("the of" is one token): counts do not add up
    word by word, so fitting has to correct its plan from the server's counts."""
    import itertools

    tok = _wordlevel()
    tok.add_tokens([f"{a} {b}" for a, b in itertools.product(VOCABULARY[:40], VOCABULARY[:40])])
    return tok


def _trace(lengths: list[int], shared: int = 3) -> Trace:
    """Rows of the given lengths; every row starts with the same ``shared`` block ids, then its own."""
    ids, offsets = [], [0]
    for i, n in enumerate(lengths):
        blocks = -(-n // BLOCK)
        ids += [*range(shared), *range(1000 * (i + 1), 1000 * (i + 1) + blocks)][:blocks]
        offsets.append(len(ids))
    n = len(lengths)
    return Trace(
        arrival_s=np.arange(n, dtype=float),
        input_tokens=np.array(lengths, dtype=np.int64),
        output_tokens=np.ones(n, dtype=np.int64),
        hash_values=np.array(ids, dtype=np.int64),
        hash_offsets=np.array(offsets, dtype=np.int64),
        block_tokens=BLOCK,
    )


LENGTHS = [1, 2, 3, 63, 64, 65, 127, 128, 129, 300, 511, 777, 1024, 1500]


@pytest.fixture(scope="module")
def bpe_server():
    tok = _bpe()
    with ServerThread(FakeServer(tokenizer=tok)) as srv:
        yield srv, tok


@pytest.mark.parametrize("kind", ["bpe", "wordlevel", "phrases"])
def test_prompts_are_exactly_input_length_tokens(bpe_server, kind):
    if kind == "bpe":
        (srv, tok), ctx = bpe_server, None
    else:
        tok = _wordlevel() if kind == "wordlevel" else _phrases()
        ctx = ServerThread(FakeServer(tokenizer=tok))
        srv = ctx.__enter__()
    try:
        trace = _trace(LENGTHS)
        fits, prep = prepare_prompts(trace, range(len(trace)), url=srv.url, model="m", salt=5)
        synth = PromptSynth(fits=fits, block_tokens=BLOCK, salt=5)
        assert synth.exact
        for row, n in enumerate(LENGTHS):
            text = synth.prompt(trace.hash_ids(row), n, row)
            assert len(tok.encode(text, add_special_tokens=False).ids) == n  # the tokenizer itself, locally
        assert prep.rows == len(LENGTHS) and prep.calls == srv.server.tokenize_calls
        if kind == "wordlevel":  # one calibration call, then one verifying call per prompt
            assert (prep.calibration_calls, prep.calls) == (1, 1 + 2 + len(LENGTHS))  # 2: special tokens
            assert fits.rows[4] == (64, 64, 0)  # every word one token: the plain 64-word prompt
        if kind == "phrases":  # some prompts needed a second count after a correction
            assert prep.calls > 1 + len(LENGTHS)
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)


def test_same_block_ids_give_the_same_text(bpe_server):
    srv, _ = bpe_server
    trace = _trace([1500, 1400, 900], shared=3)
    fits, _ = prepare_prompts(trace, range(3), url=srv.url, model="m")
    synth = PromptSynth(fits=fits, block_tokens=BLOCK)
    prompts = [synth.prompt(trace.hash_ids(r), int(trace.input_tokens[r]), r) for r in range(3)]
    head = "".join(synth.block_text(i) for i in range(3))  # the three shared ids' blocks, as always
    assert all(p.startswith(head) for p in prompts)
    after = {p[len(head) : len(head) + 200] for p in prompts}
    assert len(after) == 3  # each row's own ids: different text right after the shared blocks
    again, _ = prepare_prompts(trace, range(3), url=srv.url, model="m")
    assert again.rows == fits.rows  # fitting is deterministic


def test_refit_moves_by_the_measured_difference():
    s = PromptSynth(block_tokens=8)  # every word one token
    assert s.refit([1, 2], 0, (10, 0), measured=13, target=10) == (7, 0)
    assert s.refit([1, 2], 0, (10, 2), measured=13, target=10) == (9, 0)  # pad goes first
    assert s.refit([1, 2], 0, (10, 2), measured=8, target=10) == (10, 4)
    twos = PromptSynth(fits=PromptFits((2,) * len(VOCABULARY)), block_tokens=8)
    # dropping a 2-token word to shed 1 token: pad one single-token word back
    assert twos.refit([1, 2], 0, (10, 0), measured=21, target=20) == (9, 1)
    assert twos.plan_fit([1, 2], 7, 0) == (3, 1)  # 3 words of 2 tokens + 1 filler


def test_endpoint_url_forms():
    assert tokenize_endpoint("http://h:8000") == "http://h:8000/tokenize"
    assert tokenize_endpoint("http://h:8000/v1") == "http://h:8000/tokenize"
    assert tokenize_endpoint("http://h:8000/x/tokenize") == "http://h:8000/x/tokenize"
    with pytest.raises(InputError, match="--tokenize-url"):
        tokenize_endpoint("h:8000")


class _Bad:
    """A server whose /tokenize answers ``reply`` (status, body text)."""

    def __init__(self, status: int, text: str) -> None:
        self.status, self.text = status, text

    def app(self) -> web.Application:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(status=self.status, text=self.text, content_type="application/json")

        app = web.Application()
        app.router.add_post("/tokenize", handler)
        return app


@pytest.mark.parametrize(
    ("server", "match"),
    [
        (None, "unreachable"),
        (_Bad(404, "{}"), "HTTP 404"),
        (_Bad(500, '{"error": "boom"}'), "HTTP 500: .*boom"),
        (_Bad(200, "not json"), "malformed /tokenize answer"),
        (_Bad(200, '{"count": "7"}'), "malformed /tokenize answer"),
        (_Bad(200, '{"count": 0, "tokens": []}'), "malformed /tokenize answer"),
    ],
)
def test_server_problems_are_one_clear_error_naming_the_url(server, match):
    trace = _trace([10])
    if server is None:
        with refused_port() as port, pytest.raises(InputError, match=match) as err:
            url = f"http://127.0.0.1:{port}"
            prepare_prompts(trace, [0], url=url, model="m")
    else:
        with ServerThread(server) as srv:
            url = srv.url
            with pytest.raises(InputError, match=match) as err:
                prepare_prompts(trace, [0], url=url, model="m")
    assert str(err.value).startswith(f"{url}/tokenize: ")


def test_a_path_without_tokenize_is_404(bpe_server):
    srv, _ = bpe_server
    with pytest.raises(InputError, match="no /tokenize endpoint"):
        prepare_prompts(_trace([10]), [0], url=srv.url + "/nope", model="m")


def _mooncake(path, lengths: list[int]) -> str:
    with open(path, "w") as fh:
        for i, n in enumerate(lengths):
            ids = [*range(2), *range(100 * (i + 1), 100 * (i + 1) + 8)][: -(-n // 512)]
            row = {"timestamp": i * 20, "input_length": n, "output_length": 2, "hash_ids": ids}
            fh.write(json.dumps(row) + "\n")
    return str(path)


def test_replay_cli_sends_token_exact_prompts_fitted_before_the_run(tmp_path):
    tok = _bpe()
    lengths = [700, 1200, 513, 40, 2000, 1100]
    server = FakeServer(tokenizer=tok, keep_bodies=True)
    with ServerThread(server) as srv:
        args = ["replay", "--endpoint", srv.url, "--tokenize-url", srv.url, "--model", "m", "--workers", "2"]
        args += [
            "--trace",
            _mooncake(tmp_path / "t.jsonl", lengths),
            "--out",
            str(tmp_path / "run"),
            "--quiet",
        ]
        res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    sent = sorted(len(tok.encode(b["prompt"], add_special_tokens=False).ids) for b in server.bodies)
    assert sent == sorted(lengths)
    prompts = read_meta(tmp_path / "run")["prompts"]
    assert prompts["token_exact"] and prompts["tokenize_url"] == srv.url
    assert prompts["preparation"]["rows"] == len(lengths)
    # one more: the server's max_model_len, asked before the context rule; none during the run
    assert prompts["preparation"]["tokenize_calls"] + 1 == server.tokenize_calls


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tokenizer", "x.json"], "either --tokenizer FILE or --tokenize-url URL"),
        ([], "tokenize server unreachable"),
    ],
)
def test_replay_cli_tokenize_errors_come_before_the_run(tmp_path, extra, message):
    with refused_port() as port, ServerThread(FakeServer()) as srv:  # the endpoint answers; tokenize does not
        url = f"http://127.0.0.1:{port}"
        args = [
            "replay",
            "--endpoint",
            srv.url,
            "--tokenize-url",
            url,
            "--model",
            "m",
            "--out",
            str(tmp_path / "o"),
        ]
        res = CliRunner().invoke(main, [*args, "--trace", _mooncake(tmp_path / "t.jsonl", [10]), *extra])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


def _bos_bpe():
    """The byte-level BPE with a post-processor that prepends <s>, as Llama's does: a server counts one
    more token than the text of every completion prompt."""
    from tokenizers import processors

    tok = _bpe()
    tok.add_special_tokens(["<s>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return tok


def _common(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def test_a_block_is_exactly_its_size_in_tokens_so_shared_ids_share_exactly_k_blocks(bpe_server):
    """Words split into 1-4 tokens here: blocks built from words would share ~1.5-2x more tokens than
    the ids imply. Each block must encode to exactly BLOCK tokens, and three shared ids to 3*BLOCK."""
    srv, tok = bpe_server
    trace = _trace([1500, 1400, 900], shared=3)
    fits, _ = prepare_prompts(trace, range(3), url=srv.url, model="m")
    assert max(fits.word_tokens) > 1  # the case in point: words of several tokens
    synth = PromptSynth(fits=fits, block_tokens=BLOCK)
    for block_id in (0, 1, 2, 1000, 2001):
        assert len(tok.encode(synth.block_text(block_id), add_special_tokens=False).ids) == BLOCK
    ids = [
        tok.encode(
            synth.prompt(trace.hash_ids(r), int(trace.input_tokens[r]), r), add_special_tokens=False
        ).ids
        for r in range(3)
    ]
    for a, b in ((0, 1), (0, 2), (1, 2)):
        # exactly the three shared blocks (a different word right after may share its first token or two)
        assert 3 * BLOCK <= _common(ids[a], ids[b]) < 3 * BLOCK + 4


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_the_servers_special_tokens_are_taken_off_so_usage_matches_the_trace(tmp_path, api):
    """The server counts BOS (completions) or its chat template (chat) on top of the text: measured once
    before the run and taken off, every request's usage.prompt_tokens is the trace's input_length."""
    tok = _bos_bpe()
    server = FakeServer(tokenizer=tok, keep_bodies=True)
    lengths = [700, 1200, 513, 40, 2000]
    with ServerThread(server) as srv:
        out = tmp_path / "run"
        args = ["replay", "--endpoint", srv.url, "--tokenize-url", srv.url, "--model", "m", "--api", api,
                "--trace", _mooncake(tmp_path / "t.jsonl", lengths), "--out", str(out), "--quiet"]  # fmt: skip
        res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert sorted(r["prompt_tokens_server"] for r in records) == sorted(lengths)
    assert all(r["prompt_tokens_server"] == r["prompt_tokens_trace"] and not r["warning"] for r in records)
    # The overhead, counted here independently from the tokenizer and the server's template.
    sample = " the"
    if api == "chat":
        bare = len(tok.encode(sample, add_special_tokens=False).ids)
        expected = len(tok.encode(server.chat_template.format(sample), add_special_tokens=False).ids) - bare
        lead = len(tok.encode(server.chat_template.split("{}")[0], add_special_tokens=False).ids)
    else:
        expected, lead = 1, 1
    prep = read_meta(out)["prompts"]["preparation"]
    assert (prep["special_tokens"], prep["special_tokens_before_text"]) == (expected, lead)


def test_tokenizer_file_prompts_are_fitted_before_the_first_send(tmp_path, monkeypatch):
    """--tokenizer: every tokenizer call happens before the schedule's clock starts; the sending path
    only joins strings (before, each prompt was fitted on the event loop as its send came up)."""
    import time

    from harness.loadgen import tokenize as tokenize_mod
    from harness.loadgen.config import Endpoint, LoadSpec, ReplayConfig
    from harness.loadgen.runner import replay
    from harness.traces.readers import read_trace

    calls: list[float] = []

    class Timed:
        def __init__(self, inner) -> None:
            self.inner = inner

        def encode(self, *args, **kwargs):
            calls.append(time.monotonic())
            return self.inner.encode(*args, **kwargs)

    real = tokenize_mod.load_tokenizer
    monkeypatch.setattr(tokenize_mod, "load_tokenizer", lambda path: Timed(real(path)))
    path = tmp_path / "tokenizer.json"
    _bos_bpe().save(str(path))
    starts: list[float] = []
    server = FakeServer(tokenizer=real(str(path)))
    with ServerThread(server) as srv:
        config = ReplayConfig(
            endpoints=(Endpoint(name="t", url=srv.url, model="m"),),
            load=LoadSpec(arrival="trace"),
            tokenizer=str(path),
            progress=False,
            on_start=lambda name, t0: starts.append(t0),
        )
        trace = read_trace(_mooncake(tmp_path / "t.jsonl", [700, 1200, 513, 40, 2000, 1100]))
        result = replay(trace, config, tmp_path / "run", quiet=True)
    records = [json.loads(line) for line in (result.run_dir / "records.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(r["status"] == "ok" for r in records)
    assert calls and starts and max(calls) < starts[0]  # t0: the run clock's zero, before the first send
    assert all(r["prompt_tokens_server"] == r["prompt_tokens_trace"] for r in records)  # BOS taken off
    assert read_meta(tmp_path / "run")["prompts"]["preparation"]["special_tokens"] == 1


def test_a_wrong_model_keeps_the_servers_message(tmp_path):
    with ServerThread(FakeServer(model="right")) as srv:
        with pytest.raises(InputError, match="HTTP 404: The model `wrong` does not exist"):
            prepare_prompts(_trace([10]), [0], url=srv.url, model="wrong")
        args = ["replay", "--endpoint", srv.url, "--tokenize-url", srv.url, "--model", "wrong",
                "--trace", _mooncake(tmp_path / "t.jsonl", [10]), "--out", str(tmp_path / "o")]  # fmt: skip
        res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "The model `wrong` does not exist" in res.output
    assert "no /tokenize endpoint" not in res.output


@pytest.mark.parametrize("flag", [None, "--clip", "--drop"])
def test_the_servers_max_model_len_decides_before_the_run(tmp_path, flag):
    """/tokenize says max_model_len 1000: rows whose prompt + output exceed it are refused, clipped or
    dropped before the first send; none reaches the server to fail there."""
    server = FakeServer(max_model_len=1000, keep_bodies=True)
    lengths = [700, 1200, 513, 999, 2000]  # output 2 each: 1200, 999 and 2000 are over
    with ServerThread(server) as srv:
        out = tmp_path / "run"
        args = ["replay", "--endpoint", srv.url, "--tokenize-url", srv.url, "--model", "m", "--quiet",
                "--trace", _mooncake(tmp_path / "t.jsonl", lengths), "--out", str(out)]  # fmt: skip
        res = CliRunner().invoke(main, [*args, *([flag] if flag else [])])
    if flag is None:
        assert res.exit_code == 2 and "3 of 5 requests exceed the model's context of 1,000" in res.output
        assert server.requests == 0 and not out.exists()
        return
    assert res.exit_code == 0, res.output
    sent = sorted(len(b["prompt"].split()) for b in server.bodies)
    assert sent == ([513, 700, 998, 998, 998] if flag == "--clip" else [513, 700])
    context = read_meta(out)["context"]
    assert (context["context_tokens"], context["rows"], context["from"]) == (
        1000,
        3,
        "server /tokenize max_model_len",
    )


def test_server_error_messages_reach_the_summaries(tmp_path):
    """A server's refusal text (not just "http_400") is in replay's end summary and analyze's table."""
    server = FakeServer(mode="http_400")
    with ServerThread(server) as srv:
        out = tmp_path / "run"
        args = ["replay", "--endpoint", srv.url, "--model", "m", "--trace",
                _mooncake(tmp_path / "t.jsonl", [100, 200, 300]), "--out", str(out)]  # fmt: skip
        res = CliRunner().invoke(main, args)
    assert "http_400: fake 400" in res.output  # every request failed: exit 2, the summary still says why
    analyzed = CliRunner().invoke(main, ["analyze", str(out)])
    assert analyzed.exit_code == 0, analyzed.output
    assert "fake 400" in analyzed.output and "http_400" in analyzed.output
    as_json = json.loads(CliRunner().invoke(main, ["analyze", str(out), "--json"]).output)
    entry = next(iter(as_json["topologies"].values()))
    assert entry["error_examples"] == {"http_400": "fake 400"}


def test_error_text_keeps_the_servers_words_and_drops_credentials():
    from harness.loadgen.errortext import scrub, server_message

    assert server_message(b'{"error": {"message": "The model `x` does not exist.", "code": 404}}') == (
        "The model `x` does not exist."
    )
    assert server_message(b'{"object": "error", "message": "too   long"}') == "too long"
    assert server_message(b'{"detail": "Not Found"}') == "Not Found"
    assert server_message(b"<html> plain </html>", limit=8) == "<html> p"
    said = scrub("key sk-secret123 refused at http://user:pw@h:1/v1", ("sk-secret123",))
    assert "sk-secret123" not in said and "user:pw" not in said and "http://***@h:1/v1" in said
