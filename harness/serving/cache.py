"""A site's prefix cache: block-level, keyed on trace hash ids, least-recently-used, capacity in bytes.

A request's prompt is a chain of blocks (``hash_ids``, ``block_tokens`` each). Its cached prefix is
the longest leading run of blocks present in the cache; those tokens skip prefill. Insertion after a
prefill stores every block of the prompt; eviction drops the least recently used entry first.

A hybrid model (linear-attention layers beside full-attention ones, ``CacheShape.state_bytes > 0``)
also needs its linear layers' recurrent state at the position where the reused prefix ends, and that
state exists only where a prefill saved it: a *checkpoint*. The cache then keeps, in the same LRU and
the same byte budget, checkpoints of ``state_bytes`` each, keyed by the block run they close. A hit is
the longest cached block prefix that ends at a checkpoint. A prefill saves one at its prompt's last full
block (the paper's request-level linear state, on the block grid as vLLM's hybrid cache aligns it) and,
if ``checkpoint_every_blocks`` is set, every that many blocks. A pure-attention model has no
checkpoints and hits on any block boundary.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.model.presets import ModelSpec


@dataclass(frozen=True)
class CacheShape:
    """What one cache entry holds. ``block_bytes``: one block's full-attention KV; ``state_bytes``: one
    linear-state checkpoint (0: a pure-attention model, hits on any block boundary);
    ``checkpoint_every_blocks``: also checkpoint every that many blocks (0: only at each prompt's end)."""

    block_tokens: int
    block_bytes: float
    state_bytes: float = 0.0
    checkpoint_every_blocks: int = 0

    @property
    def hybrid(self) -> bool:
        """Whether a hit must end at a linear-state checkpoint."""
        return self.state_bytes > 0


def cache_shape(model: ModelSpec, block_tokens: int, *, hybrid: bool = True) -> CacheShape:
    """The cache entries of ``model`` on blocks of ``block_tokens``; ``hybrid=False`` ignores its linear
    layers' state (every hit on any block boundary: the block-only cache, for comparison)."""
    block_bytes = max(1, model.kv_bytes_per_token) * block_tokens
    linear = model.linear_attention
    if not hybrid or linear is None:
        return CacheShape(block_tokens, block_bytes)
    return CacheShape(block_tokens, block_bytes, linear.state_bytes, linear.state_checkpoint_every_blocks)


class PrefixCache:
    """LRU cache of prefix blocks (and, for a hybrid model, linear-state checkpoints), ``capacity_bytes``
    in total, entries as ``shape`` sizes them.

    ``capacity_bytes=None`` is unbounded (the trace's reuse ratio upper bound); ``0`` disables it.
    ``lookup`` counts tokens (``lookup_tokens``, ``hit_tokens``) and blocks (``lookup_blocks``,
    ``hit_blocks``: leading blocks reused), so hit rates compare with a trace's block reuse ratio.
    """

    def __init__(self, capacity_bytes: float | None, shape: CacheShape) -> None:
        if shape.block_bytes <= 0 or shape.block_tokens <= 0:
            raise ValueError("block_bytes and block_tokens must be positive")
        self.shape = shape
        self.capacity_bytes = capacity_bytes
        self.block_tokens = int(shape.block_tokens)
        # Blocks are keyed by hash id (int); checkpoints by (blocks before it, hash id of the last one).
        self._entries: OrderedDict[int | tuple[int, int], None] = OrderedDict()
        self._states = 0
        self._used = 0.0
        self.lookup_tokens = 0
        self.hit_tokens = 0
        self.lookup_blocks = 0
        self.hit_blocks = 0

    def __len__(self) -> int:
        """Blocks held (checkpoints not counted)."""
        return len(self._entries) - self._states

    def __repr__(self) -> str:
        cap = "∞" if self.capacity_bytes is None else f"{self.capacity_bytes / 2**30:g} GiB"
        states = f" + {self._states} states" if self.shape.hybrid else ""
        return f"<PrefixCache {len(self)} blocks{states} x {self.block_tokens} tok, {cap}>"

    def _hit(self, hash_ids: Sequence[int], limit: int) -> tuple[int, int]:
        """(leading blocks usable, tokens they hold, at most ``limit``): the longest leading run of
        cached blocks, which for a hybrid model also ends at a checkpoint within ``limit`` tokens."""
        entries = self._entries
        n = 0
        for h in hash_ids:
            if h not in entries:
                break
            n += 1
        if not self.shape.hybrid:
            return n, min(n * self.block_tokens, limit)
        j = min(n, limit // self.block_tokens)
        while j > 0 and (j, hash_ids[j - 1]) not in entries:
            j -= 1
        return j, j * self.block_tokens

    def peek(self, hash_ids: Sequence[int], prompt_tokens: int) -> int:
        """Tokens of the longest usable cached prefix, without touching recency or counters (router views)."""
        return self._hit(hash_ids, prompt_tokens)[1]

    def lookup(self, hash_ids: Sequence[int], prompt_tokens: int) -> int:
        """Cached prefix tokens for a request about to prefill; refreshes what it reuses, counts the hit.

        At least one token is always left to compute (the last position's logits need a forward pass).
        """
        n, hit = self._hit(hash_ids, prompt_tokens - 1)
        entries = self._entries
        for h in hash_ids[:n]:
            entries.move_to_end(h)
        if n and self.shape.hybrid:
            entries.move_to_end((n, hash_ids[n - 1]))
        self.lookup_tokens += prompt_tokens
        self.hit_tokens += hit
        self.lookup_blocks += len(hash_ids)
        self.hit_blocks += n
        return hit

    def insert(self, hash_ids: Sequence[int], prompt_tokens: int) -> None:
        """Store (or refresh) every block of a prompt that has just been prefilled and, for a hybrid
        model, its checkpoints (see the module docstring); evict least recently used entries to fit."""
        if self.capacity_bytes == 0:
            return
        shape, entries = self.shape, self._entries
        new = 0
        for h in hash_ids:  # the replay's hot path: one dict operation per block
            if h in entries:
                entries.move_to_end(h)
            else:
                entries[h] = None
                new += 1
        self._used += new * shape.block_bytes
        full = min(len(hash_ids), prompt_tokens // self.block_tokens)  # the last full block
        if shape.hybrid and full:
            every = shape.checkpoint_every_blocks or full
            for j in (*range(every, full, every), full):
                self._put_state((j, hash_ids[j - 1]))
        if self.capacity_bytes is not None:
            while self._used > self.capacity_bytes:
                key, _ = entries.popitem(last=False)
                if isinstance(key, tuple):
                    self._states -= 1
                    self._used -= shape.state_bytes
                else:
                    self._used -= shape.block_bytes

    def _put_state(self, key: tuple[int, int]) -> None:
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        self._entries[key] = None
        self._used += self.shape.state_bytes
        self._states += 1

    def clear(self) -> None:
        """Forget every entry and zero the counters (a fresh cache of the same capacity)."""
        self._entries.clear()
        self._states = 0
        self._used = 0.0
        self.lookup_tokens = self.hit_tokens = self.lookup_blocks = self.hit_blocks = 0

    @property
    def hit_rate(self) -> float:
        """Token hit rate over every ``lookup`` so far (0 before the first)."""
        return self.hit_tokens / self.lookup_tokens if self.lookup_tokens else 0.0
