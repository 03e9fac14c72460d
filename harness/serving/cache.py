"""A site's prefix cache: block-level, keyed on trace hash ids, least-recently-used, capacity in bytes.

A request's prompt is a chain of blocks (``hash_ids``, ``block_tokens`` each). Its cached prefix is
the longest leading run of blocks present in the cache; those tokens skip prefill. Insertion after a
prefill stores every block of the prompt; eviction drops the least recently used block first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class PrefixCache:
    """LRU cache of prefix blocks, ``capacity_bytes`` in total, ``block_bytes`` per block.

    ``capacity_bytes=None`` is unbounded (the trace's reuse ratio upper bound); ``0`` disables it.
    ``lookup`` counts tokens (``lookup_tokens``, ``hit_tokens``) and blocks (``lookup_blocks``,
    ``hit_blocks``: leading blocks found), so hit rates compare with a trace's block reuse ratio.
    """

    def __init__(self, capacity_bytes: float | None, block_bytes: float, block_tokens: int) -> None:
        if block_bytes <= 0 or block_tokens <= 0:
            raise ValueError("block_bytes and block_tokens must be positive")
        self.capacity_blocks = None if capacity_bytes is None else int(capacity_bytes // block_bytes)
        self.block_tokens = int(block_tokens)
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self.lookup_tokens = 0
        self.hit_tokens = 0
        self.lookup_blocks = 0
        self.hit_blocks = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def __repr__(self) -> str:
        cap = "∞" if self.capacity_blocks is None else self.capacity_blocks
        return f"<PrefixCache {len(self._blocks)}/{cap} blocks x {self.block_tokens} tok>"

    def _leading(self, hash_ids: Sequence[int]) -> int:
        blocks = self._blocks
        n = 0
        for h in hash_ids:
            if h not in blocks:
                break
            n += 1
        return n

    def peek(self, hash_ids: Sequence[int], prompt_tokens: int) -> int:
        """Tokens of the longest cached prefix, without touching recency or counters (router views)."""
        return min(self._leading(hash_ids) * self.block_tokens, prompt_tokens)

    def lookup(self, hash_ids: Sequence[int], prompt_tokens: int) -> int:
        """Cached prefix tokens for a request about to prefill; refreshes the hit blocks, counts the hit.

        At least one token is always left to compute (the last position's logits need a forward pass).
        """
        n = self._leading(hash_ids)
        blocks = self._blocks
        for h in hash_ids[:n]:
            blocks.move_to_end(h)
        hit = min(n * self.block_tokens, prompt_tokens - 1)
        self.lookup_tokens += prompt_tokens
        self.hit_tokens += hit
        self.lookup_blocks += len(hash_ids)
        self.hit_blocks += n
        return hit

    def insert(self, hash_ids: Sequence[int]) -> None:
        """Store (or refresh) every block of a prompt that has just been prefilled, evicting LRU blocks."""
        if self.capacity_blocks == 0:
            return
        blocks = self._blocks
        for h in hash_ids:
            if h in blocks:
                blocks.move_to_end(h)
            else:
                blocks[h] = None
        if self.capacity_blocks is not None:
            while len(blocks) > self.capacity_blocks:
                blocks.popitem(last=False)

    def clear(self) -> None:
        """Forget every block and zero the counters (a fresh cache of the same capacity)."""
        self._blocks.clear()
        self.lookup_tokens = self.hit_tokens = self.lookup_blocks = self.hit_blocks = 0

    @property
    def hit_rate(self) -> float:
        """Token hit rate over every ``lookup`` so far (0 before the first)."""
        return self.hit_tokens / self.lookup_tokens if self.lookup_tokens else 0.0
