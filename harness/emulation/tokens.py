"""Prompt token counting and prefix block ids for the emulated endpoints.

The emulator has no tokenizer: a token is a whitespace-separated word, the unit in which the harness
synthesises prompts from trace hash ids (``harness.traces.prompts``). Prefix block ids are derived
from the text the way vLLM hashes its prefix cache: each block of ``block_tokens`` tokens is hashed
together with the previous block's id, so two prompts share block ids exactly as long as they share a
prefix, and a request replayed from a trace hits the same blocks its hash ids name.
"""

from __future__ import annotations

import hashlib
import struct

_PACK = struct.Struct("<q")


def prompt_words(text: str) -> list[str]:
    """The prompt's tokens: its whitespace-separated words."""
    return text.split()


def count_tokens(text: str) -> int:
    """Number of tokens in ``text`` (whitespace words)."""
    return len(text.split())


def block_ids(words: list[str], block_tokens: int) -> list[int]:
    """Chained int64 ids of consecutive ``block_tokens``-word blocks (the last block may be partial).

    A partial final block is included, as trace hash ids include it, so a prompt's block count equals
    ``ceil(tokens / block_tokens)``.
    """
    if block_tokens <= 0:
        raise ValueError("block_tokens must be positive")
    ids: list[int] = []
    prev = b"\0" * 8
    for start in range(0, len(words), block_tokens):
        h = hashlib.blake2b(prev, digest_size=8)
        h.update(" ".join(words[start : start + block_tokens]).encode())
        prev = h.digest()
        ids.append(_PACK.unpack(prev)[0])
    return ids
