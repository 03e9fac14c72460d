"""Tokens per chunk: from a stream's chunk arrival times and token counts to per-token ITL.

A server may pack several tokens into one SSE chunk (vLLM's stream interval, speculative decoding), and
several chunks may arrive in one network read (they then share its timestamp). The client keeps one
time per token-bearing chunk and, sparse, ``(chunk index, tokens)`` for chunks that held other than
one token (from the running ``usage.completion_tokens`` of continuous usage stats). Attribution:

- a chunk of k tokens that arrived g after the previous chunk gives k inter-token gaps of g/k, so the
  gaps still sum to last − first token and there is one per token after the first (mean ITL = TPOT);
- the first chunk's extra tokens arrived with the first token: gaps of 0;
- a server that packs tokens without per-chunk counts shows only its total (the final usage): the
  gaps then stay one per chunk, and ITL is unresolved;
- ITL is unresolved, too, when most of a request's tokens arrived in one read: the gaps describe the
  reads, not the server's token steps. TPOT and the token count stay right either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby


@dataclass(frozen=True, slots=True)
class ChunkTiming:
    """What the record keeps: per-token gaps, tokens per chunk (mean; max when the per-chunk counts
    are known) and whether the gaps resolve tokens."""

    itl_s: list[float]
    tokens_per_chunk: float
    tokens_per_chunk_max: int | None
    itl_unresolved: bool


def chunk_tokens(chunks: int, multi: Sequence[tuple[int, int]]) -> int:
    """Tokens the chunks held: one each, except those listed in ``multi``."""
    return chunks + sum(k - 1 for _, k in multi)


def token_gaps(times: Sequence[float], multi: Sequence[tuple[int, int]]) -> list[float]:
    """Per-token inter-token gaps (module docstring): ``chunk_tokens − 1`` of them."""
    if not multi:
        return [b - a for a, b in zip(times, times[1:], strict=False)]  # noqa: RUF007
    per = dict(multi)
    gaps = [0.0] * (per.get(0, 1) - 1)
    for j in range(1, len(times)):
        gap, k = times[j] - times[j - 1], per.get(j, 1)
        if k == 1:
            gaps.append(gap)
        else:
            gaps.extend([gap / k] * k)
    return gaps


def largest_read(times: Sequence[float], multi: Sequence[tuple[int, int]]) -> int:
    """The most tokens that arrived in one read (chunks of one read share its timestamp)."""
    if not multi:  # a token per chunk: the longest run of equal times
        return max((sum(1 for _ in same) for _, same in groupby(times)), default=0)
    per = dict(multi)
    best = run = 0
    for j, t in enumerate(times):
        run = run + per.get(j, 1) if j and t == times[j - 1] else per.get(j, 1)
        best = max(best, run)
    return best


def chunk_timing(times: Sequence[float], multi: Sequence[tuple[int, int]], total: int) -> ChunkTiming:
    """Attribute a stream's tokens (``times`` non-empty). ``total`` is the server's final count when
    the chunks carried no running count (else the counted tokens): more than the chunks show means
    the server packed tokens without saying which chunk held them."""
    tokens = chunk_tokens(len(times), multi)
    known = total <= tokens
    n = max(total, tokens)
    return ChunkTiming(
        itl_s=token_gaps(times, multi),
        tokens_per_chunk=n / len(times),
        tokens_per_chunk_max=max((k for _, k in multi), default=1) if known else None,
        itl_unresolved=n >= 2 and (not known or 2 * largest_read(times, multi) > n),
    )
