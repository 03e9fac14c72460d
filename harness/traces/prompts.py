"""Prompt text from prefix block ids, so a replayed trace reuses prefixes exactly where the trace did.

Each block id maps to a fixed run of words drawn from a seeded generator: the same id always yields the
same text and different ids yield different text, so two requests that share their first k hash ids
share their first k blocks of text, and a server's prefix cache sees the reuse the trace recorded.

Token exactness:

* fitted (``PromptFits``, made before the run by ``harness.loadgen.tokenize`` from a server's
  ``/tokenize`` or a local ``tokenizer.json``): every block is exactly ``block_tokens`` tokens of that
  tokenizer (its own words while they fit, completed with one-token words), so two requests sharing k
  block ids share exactly k blocks of tokens; a prompt is the first ``words`` words of the row's stream
  plus ``pad`` one-token words, and the server's own special tokens (BOS, chat template) are taken off;
* without one, a prompt has exactly ``input_tokens`` words from ``VOCABULARY``: common English words that
  are one token each (with their leading space) in byte-level BPE tokenizers. Measured against a
  65k-entry byte-level BPE tokenizer, prompts came out at exactly the requested length plus at most
  1 token (see ``docs/replay.md``); chat templates add their own tokens on the server side.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness.errors import InputError
from harness.traces.frame import DEFAULT_BLOCK_TOKENS

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# Common words that are a single token (with a leading space) in common byte-level BPE vocabularies.
VOCABULARY: tuple[str, ...] = tuple(
    """
    the of and to in is it you that was for on are with as his they be at one have this from or had by
    word but what some we can out other were all there when up use your how said an each she which do
    their time if will way about many then them write would like so these her long make thing see him two
    has look more day could go come did number sound no most people my over know water than call first
    who may down side been now find any new work part take get place made live where after back little
    only round man year came show every good me give our under name very through just form sentence
    great think say help low line differ turn cause much mean before move right boy old too same tell
    does set three want air well also play small end put home read hand port large spell add even land
    here must big high such follow act why ask men change went light kind off need house picture try us
    again animal point mother world near build self earth father head stand own page should country found
    answer school grow study still learn plant cover food sun four between state keep eye never last let
    thought city tree cross farm hard start might story saw far sea draw left late run while press close
    night real life few north open seem together next white children begin got walk example ease paper
    group always music those both mark often letter until mile river car feet care second book carry took
    science eat room friend began idea fish mountain stop once base hear horse cut sure watch color face
    wood main enough plain girl usual young ready above ever red list though feel talk bird soon body dog
    family direct pose leave song measure door product black short class wind question happen complete
    ship area half rock order fire south problem piece told knew pass since top whole king space heard
    best hour better true during hundred five remember step early hold west ground interest reach fast
    verb sing listen six table travel less morning ten simple several vowel toward war lay against
    pattern slow center love person money serve appear road map rain rule govern pull cold notice voice
    unit power town fine certain fly fall lead cry dark machine note wait plan figure star box noun field
    rest correct able pound done beauty drive stood contain front teach week final gave green oh quick
    develop ocean warm free minute strong special mind behind clear tail produce fact street inch
    multiply nothing course stay wheel full force blue object decide surface deep moon island foot system
    busy test record boat common gold possible plane stead dry wonder laugh thousand ago ran check game
    shape hot miss brought heat snow tire bring yes distant fill east paint language among
    """.split()  # noqa: SIM905 (a word list reads better as text)
)
_WORDS = np.array([" " + w for w in VOCABULARY], dtype=object)
_WORD_LEN = np.array([len(w) for w in _WORDS], dtype=np.int64)


_M1, _M2, _GOLDEN = (
    np.uint64(0xBF58476D1CE4E5B9),
    np.uint64(0x94D049BB133111EB),
    np.uint64(0x9E3779B97F4A7C15),
)


def _word_indices(salt: int, block_id: int, n: int) -> np.ndarray:
    """Word ``k`` of block ``block_id``: splitmix64 of (salt, id, k), so each word is an independent hash
    (two ids share a block's text with probability ~V^-n) and generation is one vectorised pass."""
    key = np.uint64((block_id * 0x100000001B3 + salt * 0x2545F4914F6CDD1D) & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        z = key * _GOLDEN + np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        z ^= z >> np.uint64(31)
    return (z % np.uint64(len(_WORDS))).astype(np.intp)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a Hugging Face ``tokenizer.json``; a clear InputError if it is missing or unreadable."""
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:  # optional dependency
        raise InputError("--tokenizer needs the 'tokenizers' package (pip install tokenizers)") from exc
    p = Path(path)
    if not p.is_file():
        raise InputError("tokenizer file not found", where=str(p))
    try:
        return Tokenizer.from_file(str(p))
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
        raise InputError(f"not a tokenizer.json: {exc}", where=str(p)) from None


@dataclass(frozen=True)
class PromptFits:
    """Prompts fitted, before a run, to a tokenizer known through its counts (a server's ``/tokenize``
    or a local ``tokenizer.json``).

    ``word_tokens[v]`` is the token count of vocabulary word v (with its leading space); blocks are built
    from it to be exactly ``block_tokens`` tokens. The server adds ``special_tokens`` of its own to every
    prompt (BOS, a chat template), ``lead_tokens`` of them before the text: the text of a row is
    ``input_tokens - special_tokens`` tokens and its first block is ``lead_tokens`` shorter, so trace
    block k is server tokens ``[k*block, (k+1)*block)``. ``rows[row] = (input_tokens, words, pad)``: the
    row's prompt is the first ``words`` words of its word stream and then ``pad`` one-token filler words.
    Small and picklable, so worker processes get a copy.
    """

    word_tokens: tuple[int, ...]
    special_tokens: int = 0
    lead_tokens: int = 0
    rows: dict[int, tuple[int, int, int]] = field(default_factory=dict)

    def text_tokens(self, input_tokens: int) -> int:
        """Tokens of text for a prompt the server counts as ``input_tokens`` (at least one)."""
        return max(int(input_tokens) - self.special_tokens, 1)


def _filler_block(row: int) -> int:
    """Block id whose word draws pick a row's pad words (never a trace id: those are >= 0)."""
    return -(row * 4096) - 4095


_FILL_SALT = 0x5F3759DF  # a separate draw for the one-token words that complete a block
_USER_SALT = 0x2F1E0D  # ... and for a later turn's new user text


@dataclass(frozen=True)
class _Block:
    text: str
    ends: np.ndarray  # character offset after each word
    words: np.ndarray  # vocabulary indices


class PromptSynth:
    """Builds prompts from hash ids; caches block text (LRU, ``cache_blocks`` entries).

    ``salt`` changes every block's text (a fresh prefix-cache universe for the same trace);
    ``block_tokens`` must match the trace's block size (512 for Mooncake). Without ``fits`` every word
    counts as one token; with them a block is exactly ``block_tokens`` tokens of that tokenizer.
    """

    def __init__(
        self,
        *,
        fits: PromptFits | None = None,
        block_tokens: int = DEFAULT_BLOCK_TOKENS,
        salt: int = 0,
        cache_blocks: int = 4096,
    ) -> None:
        if block_tokens <= 0:
            raise InputError(f"block_tokens must be positive, got {block_tokens}")
        self.fits = fits
        self.block_tokens = block_tokens
        self.salt = salt
        if fits is None:
            self.word_tokens = np.ones(len(VOCABULARY), dtype=np.int64)
        else:
            self.word_tokens = np.asarray(fits.word_tokens, dtype=np.int64)
            if len(self.word_tokens) != len(VOCABULARY) or (self.word_tokens < 1).any():
                raise InputError("fitted prompts need a count >= 1 for every vocabulary word")
        self.filler = np.flatnonzero(self.word_tokens == 1)  # one-token words
        self._first = max(block_tokens - (fits.lead_tokens if fits else 0), 1)
        self._cache: OrderedDict[tuple[int, int], _Block] = OrderedDict()
        self._cache_blocks = cache_blocks

    @property
    def exact(self) -> bool:
        """True when prompts are token-exact (fitted to a tokenizer before the run)."""
        return self.fits is not None

    def _fill(self, key: int, block_id: int, n: int) -> np.ndarray:
        """``n`` one-token words drawn for ``block_id`` (``key`` separates the draws' purposes)."""
        if not n:
            return np.zeros(0, dtype=np.intp)
        if not len(self.filler):
            raise InputError("no vocabulary word is one token for this tokenizer: no exact prompts")
        return self.filler[_word_indices(self.salt + key, block_id, n) % len(self.filler)]

    def _block(self, block_id: int, size: int | None = None) -> _Block:
        """Block ``block_id`` as exactly ``size`` tokens (default ``block_tokens``): its own word draws
        while they fit, completed with one-token words (none needed when every word is one token)."""
        size = self.block_tokens if size is None else size
        hit = self._cache.get((block_id, size))
        if hit is not None:
            self._cache.move_to_end((block_id, size))
            return hit
        idx = _word_indices(self.salt, block_id, size)
        if self.fits is not None:  # not every word is one token: keep those that fit, then complete
            cum = np.cumsum(self.word_tokens[idx])
            n = int(np.searchsorted(cum, size, side="right"))
            have = int(cum[n - 1]) if n else 0
            idx = np.concatenate([idx[:n], self._fill(_FILL_SALT, block_id, size - have)])
        entry = _Block("".join(_WORDS[idx]), np.cumsum(_WORD_LEN[idx]), idx)
        self._cache[(block_id, size)] = entry
        if len(self._cache) > self._cache_blocks:
            self._cache.popitem(last=False)
        return entry

    def block_text(self, block_id: int) -> str:
        """The full text of one block (``block_tokens`` tokens; a row's first block is ``lead_tokens``
        shorter)."""
        return self._block(int(block_id)).text

    def _blocks(self, hash_ids: Sequence[int], n_words: int, row: int) -> Iterator[tuple[_Block, int]]:
        """(block, words taken from it) for the first ``n_words`` words of a row's word stream."""
        remaining, k = n_words, 0
        while remaining > 0:
            # Past the trace's own ids (or with none), use per-request ids so tails never collide.
            block_id = int(hash_ids[k]) if k < len(hash_ids) else -(row * 4096 + k) - 1
            block = self._block(block_id, self._first if k == 0 else self.block_tokens)
            take = min(remaining, len(block.words))
            yield block, take
            remaining -= take
            k += 1

    def _words(self, hash_ids: Sequence[int], n_words: int, row: int) -> str:
        parts = [
            b.text if take == len(b.words) else b.text[: b.ends[take - 1]]
            for b, take in self._blocks(hash_ids, n_words, row)
        ]
        return "".join(parts)

    def word_stream(self, hash_ids: Sequence[int], n_words: int, row: int = 0) -> np.ndarray:
        """Vocabulary indices of the first ``n_words`` words of a row's prompt text."""
        parts = [b.words[:take] for b, take in self._blocks(hash_ids, n_words, row)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.intp)

    def prompt(self, hash_ids: Sequence[int], input_tokens: int, row: int = 0) -> str:
        """Prompt text for one request of ``input_tokens`` tokens (exact when fitted, else words).

        ``row`` (the trace row) seeds filler blocks when the trace has fewer ids than blocks needed.
        """
        if input_tokens <= 0:
            raise InputError(f"input_tokens must be positive, got {input_tokens}")
        if self.fits is None:
            return self._words(hash_ids, input_tokens, row)
        fit = self.fits.rows.get(int(row))
        if fit is None or fit[0] != input_tokens:
            raise InputError(f"no fitted prompt of {input_tokens} tokens for trace row {row}")
        return self.fitted_text(hash_ids, row, fit[1], fit[2])

    def fitted_text(self, hash_ids: Sequence[int], row: int, words: int, pad: int) -> str:
        """The first ``words`` words of the row's stream, then ``pad`` one-token words."""
        return self._words(hash_ids, words, row) + "".join(_WORDS[self._fill(0, _filler_block(row), pad)])

    def user_text(self, row: int, tokens: int) -> str:
        """``tokens`` one-token words for a session's later turn: the new user text it adds to the
        previous prompt and answer (fresh per row, exact in tokens when the prompts are fitted)."""
        return "".join(_WORDS[self._fill(_USER_SALT, _filler_block(row), max(int(tokens), 1))])

    def plan_fit(self, hash_ids: Sequence[int], target: int, row: int) -> tuple[int, int]:
        """(words, pad) predicted to make ``target`` tokens of text if counts add up word by word.

        Keeps the longest prefix of the word stream that fits, then pads with one-token words: every
        whole block the prompt covers is then exactly its block size in tokens.
        """
        cum = np.cumsum(self.word_tokens[self.word_stream(hash_ids, target, row)])
        words = int(np.searchsorted(cum, target, side="right"))
        return words, target - (int(cum[words - 1]) if words else 0)

    def refit(
        self, hash_ids: Sequence[int], row: int, fit: tuple[int, int], measured: int, target: int
    ) -> tuple[int, int]:
        """Correct ``fit`` after a count of ``measured`` tokens (counts did not add up word by word)."""
        words, pad = fit
        excess = measured - target
        if excess <= 0:
            return words, pad - excess
        cut = min(pad, excess)
        pad, excess = pad - cut, excess - cut
        if excess:
            tail = np.cumsum(self.word_tokens[self.word_stream(hash_ids, words, row)][::-1])
            drop = min(int(np.searchsorted(tail, excess)), len(tail) - 1)
            words, pad = words - drop - 1, pad + int(tail[drop]) - excess
        return max(words, 0), max(pad, 0)
