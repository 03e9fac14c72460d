"""Prompt synthesis from hash ids: determinism, prefix sharing, exact length with and without a tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.errors import InputError
from harness.loadgen.tokenize import prepare_prompts
from harness.traces.frame import Trace
from harness.traces.prompts import VOCABULARY, PromptSynth, load_tokenizer

tokenizers = pytest.importorskip("tokenizers")


def _wordlevel(path) -> str:
    """A word-per-token tokenizer over the synthesis vocabulary, written as tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(VOCABULARY)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return str(path)


def _trace(lengths: list[int], ids: list[list[int]], block: int) -> Trace:
    n = len(lengths)
    return Trace(
        arrival_s=np.arange(n, dtype=float),
        input_tokens=np.array(lengths, dtype=np.int64),
        output_tokens=np.ones(n, dtype=np.int64),
        hash_values=np.array([i for row in ids for i in row], dtype=np.int64),
        hash_offsets=np.cumsum([0, *map(len, ids)]).astype(np.int64),
        block_tokens=block,
    )


def _bpe(path) -> str:
    """A small byte-level BPE trained here, so most words split into several tokens and merge unevenly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    rng = np.random.default_rng(1)
    corpus = [" ".join(rng.choice(VOCABULARY, 50)) for _ in range(200)]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    tok.save(str(path))
    return str(path)


def test_same_id_same_text_and_different_ids_differ():
    a, b = PromptSynth(), PromptSynth()
    texts = {a.block_text(i) for i in range(2000)}
    assert len(texts) == 2000  # every id its own text
    assert all(a.block_text(i) == b.block_text(i) for i in (0, 7, 1999, -3))  # a pure function of the id
    assert PromptSynth(salt=1).block_text(7) != a.block_text(7)


def test_shared_hash_prefix_is_shared_text_and_nothing_more():
    s = PromptSynth(block_tokens=16)
    p1 = s.prompt([10, 11, 12], 48)
    p2 = s.prompt([10, 11, 99], 48)
    shared = len(s.block_text(10)) + len(s.block_text(11))
    assert p1[:shared] == p2[:shared]
    assert p1[shared:] != p2[shared:]


def test_without_tokenizer_prompt_has_exactly_input_tokens_words():
    s = PromptSynth(block_tokens=512)
    vocab = set(VOCABULARY)
    for n in (1, 511, 512, 513, 2000):
        ids = list(range((n + 511) // 512))
        words = s.prompt(ids, n).split()
        assert len(words) == n and set(words) <= vocab


def test_missing_hash_ids_get_per_request_filler_blocks():
    s = PromptSynth(block_tokens=8)
    a, b = s.prompt([], 20, row=1), s.prompt([], 20, row=2)
    assert len(a.split()) == 20 and a != b  # two requests without ids never share text by accident
    assert s.prompt([], 20, row=1) == a


@pytest.mark.parametrize("kind", ["wordlevel", "bpe"])
def test_with_tokenizer_prompt_is_token_exact(tmp_path, kind):
    path = (_wordlevel if kind == "wordlevel" else _bpe)(tmp_path / "tokenizer.json")
    tok = load_tokenizer(path)
    rng = np.random.default_rng(0)
    lengths = [1, 2, 63, 64, 65, *rng.integers(1, 700, 20).tolist()]
    trace = _trace(lengths, [rng.integers(0, 50, (n + 63) // 64).tolist() for n in lengths], 64)
    fits, prep = prepare_prompts(trace, range(len(lengths)), tokenizer=path, model="m")
    assert prep.special.count == 0 and prep.source == "tokenizer"  # no post-processor: nothing added
    s = PromptSynth(fits=fits, block_tokens=64)
    for row, n in enumerate(lengths):
        assert len(tok.encode(s.prompt(trace.hash_ids(row), n, row), add_special_tokens=False).ids) == n


def test_block_cache_is_bounded():
    s = PromptSynth(block_tokens=4, cache_blocks=10)
    for i in range(100):
        s.block_text(i)
    assert len(s._cache) == 10
    assert s.block_text(0) == PromptSynth(block_tokens=4).block_text(0)  # evicted, rebuilt identically


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="positive"):
        PromptSynth().prompt([1], 0)
    with pytest.raises(InputError, match="not found"):
        load_tokenizer(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(InputError, match=r"not a tokenizer\.json"):
        load_tokenizer(bad)
