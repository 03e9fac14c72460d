"""The one columnar form every trace reader and generator produces.

Prefix block ids are ragged (one list per request), stored CSR-style as a flat ``int64`` array plus
offsets, so a 100k-request trace is a handful of numpy arrays rather than 100k Python lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_BLOCK_TOKENS = 512  # Mooncake's hash-block size


@dataclass(frozen=True, eq=False)
class Trace:
    """Requests in arrival order.

    arrival_s       float64, seconds from trace start, non-decreasing
    input_tokens    int64, > 0
    output_tokens   int64, > 0
    hash_values     int64, all requests' prefix block ids concatenated
    hash_offsets    int64, len n+1; request i's ids are hash_values[hash_offsets[i]:hash_offsets[i+1]]
    session_id      int64 or None; -1 where a request has no session
    turn            int64 or None; the request's turn in its session (0 first), -1 where it has none
    block_tokens    tokens per prefix block (512 for Mooncake)
    source          where the trace came from (file path or generator description)
    """

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    hash_values: np.ndarray = field(repr=False)
    hash_offsets: np.ndarray = field(repr=False)
    session_id: np.ndarray | None = None
    turn: np.ndarray | None = None
    block_tokens: int = DEFAULT_BLOCK_TOKENS
    source: str = ""

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        if len(self.input_tokens) != n or len(self.output_tokens) != n:
            raise ValueError("arrival_s, input_tokens and output_tokens must have the same length")
        if len(self.hash_offsets) != n + 1:
            raise ValueError("hash_offsets must have one more entry than there are requests")
        if self.session_id is not None and len(self.session_id) != n:
            raise ValueError("session_id must have one entry per request")
        if self.turn is not None and (self.session_id is None or len(self.turn) != n):
            raise ValueError("turn needs session_id and one entry per request")

    def __len__(self) -> int:
        return len(self.arrival_s)

    def __repr__(self) -> str:
        span = float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) else 0.0
        return f"<Trace {len(self)} requests over {span:.1f}s from {self.source or '?'}>"

    def hash_ids(self, i: int) -> np.ndarray:
        """Prefix block ids of request ``i`` (a view, do not modify)."""
        return self.hash_values[self.hash_offsets[i] : self.hash_offsets[i + 1]]

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) else 0.0

    def take(self, index: np.ndarray) -> Trace:
        """A new trace holding the requests at ``index`` (an int array or boolean mask), in that order."""
        idx = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index, dtype=np.int64)
        starts, ends = self.hash_offsets[idx], self.hash_offsets[idx + 1]
        offsets = offsets_from_lengths(ends - starts)
        values = (
            np.concatenate([self.hash_values[s:e] for s, e in zip(starts, ends, strict=True)])
            if len(idx)
            else np.zeros(0, dtype=np.int64)
        )
        return Trace(
            arrival_s=self.arrival_s[idx],
            input_tokens=self.input_tokens[idx],
            output_tokens=self.output_tokens[idx],
            hash_values=values.astype(np.int64, copy=False),
            hash_offsets=offsets,
            session_id=None if self.session_id is None else self.session_id[idx],
            turn=None if self.turn is None else self.turn[idx],
            block_tokens=self.block_tokens,
            source=self.source,
        )

    def replace(self, **changes) -> Trace:
        """A copy with some columns replaced (same semantics as ``dataclasses.replace``)."""
        from dataclasses import replace

        return replace(self, **changes)


def offsets_from_lengths(lengths: np.ndarray) -> np.ndarray:
    """CSR offsets (``len + 1`` entries, starting at 0) for per-request list lengths."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def offsets_from_lists(lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Build (values, offsets) CSR arrays from per-request id lists."""
    offsets = offsets_from_lengths(np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists)))
    values = np.fromiter((v for x in lists for v in x), dtype=np.int64, count=int(offsets[-1]))
    return values, offsets
