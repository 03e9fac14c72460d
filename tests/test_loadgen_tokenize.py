"""Token-exact prompts from a server's /tokenize: real HTTP on 127.0.0.1, a real `tokenizers` tokenizer."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from aiohttp import web
from click.testing import CliRunner
from threaded_server import ServerThread

from harness.cli import main
from harness.errors import InputError
from harness.loadgen.fakeserver import FakeServer
from harness.loadgen.tokenize import prepare_prompts, tokenize_endpoint
from harness.records import read_meta
from harness.traces.frame import Trace
from harness.traces.prompts import VOCABULARY, PromptSynth

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
            assert (prep.calibration_calls, prep.calls) == (1, 1 + len(LENGTHS))
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
    s = PromptSynth(block_tokens=8)
    ones = np.ones(len(VOCABULARY), dtype=np.int64)
    assert s.refit([1, 2], 0, (10, 0), measured=13, target=10, word_tokens=ones) == (7, 0)
    assert s.refit([1, 2], 0, (10, 2), measured=13, target=10, word_tokens=ones) == (9, 0)  # pad goes first
    assert s.refit([1, 2], 0, (10, 2), measured=8, target=10, word_tokens=ones) == (10, 4)
    twos = ones * 2  # dropping a 2-token word to shed 1 token: pad one single-token word back
    assert s.refit([1, 2], 0, (10, 0), measured=21, target=20, word_tokens=twos) == (9, 1)
    assert s.plan_fit([1, 2], 7, 0, twos) == (3, 1)  # 3 words of 2 tokens + 1 filler


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


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        url = f"http://127.0.0.1:{_closed_port()}"
        with pytest.raises(InputError, match=match) as err:
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
    assert prompts["preparation"]["tokenize_calls"] == server.tokenize_calls  # none during the run


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tokenizer", "x.json"], "either --tokenizer FILE or --tokenize-url URL"),
        ([], "tokenize server unreachable"),
    ],
)
def test_replay_cli_tokenize_errors_come_before_the_run(tmp_path, extra, message):
    url = f"http://127.0.0.1:{_closed_port()}"
    with ServerThread(FakeServer()) as srv:  # the endpoint answers; the tokenize server does not
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
