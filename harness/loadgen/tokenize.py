"""Token-exact prompts from a server's ``POST /tokenize`` (vLLM, SGLang), fitted before a run starts.

Both servers take ``{"model": M, "prompt": TEXT, "add_special_tokens": false}`` and answer
``{"count": N, "max_model_len": L, "tokens": [...]}``. The server is asked only for counts:

1. calibration: the whole vocabulary as one text; if it counts one token per word, every word is one
   token (each word is at least one), else the halves are asked in turn down to single words. One call
   when the vocabulary suits the tokenizer, about ``2 m log2(V/m)`` when m words split.
2. per row: the prompt is planned from those word counts (``PromptSynth.plan_fit``) and verified with
   one call; only a tokenizer whose counts do not add up word by word needs more (``refit``).

The result (``PromptFits``) is a few integers per trace row, so the run itself never calls the server.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
import numpy as np

from harness.errors import InputError
from harness.loadgen.config import _base_url, redact_url
from harness.traces.frame import Trace
from harness.traces.prompts import VOCABULARY, PromptFits, PromptSynth

CONCURRENCY = 16  # /tokenize calls in flight while preparing
_ROUNDS = 8  # count-and-correct rounds per prompt before giving up


def tokenize_endpoint(url: str) -> str:
    """``URL/tokenize`` for a server base URL (a trailing ``/v1`` is dropped; ``.../tokenize`` is kept)."""
    base = _base_url(url, "--tokenize-url")
    return base if base.endswith("/tokenize") else base + "/tokenize"


@dataclass
class TokenizeCounter:
    """Counts tokens with one server's ``/tokenize``; every failure is an InputError naming the URL."""

    session: aiohttp.ClientSession
    url: str
    model: str
    api_key: str | None = None
    calls: int = 0

    async def count(self, text: str) -> int:
        """Tokens in ``text`` without special tokens, as the server counts them."""
        where = redact_url(self.url)
        body = {"model": self.model, "prompt": text, "add_special_tokens": False}
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
        try:
            async with self.session.post(self.url, json=body, headers=headers) as resp:
                status, raw = resp.status, await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise InputError(
                f"tokenize server unreachable: {type(exc).__name__}: {exc}", where=where
            ) from None
        self.calls += 1
        if status == 404:
            raise InputError(
                "no /tokenize endpoint here (HTTP 404); vLLM and SGLang serve POST /tokenize at the "
                "server root",
                where=where,
            )
        if status != 200:
            raise InputError(
                f"/tokenize answered HTTP {status}: {raw[:200].decode(errors='replace')}", where=where
            )
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        count = answer.get("count") if isinstance(answer, dict) else None
        if count is None and isinstance(answer, dict) and isinstance(answer.get("tokens"), list):
            count = len(answer["tokens"])
        if not isinstance(count, int) or isinstance(count, bool) or count < 0 or (text and count == 0):
            raise InputError(
                f'malformed /tokenize answer (want {{"count": N, "tokens": [...]}}): '
                f"{raw[:200].decode(errors='replace')}",
                where=where,
            )
        return count


async def word_tokens(counter: TokenizeCounter) -> np.ndarray:
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
class Preparation:
    """What fitting cost: rows fitted, /tokenize calls (calibration included) and wall seconds."""

    rows: int
    calls: int
    calibration_calls: int
    seconds: float

    def describe(self) -> dict[str, float]:
        return {
            "rows": self.rows,
            "tokenize_calls": self.calls,
            "calibration_calls": self.calibration_calls,
            "calls_per_prompt": round((self.calls - self.calibration_calls) / max(self.rows, 1), 3),
            "prepare_s": round(self.seconds, 3),
        }


def prepare_prompts(
    trace: Trace,
    rows: Iterable[int],
    *,
    url: str,
    model: str,
    salt: int = 0,
    api_key: str | None = None,
    timeout_s: float = 60.0,
) -> tuple[PromptFits, Preparation]:
    """Fit the prompts of trace ``rows`` to the server's tokenizer at ``url`` (blocking, before a run)."""
    return asyncio.run(_prepare(trace, sorted(set(map(int, rows))), url, model, salt, api_key, timeout_s))


async def _prepare(trace, rows, url, model, salt, api_key, timeout_s) -> tuple[PromptFits, Preparation]:
    started = time.monotonic()
    endpoint = tokenize_endpoint(url)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        counter = TokenizeCounter(session, endpoint, model, api_key)
        tokens = await word_tokens(counter)  # the first call also checks the server answers well
        calibration = counter.calls
        filler = tuple(w for w, n in zip(VOCABULARY, tokens, strict=True) if n == 1)
        if not filler:
            raise InputError(
                "no vocabulary word is one token for this tokenizer: no exact prompts",
                where=redact_url(endpoint),
            )
        synth = PromptSynth(block_tokens=trace.block_tokens, salt=salt)
        fits = PromptFits(filler)
        todo = iter(rows)

        async def worker() -> None:
            for row in todo:
                target = int(trace.input_tokens[row])
                fit = await _fit(counter, synth, trace.hash_ids(row), target, row, tokens, filler)
                fits.rows[row] = (target, *fit)

        try:  # the first failure (one line, naming the server) cancels the other workers
            async with asyncio.TaskGroup() as group:
                for _ in range(CONCURRENCY):
                    group.create_task(worker())
        except* Exception as failed:
            raise failed.exceptions[0] from None
    elapsed = time.monotonic() - started
    return fits, Preparation(len(rows), counter.calls, calibration, elapsed)


async def _fit(
    counter, synth: PromptSynth, hash_ids, target: int, row: int, tokens, filler
) -> tuple[int, int]:
    fit = synth.plan_fit(hash_ids, target, row, tokens)
    for _ in range(_ROUNDS):
        n = await counter.count(synth.fitted_text(hash_ids, row, *fit, filler))
        if n == target:
            return fit
        fit = synth.refit(hash_ids, row, fit, n, target, tokens)
    raise InputError(
        f"cannot build a prompt of exactly {target} tokens (trace row {row}) from the server's counts",
        where=redact_url(counter.url),
    )
