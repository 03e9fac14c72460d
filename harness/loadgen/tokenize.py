"""Token-exact prompts, fitted before a run starts: to a server's ``POST /tokenize`` (vLLM, SGLang) or
to a local ``tokenizer.json``; the run itself never tokenizes.

A server takes ``{"model": M, "prompt": TEXT, "add_special_tokens": B}`` (or ``"messages"`` for a chat
prompt) and answers ``{"count": N, "max_model_len": L, "tokens": [...]}``. Fitting asks only for counts:

1. calibration: the whole vocabulary as one text; if it counts one token per word, every word is one
   token (each word is at least one), else the halves are asked in turn down to single words. One call
   when the vocabulary suits the tokenizer, about ``2 m log2(V/m)`` when m words split.
2. special tokens: a sample text counted bare and as the request sends it (a completion prompt with the
   tokenizer's special tokens, a chat message through the server's template); the difference is what the
   server adds to every prompt, and where the bare tokens start inside it is how much of it comes first.
3. per row: the prompt's text is ``input_tokens - special`` tokens, planned from the word counts
   (``PromptSynth.plan_fit``) and verified with one count of the request form; only a tokenizer whose
   counts do not add up word by word needs more (``refit``).

The result (``PromptFits``) is a few integers per trace row, so workers build the text with string joins.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from harness.errors import InputError
from harness.loadgen.config import _base_url, redact_url
from harness.loadgen.errortext import scrub, server_message
from harness.traces.frame import Trace
from harness.traces.prompts import VOCABULARY, PromptFits, PromptSynth, load_tokenizer

CONCURRENCY = 16  # counts in flight while preparing
_ROUNDS = 8  # count-and-correct rounds per prompt before giving up
SAMPLE = " the of and to in"  # counted bare and in the request's form: the special tokens' count


def tokenize_endpoint(url: str) -> str:
    """``URL/tokenize`` for a server base URL (a trailing ``/v1`` is dropped; ``.../tokenize`` is kept)."""
    base = _base_url(url, "--tokenize-url")
    return base if base.endswith("/tokenize") else base + "/tokenize"


@dataclass
class TokenizeCounter:
    """Counts tokens with one server's ``/tokenize``; every failure is an InputError naming the URL and
    keeping the server's own message. ``request=True`` counts a prompt as the run sends it (``api``)."""

    session: aiohttp.ClientSession
    url: str
    model: str
    api: str = "completions"
    api_key: str | None = None
    calls: int = 0
    max_model_len: int | None = None

    async def count(self, text: str, *, request: bool = False) -> int:
        """Tokens of ``text`` as the server counts them (bare, or as the request's prompt)."""
        answer, raw = await self._ask(text, request)
        count = answer.get("count")
        if count is None and isinstance(answer.get("tokens"), list):
            count = len(answer["tokens"])
        if not isinstance(count, int) or isinstance(count, bool) or count < 0 or (text and count == 0):
            raise InputError(
                f'malformed /tokenize answer (want {{"count": N, "tokens": [...]}}): '
                f"{raw[:200].decode(errors='replace')}",
                where=redact_url(self.url),
            )
        return count

    async def tokens(self, text: str, *, request: bool = False) -> list[int] | None:
        """The token ids, when the server lists them."""
        answer, _ = await self._ask(text, request)
        ids = answer.get("tokens")
        return ids if isinstance(ids, list) else None

    async def _ask(self, text: str, request: bool) -> tuple[dict[str, Any], bytes]:
        where = redact_url(self.url)
        body: dict[str, Any] = {"model": self.model}
        if request and self.api == "chat":  # the server's defaults are its chat completions' defaults
            body["messages"] = [{"role": "user", "content": text}]
        else:
            body |= {"prompt": text, "add_special_tokens": request}
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
        try:
            async with self.session.post(self.url, json=body, headers=headers) as resp:
                status, raw = resp.status, await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise InputError(
                f"tokenize server unreachable: {type(exc).__name__}: {exc}", where=where
            ) from None
        self.calls += 1
        said = scrub(server_message(raw, 200), (self.api_key or "",))
        # No route ("Not Found", aiohttp's "404: Not Found"), not a refusal of the model, say.
        if status == 404 and said.lower().removeprefix("404:").strip() in ("", "not found", "{}"):
            raise InputError(
                "no /tokenize endpoint here (HTTP 404); vLLM and SGLang serve POST /tokenize at the "
                "server root",
                where=where,
            )
        if status != 200:
            raise InputError(f"/tokenize answered HTTP {status}: {said}", where=where)
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise InputError(
                f"malformed /tokenize answer (want a JSON object): {raw[:200].decode(errors='replace')}",
                where=where,
            )
        limit = answer.get("max_model_len")
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            self.max_model_len = limit
        return answer, raw


@dataclass
class LocalCounter:
    """Counts tokens with a local ``tokenizer.json`` (the same calls as ``TokenizeCounter``). It knows the
    tokenizer's special tokens (BOS) but not a chat template, which lives on the server."""

    tokenizer: Any
    api: str = "completions"
    calls: int = 0
    max_model_len: int | None = None

    async def count(self, text: str, *, request: bool = False) -> int:
        return len(await self.tokens(text, request=request))

    async def tokens(self, text: str, *, request: bool = False) -> list[int]:
        self.calls += 1
        special = request and self.api != "chat"
        return await asyncio.to_thread(lambda: self.tokenizer.encode(text, add_special_tokens=special).ids)


async def word_tokens(counter: TokenizeCounter | LocalCounter) -> np.ndarray:
    """Token count of every vocabulary word (with its leading space), by halving the vocabulary."""
    counts = np.ones(len(VOCABULARY), dtype=np.int64)

    async def measure(lo: int, hi: int) -> None:
        n = await counter.count("".join(" " + w for w in VOCABULARY[lo:hi]))
        if hi - lo == 1:
            counts[lo] = max(n, 1)
        elif n > hi - lo:  # some word in here is several tokens
            mid = (lo + hi) // 2
            await asyncio.gather(measure(lo, mid), measure(mid, hi))

    await measure(0, len(VOCABULARY))
    return counts


@dataclass(frozen=True)
class SpecialTokens:
    """What the server adds to every prompt: ``count`` tokens, ``lead`` of them before the text (None:
    the server lists no token ids, or the bare text is not a run inside the request's tokens)."""

    count: int
    lead: int | None


def _find(seq: Sequence[int], part: Sequence[int]) -> int | None:
    n = len(part)
    return next((i for i in range(len(seq) - n + 1) if list(seq[i : i + n]) == list(part)), None)


async def special_tokens(counter: TokenizeCounter | LocalCounter) -> SpecialTokens:
    """Count the special tokens (BOS, a chat template) the server adds to a prompt of the run's API."""
    bare = await counter.tokens(SAMPLE)
    full = await counter.tokens(SAMPLE, request=True)
    if bare is None or full is None:
        extra = await counter.count(SAMPLE, request=True) - await counter.count(SAMPLE)
        lead = None
    else:
        extra, lead = len(full) - len(bare), _find(full, bare)
    if extra < 0:
        raise InputError(
            f"the server counts a prompt as {extra} tokens fewer than its text: cannot take its special "
            "tokens off",
            where=redact_url(getattr(counter, "url", "tokenizer")),
        )
    return SpecialTokens(extra, lead)


@dataclass(frozen=True)
class Preparation:
    """What fitting cost and found: rows fitted, counts asked (calibration included), wall seconds, the
    special tokens taken off every prompt and the server's context (``max_model_len``, None unknown)."""

    rows: int
    calls: int
    calibration_calls: int
    seconds: float
    source: str = "tokenize_url"  # or "tokenizer" (a local tokenizer.json)
    api: str = "completions"
    special: SpecialTokens = field(default_factory=lambda: SpecialTokens(0, 0))
    max_model_len: int | None = None
    short_rows: int = 0  # rows of no more tokens than the special ones: sent with one token of text

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rows": self.rows,
            "tokenize_calls": self.calls,
            "calibration_calls": self.calibration_calls,
            "calls_per_prompt": round((self.calls - self.calibration_calls) / max(self.rows, 1), 3),
            "prepare_s": round(self.seconds, 3),
            "api": self.api,
            "special_tokens": self.special.count,
            "special_tokens_before_text": self.special.lead,
            # A local tokenizer.json has no chat template: the server's template tokens are not counted.
            "chat_template_counted": not (self.source == "tokenizer" and self.api == "chat"),
            "max_model_len": self.max_model_len,
            "rows_shorter_than_special_tokens": self.short_rows,
        }


def prepare_prompts(
    trace: Trace,
    rows: Iterable[int],
    *,
    model: str,
    url: str | None = None,
    tokenizer: str | None = None,
    api: str = "completions",
    salt: int = 0,
    api_key: str | None = None,
    timeout_s: float = 60.0,
) -> tuple[PromptFits, Preparation]:
    """Fit the prompts of trace ``rows``, before a run (blocking), to the server's tokenizer at ``url``
    or to the local ``tokenizer`` file, so that the server counts exactly ``input_tokens`` for each."""
    if (url is None) == (tokenizer is None):
        raise ValueError("give exactly one of url and tokenizer")
    rows = sorted(set(map(int, rows)))
    return asyncio.run(_prepare(trace, rows, url, tokenizer, model, api, salt, api_key, timeout_s))


def server_context(
    url: str, *, model: str, api_key: str | None = None, timeout_s: float = 60.0
) -> int | None:
    """The server's ``max_model_len`` from its ``/tokenize`` (None when it does not say); a wrong model or
    URL is an InputError with the server's own message."""

    async def ask() -> int | None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
            counter = TokenizeCounter(session, tokenize_endpoint(url), model, api_key=api_key)
            await counter.count(SAMPLE)
            return counter.max_model_len

    return asyncio.run(ask())


async def _prepare(trace, rows, url, tokenizer, model, api, salt, api_key, timeout_s):
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        if url is not None:
            counter: TokenizeCounter | LocalCounter = TokenizeCounter(
                session, tokenize_endpoint(url), model, api, api_key
            )
            where = redact_url(counter.url)
        else:
            counter, where = LocalCounter(load_tokenizer(tokenizer), api), str(tokenizer)
        tokens = await word_tokens(counter)  # the first call also checks the server answers well
        calibration = counter.calls
        if not (tokens == 1).any():
            raise InputError(
                "no vocabulary word is one token for this tokenizer: no exact prompts", where=where
            )
        special = await special_tokens(counter)
        fits = PromptFits(tuple(int(t) for t in tokens), special.count, special.lead or 0)
        synth = PromptSynth(fits=fits, block_tokens=trace.block_tokens, salt=salt)
        todo = iter(rows)

        async def worker() -> None:
            for row in todo:
                n_in = int(trace.input_tokens[row])
                fit = await _fit(counter, synth, trace.hash_ids(row), fits.text_tokens(n_in), row, where)
                fits.rows[row] = (n_in, *fit)

        try:  # the first failure (one line, naming the server) cancels the other workers
            async with asyncio.TaskGroup() as group:
                for _ in range(CONCURRENCY):
                    group.create_task(worker())
        except* Exception as failed:
            raise failed.exceptions[0] from None
    short = int((trace.input_tokens[rows] <= special.count).sum()) if rows else 0
    prep = Preparation(
        len(rows), counter.calls, calibration, time.monotonic() - started,
        "tokenize_url" if url is not None else "tokenizer", api, special, counter.max_model_len, short,
    )  # fmt: skip
    return fits, prep


async def _fit(counter, synth: PromptSynth, hash_ids, target: int, row: int, where: str) -> tuple[int, int]:
    """(words, pad) whose text the server counts as ``target`` tokens plus its special tokens."""
    special = synth.fits.special_tokens
    fit = synth.plan_fit(hash_ids, target, row)
    for _ in range(_ROUNDS):
        n = await counter.count(synth.fitted_text(hash_ids, row, *fit), request=True) - special
        if n == target:
            return fit
        fit = synth.refit(hash_ids, row, fit, n, target)
    raise InputError(
        f"cannot build a prompt of exactly {target + special} tokens (trace row {row}) from the "
        "tokenizer's counts",
        where=where,
    )
