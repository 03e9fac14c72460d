"""What the prefix cache leaves each request of a trace to prefill: the trace replayed, in arrival order
and one request at a time, through the simulator's own site caches (``PrefixCache``: block-level on
the trace's ``hash_ids``, LRU, capacity in bytes; for a hybrid model a hit also ends at a linear-state
checkpoint). A pure function over the trace's arrays.

The replay follows the serving stack's routers and prefill instances (harness/serving/router.py,
instances.py) with every prefill finishing before the next request arrives:

* one site (``threshold=inf``): every request looks up and then fills that site's cache —
  homogeneous PD (the local site) and naive (the remote site, whose cache sees every prompt);
* PrfaaS (finite ``threshold``): the routing length is the prompt minus the local site's cached prefix
  (``global_cache``: minus the longest prefix either site holds); longer than the threshold prefills
  at the remote site, otherwise locally. Each prompt fills only the cache of the site that prefilled it,
  so a conversation that once went remote keeps a long *local* routing length while the remote cache
  holds its history.

At the prefill site the hit is the cache's ``lookup`` (at least one token is always computed), or the
longer prefix the router has pulled from the other site, which counts as cached: a remote prefill pulls
the local site's prefix (so it computes at most its routing length), and with ``global_cache`` a local
prefill pulls a longer prefix the remote site holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from harness.serving.cache import CacheShape, PrefixCache


@dataclass(frozen=True, eq=False)
class CacheReplay:
    """Per request: tokens prefilled (``uncached``), tokens the cache supplied (``cached``), and whether
    the remote site prefilled it; plus the caches' counters summed over the sites (as ``simulate``
    reports them)."""

    uncached: np.ndarray
    cached: np.ndarray
    remote: np.ndarray
    lookup_tokens: int
    hit_tokens: int
    lookup_blocks: int
    hit_blocks: int

    @property
    def token_hit_ratio(self) -> float:
        """Cached prompt tokens over all prompt tokens looked up."""
        return self.hit_tokens / self.lookup_tokens if self.lookup_tokens else 0.0

    @property
    def block_hit_ratio(self) -> float:
        """Leading blocks found over all blocks looked up (comparable with a trace's block reuse)."""
        return self.hit_blocks / self.lookup_blocks if self.lookup_blocks else 0.0


def replay_cache(
    input_tokens: np.ndarray,
    hash_values: np.ndarray,
    hash_offsets: np.ndarray,
    *,
    capacity_bytes: float | None,
    shape: CacheShape,
    threshold: float = math.inf,
    global_cache: bool = False,
) -> CacheReplay:
    """Replay a trace's prompts (CSR block ids as in ``Trace``) through the site caches; see the module
    docstring. ``capacity_bytes`` per site (None: unbounded, 0: no cache), entries sized by ``shape``
    (``cache_shape`` of the model, as the simulator builds its caches)."""
    n = len(input_tokens)
    prompts = np.asarray(input_tokens, dtype=np.int64).tolist()
    values = np.asarray(hash_values, dtype=np.int64).tolist()
    offsets = np.asarray(hash_offsets, dtype=np.int64).tolist()
    local = PrefixCache(capacity_bytes, shape)
    remote = PrefixCache(capacity_bytes, shape)
    uncached = np.empty(n, dtype=np.int64)
    cached = np.empty(n, dtype=np.int64)
    to_remote = np.zeros(n, dtype=bool)
    routed = math.isfinite(threshold)
    for i in range(n):
        ids = values[offsets[i] : offsets[i + 1]]
        prompt = prompts[i]
        site, fetched = local, 0
        if routed:
            held_local = local.peek(ids, prompt)
            held_remote = remote.peek(ids, prompt) if global_cache else 0
            held = max(held_local, held_remote)  # ties: the local site holds it
            if prompt - held > threshold:
                site = remote
                to_remote[i] = True
                fetched = held_local if held_local > held_remote else 0
            elif held_remote > held_local:
                fetched = held_remote
        hit = max(site.lookup(ids, prompt), min(fetched, prompt - 1))
        site.insert(ids, prompt)
        uncached[i] = prompt - hit
        cached[i] = hit
    caches = (local, remote)
    return CacheReplay(
        uncached=uncached,
        cached=cached,
        remote=to_remote,
        lookup_tokens=sum(c.lookup_tokens for c in caches),
        hit_tokens=sum(c.hit_tokens for c in caches),
        lookup_blocks=sum(c.lookup_blocks for c in caches),
        hit_blocks=sum(c.hit_blocks for c in caches),
    )
