"""The prefix cache of a hybrid model (harness/serving/cache.py): a hit ends where a linear-state
checkpoint was saved. By hand on small traces, against a pairwise derivation on the Mooncake slice, and
unchanged for a pure-attention model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.errors import ScenarioError
from harness.model.presets import load_model
from harness.model.reuse import replay_cache
from harness.serving.cache import CacheShape, PrefixCache, cache_shape
from harness.traces.frame import offsets_from_lists
from harness.traces.readers import read_trace

REPO = Path(__file__).resolve().parent.parent
MOONCAKE_SLICE = REPO / "tests" / "data" / "mooncake_conversation_head300.jsonl"
GIB = 2**30


def _replay(prompts, ids, shape, capacity=None, **kw):
    values, offsets = offsets_from_lists(ids)
    return replay_cache(np.asarray(prompts), values, offsets, capacity_bytes=capacity, shape=shape, **kw)


# ---------------------------------------------------------------------------------------------- by hand
HAND_PROMPTS = [10, 15, 12, 20, 12]
HAND_IDS = [[1, 2, 3], [1, 2, 5, 6], [1, 7, 8], [1, 2, 5, 6, 9], [1, 2, 3]]
BLOCKS = CacheShape(block_tokens=4, block_bytes=1.0)
HYBRID = CacheShape(block_tokens=4, block_bytes=1.0, state_bytes=2.0)


def test_hybrid_hits_end_at_a_saved_state_by_hand():
    """4-token blocks, unbounded. A prefill saves the state at its prompt's last full block,
    min(blocks, prompt // 4); a hybrid hit is the longest cached block run that ends at such a state,
    within prompt - 1 tokens. Row by row (block-only hit | hybrid hit; states after the row):

    r0 [1,2,3]      10 tok  miss | miss                                        states: after 1,2
    r1 [1,2,5,6]    15 tok  1,2 = 8 | 1,2 ends at r0's state = 8              + after 1,2,5 (15 // 4 = 3)
    r2 [1,7,8]      12 tok  1 = 4 | no state after block 1 alone = 0          + after 1,7,8
    r3 [1,2,5,6,9]  20 tok  1,2,5,6 = 16 | 6 was r1's partial block, no state
                            after it; back to r1's state after 1,2,5 = 12     + after 1,2,5,6,9
    r4 [1,2,3]      12 tok  all three, less the token computed = 11 |
                            at most (12 - 1) // 4 = 2 blocks: r0's state = 8

    Tokens: block-only 0+8+4+16+11 = 39, hybrid 0+8+0+12+8 = 28, of 69 looked up; blocks reused:
    block-only 0+2+1+4+3 = 10, hybrid 0+2+0+3+2 = 7, of 18.
    """
    blocks = _replay(HAND_PROMPTS, HAND_IDS, BLOCKS)
    hybrid = _replay(HAND_PROMPTS, HAND_IDS, HYBRID)
    assert blocks.cached.tolist() == [0, 8, 4, 16, 11]
    assert hybrid.cached.tolist() == [0, 8, 0, 12, 8]
    assert (blocks.hit_tokens, blocks.hit_blocks) == (39, 10)
    assert (hybrid.hit_tokens, hybrid.hit_blocks) == (28, 7)
    assert hybrid.lookup_tokens == blocks.lookup_tokens == 69
    assert hybrid.lookup_blocks == blocks.lookup_blocks == 18
    assert (hybrid.uncached + hybrid.cached).tolist() == HAND_PROMPTS


def test_states_every_block_recover_the_shared_first_block_by_hand():
    """The same trace with a state saved after every full block too (``checkpoint_every_blocks=1``):
    r2 now finds the state after block 1 that r0 and r1 saved (4 tokens, as block-only); r3 still stops
    at 3 blocks (block 6 was never a full block of a prefilled prompt, so no state follows it); r4 is
    still held to 2 blocks by the token it must compute. Tokens 0+8+4+12+8 = 32."""
    every = CacheShape(block_tokens=4, block_bytes=1.0, state_bytes=2.0, checkpoint_every_blocks=1)
    assert _replay(HAND_PROMPTS, HAND_IDS, every).cached.tolist() == [0, 8, 4, 12, 8]
    # Every 2 blocks adds states after 2 and 4 blocks, which r0 and r1's ends already give or no row
    # needs: the end-only hits.
    two = CacheShape(block_tokens=4, block_bytes=1.0, state_bytes=2.0, checkpoint_every_blocks=2)
    assert _replay(HAND_PROMPTS, HAND_IDS, two).cached.tolist() == [0, 8, 0, 12, 8]


def test_states_take_their_bytes_from_the_capacity_by_hand():
    """6 bytes per site: blocks of 1 byte, states of 2. LRU order, oldest first:

    r0 [1,2,3]    10 tok  miss; holds 1 2 3 S(1,2)                 = 5 bytes
    r1 [1,2,5,6]  15 tok  hits 1,2 at S(1,2): 8 tokens. Refreshes 1 2 S(1,2), then stores 5 6 S(1,2,5):
                          3 S(1,2) 1 2 5 6 S(1,2,5) = 9 bytes; evicts 3 and S(1,2): 1 2 5 6 S(1,2,5)
    r2 [1,2,3]    12 tok  blocks 1,2 are there but S(1,2) is gone: 0 (a 6-block cache hits 8 + 3 = 11)
    """
    prompts, ids = [10, 15, 12], [[1, 2, 3], [1, 2, 5, 6], [1, 2, 3]]
    assert _replay(prompts, ids, HYBRID, capacity=6.0).cached.tolist() == [0, 8, 0]
    assert _replay(prompts, ids, HYBRID).cached.tolist() == [0, 8, 8]  # unbounded: S(1,2) stays
    assert _replay(prompts, ids, BLOCKS, capacity=6.0).cached.tolist() == [0, 8, 11]
    cache = PrefixCache(6.0, HYBRID)
    for p, i in zip(prompts[:2], ids[:2], strict=True):
        cache.lookup(i, p)
        cache.insert(i, p)
    assert len(cache) == 4 and "+ 1 states" in repr(cache)  # 1 2 5 6 and S(1,2,5): 6 bytes


# ---------------------------------------------------------------------------------------------- Mooncake
def _checkpoints(ids: list[int], prompt: int, block: int, every: int) -> list[int]:
    """The block counts a prefill of this prompt saves the state after (the preset's rule)."""
    full = min(len(ids), prompt // block)
    steps = list(range(every, full, every)) if every else []
    return [*steps, full] if full else steps


def _pairwise_hits(trace, *, every: int | None) -> list[int]:
    """Each row's hit in an unbounded cache, derived without the cache: the longest common block prefix
    with any earlier prompt (``every=None``: block-only), or, for a hybrid model, the longest one that
    ends where an earlier prompt saved its state; within prompt - 1 tokens either way."""
    b = trace.block_tokens
    rows = [(trace.hash_ids(i).tolist(), int(trace.input_tokens[i])) for i in range(len(trace))]
    hits = []
    for i, (ids, prompt) in enumerate(rows):
        best = 0
        for earlier, earlier_prompt in rows[:i]:
            common = 0
            while common < min(len(ids), len(earlier)) and ids[common] == earlier[common]:
                common += 1
            if every is None:
                best = max(best, min(common * b, prompt - 1))
                continue
            usable = [j for j in _checkpoints(earlier, earlier_prompt, b, every) if j <= common]
            best = max([best] + [j * b for j in usable if j * b <= prompt - 1])
        hits.append(best)
    return hits


@pytest.fixture(scope="module")
def mooncake():
    return read_trace(MOONCAKE_SLICE)


@pytest.fixture(scope="module")
def kimi():
    return load_model("kimi-1t-hybrid")


def _one_site(trace, shape, capacity=None):
    return replay_cache(
        trace.input_tokens, trace.hash_values, trace.hash_offsets, capacity_bytes=capacity, shape=shape
    )


def test_hybrid_hits_on_mooncake_are_the_earlier_prompt_ends(mooncake, kimi):
    """The 1T hybrid saves its state only at each prompt's last full block, so a hit must end where an
    earlier prompt ended: the pairwise derivation gives every row's hit exactly, each at most the
    block-only hit. The slice's conversations continue earlier turns in whole blocks, so 281 of 300
    rows keep their hit; 16 lose the shared first block alone (a system prompt after which no earlier
    prompt ended), two lose more blocks past an earlier prompt's end, one its repeated partial block:
    22 fewer blocks reused (676 -> 654), 11,117 fewer tokens (3.2% of the hits)."""
    shape = cache_shape(kimi, mooncake.block_tokens)
    assert shape.hybrid and shape.state_bytes == 180 * 2**20 and shape.checkpoint_every_blocks == 0
    hybrid, blocks = _one_site(mooncake, shape), _one_site(mooncake, cache_shape(kimi, 512, hybrid=False))
    assert hybrid.cached.tolist() == _pairwise_hits(mooncake, every=0)
    assert blocks.cached.tolist() == _pairwise_hits(mooncake, every=None)
    assert (hybrid.cached <= blocks.cached).all()
    assert (blocks.hit_blocks, hybrid.hit_blocks) == (676, 654)
    assert blocks.hit_tokens - hybrid.hit_tokens == 11_117
    assert hybrid.token_hit_ratio < blocks.token_hit_ratio
    # 1 TiB holds the slice's 7,814 blocks and 300 states (117 GiB): the same hits as unbounded.
    assert _one_site(mooncake, shape, 1024 * GIB).cached.tolist() == hybrid.cached.tolist()


def test_states_every_few_blocks_bound_the_loss_on_mooncake(mooncake, kimi):
    """With a state saved every k blocks as well, a hit loses less than k blocks against block-only
    wherever the earlier prompt's full blocks cover the common prefix, and never less than end-only."""
    end_only = _one_site(mooncake, cache_shape(kimi, 512))
    blocks = _one_site(mooncake, cache_shape(kimi, 512, hybrid=False))
    b = mooncake.block_tokens
    for k in (1, 4):
        shape = CacheShape(b, kimi.kv_bytes_per_token * b, kimi.state_bytes_per_seq, k)
        every = _one_site(mooncake, shape)
        assert every.cached.tolist() == _pairwise_hits(mooncake, every=k)
        assert (end_only.cached <= every.cached).all() and (every.cached <= blocks.cached).all()
        # A block-only hit that is whole blocks lies within an earlier prompt's full blocks (the
        # slice's prompts share no partial block): within k - 1 blocks of it there is a state.
        whole = blocks.cached % b == 0
        assert (blocks.cached[whole] - every.cached[whole] <= (k - 1) * b).all()
        assert end_only.hit_tokens < every.hit_tokens <= blocks.hit_tokens


# ---------------------------------------------------------------------------------------------- pure attention
def test_a_pure_attention_model_is_unchanged_on_mooncake(mooncake):
    """Qwen3-235B has no linear layers: no states, hits on any block boundary. Unbounded, the pairwise
    derivation; bounded (94 MiB blocks, so 64 GiB holds 697 of the 7,814 and evicts), the counts the
    block-only cache of main at 22e34e8 gave on this slice, one site and PrfaaS at t = 8,000."""
    shape = cache_shape(load_model("qwen3-235b"), mooncake.block_tokens)
    assert not shape.hybrid and shape == cache_shape(load_model("qwen3-235b"), 512, hybrid=False)
    unbounded = _one_site(mooncake, shape)
    assert unbounded.cached.tolist() == _pairwise_hits(mooncake, every=None)
    assert (unbounded.hit_tokens, unbounded.hit_blocks) == (345_965, 676)
    arrays = (mooncake.input_tokens, mooncake.hash_values, mooncake.hash_offsets)
    one = replay_cache(*arrays, capacity_bytes=64 * GIB, shape=shape)
    two = replay_cache(*arrays, capacity_bytes=64 * GIB, shape=shape, threshold=8000.0)
    assert (one.lookup_tokens, one.hit_tokens, one.lookup_blocks, one.hit_blocks) == (
        4_269_971,
        153_088,
        8490,
        299,
    )
    assert (two.hit_tokens, two.hit_blocks, int(two.remote.sum())) == (181_101, 354, 155)


def test_the_preset_sets_where_states_are_saved(tmp_path, kimi):
    text = (REPO / "harness" / "presets" / "models" / "kimi-1t-hybrid.toml").read_text(encoding="utf-8")
    path = tmp_path / "every4.toml"
    path.write_text(text.replace("state_checkpoint_every_blocks = 0", "state_checkpoint_every_blocks = 4"))
    shape = cache_shape(load_model(path), 512)
    assert shape.checkpoint_every_blocks == 4 and shape.state_bytes == kimi.state_bytes_per_seq
    assert shape.block_bytes == kimi.kv_bytes_per_token * 512  # 16.9 KiB/token x 512: 8.4 MiB
    path.write_text(text.replace("state_checkpoint_every_blocks = 0", "state_checkpoint_every_blocks = -1"))
    with pytest.raises(
        ScenarioError, match=r"\[linear_attention\] state_checkpoint_every_blocks: must be >= 0"
    ):
        load_model(path)


def test_a_misspelt_prefix_cache_is_one_line(tmp_path):
    text = (REPO / "workloads" / "paper-case-study.toml").read_text(encoding="utf-8")
    path = tmp_path / "bad.toml"
    path.write_text(text.replace('prfaas_cache = "local"', 'prfaas_cache = "local"\nprefix_cache = "block"'))
    res = CliRunner().invoke(main, ["plan", str(path)])
    assert res.exit_code == 2
    assert res.output.strip() == (
        f"error: {path}: [simulate] prefix_cache: must be one of hybrid, blocks, got 'block'"
    )
