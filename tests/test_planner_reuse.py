"""The planner's prefix-cache model: what each request still prefills after its site's cache
(harness/model/reuse.py), by hand on small traces, as properties, against the simulator request by
request, and through ``plan --json`` on a slice of the real Mooncake trace (tests/data)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.cli import main
from harness.model.deployment import deployment_from_scenario, with_overrides
from harness.model.planner import best_prfaas, evaluate_homogeneous, evaluate_naive, evaluate_prfaas
from harness.model.reuse import replay_cache
from harness.scenario import load_scenario
from harness.serving.cache import CacheShape, cache_shape
from harness.serving.config import prepare
from harness.serving.runner import run_topology
from harness.traces.frame import offsets_from_lists
from harness.traces.readers import read_trace

REPO = Path(__file__).resolve().parent.parent
CASE_STUDY = REPO / "workloads" / "paper-case-study.toml"
MOONCAKE_SLICE = REPO / "tests" / "data" / "mooncake_conversation_head300.jsonl"


def _replay(prompts, ids, *, capacity_blocks, block_tokens=4, **kw):
    values, offsets = offsets_from_lists(ids)
    capacity = None if capacity_blocks is None else float(capacity_blocks)  # one byte per block
    return replay_cache(
        np.asarray(prompts),
        values,
        offsets,
        capacity_bytes=capacity,
        shape=CacheShape(block_tokens=block_tokens, block_bytes=1.0),
        **kw,
    )


# ---------------------------------------------------------------------------------------------- by hand
# 4-token blocks. Worked through by hand with a 3-block LRU cache:
#   r0 [1,2]    miss                      cache 1 2
#   r1 [1,2,3]  hits 1,2 (8 tokens)       cache 1 2 3
#   r2 [4,5]    miss; 1, 2 evicted        cache 3 4 5
#   r3 [1,2,6]  1 is gone: miss           cache 1 2 6   (3, 4, 5 evicted)
#   r4 [1,2]    hits 1,2 = its whole 8-token prompt, but one token is always computed: 7 cached
#   r5 [4,7]    4 is gone: miss           cache 2 4 7   (6, 1 evicted)
#   r6 [1,2]    1 is gone: miss
HAND_PROMPTS = [8, 10, 8, 12, 8, 6, 8]
HAND_IDS = [[1, 2], [1, 2, 3], [4, 5], [1, 2, 6], [1, 2], [4, 7], [1, 2]]


def test_incremental_lengths_by_hand_with_lru_eviction():
    r = _replay(HAND_PROMPTS, HAND_IDS, capacity_blocks=3)
    assert r.uncached.tolist() == [8, 2, 8, 12, 1, 6, 8]
    assert r.cached.tolist() == [0, 8, 0, 0, 7, 0, 0]
    assert not r.remote.any()
    assert (r.lookup_tokens, r.hit_tokens) == (60, 15)
    assert (r.lookup_blocks, r.hit_blocks) == (16, 4)
    assert (r.token_hit_ratio, r.block_hit_ratio) == (0.25, 0.25)


def test_incremental_lengths_by_hand_unbounded_and_off():
    # Nothing evicted: r3 finds 1,2; r5 finds 4 (not 7); r6 finds 1,2 again.
    assert _replay(HAND_PROMPTS, HAND_IDS, capacity_blocks=None).uncached.tolist() == [8, 2, 8, 4, 1, 2, 1]
    off = _replay(HAND_PROMPTS, HAND_IDS, capacity_blocks=0)
    assert off.uncached.tolist() == HAND_PROMPTS and off.hit_tokens == 0


# PrfaaS at t = 6, unbounded caches, 4-token blocks:
#   a0 [1,2]        8 tok  local holds nothing: 8 > 6, remote; remote cache misses
#   a1 [1,2,3]     12 tok  local holds nothing: 12 > 6, remote; remote cache has 1,2: 8 cached, 4 computed
#   a2 [9]          4 tok  4 <= 6, local; miss
#   a3 [9,10,11,12] 16 tok local holds 9 (4 tok): 12 > 6, remote; the local prefix is pulled: 4 cached
#   a4 [1,2]        6 tok  the local site never saw 1,2: 6 <= 6, local; miss (one site would cache 5)
PRFAAS_PROMPTS = [8, 12, 4, 16, 6]
PRFAAS_IDS = [[1, 2], [1, 2, 3], [9], [9, 10, 11, 12], [1, 2]]


def test_prfaas_routing_by_the_local_cache_by_hand():
    r = _replay(PRFAAS_PROMPTS, PRFAAS_IDS, capacity_blocks=None, threshold=6)
    assert r.remote.tolist() == [True, True, False, True, False]
    assert r.uncached.tolist() == [8, 4, 4, 12, 6]
    assert r.cached.tolist() == [0, 8, 0, 4, 0]
    # The caches count their own hits (8 tokens, 2 blocks at the remote site), not the pulled prefix.
    assert (r.lookup_tokens, r.hit_tokens, r.lookup_blocks, r.hit_blocks) == (46, 8, 12, 2)
    one_site = _replay(PRFAAS_PROMPTS, PRFAAS_IDS, capacity_blocks=None)
    assert one_site.uncached.tolist() == [8, 4, 4, 12, 1]


def test_prfaas_routing_by_the_longest_prefix_anywhere_by_hand():
    # global: a1's prefix is at the remote site (8 tokens), so its length is 4 <= 6: local, pulling the
    # prefix; a4's 1,2 then sit in the local cache too.
    r = _replay(PRFAAS_PROMPTS, PRFAAS_IDS, capacity_blocks=None, threshold=6, global_cache=True)
    assert r.remote.tolist() == [True, False, False, True, False]
    assert r.uncached.tolist() == [8, 4, 4, 12, 1]
    assert r.cached.tolist() == [0, 8, 0, 4, 5]


# ---------------------------------------------------------------------------------------------- properties
BLOCK = 4


@st.composite
def conversations(draw):
    """Rows continuing one of a few sessions: each prompt's blocks are a prefix of its session's chain."""
    n = draw(st.integers(1, 25))
    prompts, ids = [], []
    for _ in range(n):
        session = draw(st.integers(0, 3))
        blocks = draw(st.integers(1, 6))
        ids.append([session * 100 + j for j in range(blocks)])
        prompts.append((blocks - 1) * BLOCK + draw(st.integers(1, BLOCK)))
    return prompts, ids


@settings(max_examples=60, deadline=None)
@given(conversations(), st.integers(0, 12), st.integers(0, 12))
def test_incremental_never_exceeds_raw_and_falls_with_capacity(conv, a, b):
    prompts, ids = conv
    small, large = sorted((a, b))
    raw = np.asarray(prompts)
    by_cap = [_replay(prompts, ids, capacity_blocks=c) for c in (0, small, large, None)]
    assert by_cap[0].uncached.tolist() == prompts  # cache off: raw lengths
    for r in by_cap:
        assert (r.uncached >= 1).all() and (r.uncached <= raw).all()
        assert (r.uncached + r.cached == raw).all()
    # An LRU cache is a stack algorithm: a larger one holds a superset, so every request computes less.
    for smaller, larger in itertools.pairwise(by_cap):
        assert (larger.uncached <= smaller.uncached).all()
        assert larger.hit_tokens >= smaller.hit_tokens


@settings(max_examples=60, deadline=None)
@given(conversations(), st.integers(0, 24), st.sampled_from([None, 3, 8]), st.booleans())
def test_prfaas_routes_by_the_routing_length(conv, t, capacity, global_cache):
    prompts, ids = conv
    r = _replay(prompts, ids, capacity_blocks=capacity, threshold=t, global_cache=global_cache)
    raw = np.asarray(prompts)
    assert (r.uncached + r.cached == raw).all() and (r.uncached >= 1).all()
    # Only a prompt longer than t can go remote; a local prefill computes its routing length (<= t), or
    # the one token always computed.
    assert (raw[r.remote] > t).all()
    assert (r.uncached[~r.remote] <= np.maximum(t, 1)).all()
    # t = inf and t below every length are the one-site replays (homogeneous and naive).
    none = _replay(prompts, ids, capacity_blocks=capacity, threshold=math.inf)
    every = _replay(prompts, ids, capacity_blocks=capacity, threshold=-1)
    assert every.remote.all() and not none.remote.any()
    assert every.uncached.tolist() == none.uncached.tolist()


# ---------------------------------------------------------------------------------------------- vs simulate
def _slice_scenario(tmp_path: Path, simulate: str = "") -> Path:
    """The case study with the Mooncake slice as its workload."""
    text = CASE_STUDY.read_text(encoding="utf-8")
    start, end = text.index("[workload]"), text.index("[slo]")
    text = text[:start] + f'[workload]\nkind = "trace"\ntrace = "{MOONCAKE_SLICE}"\n\n' + text[end:]
    if simulate:
        text = text.replace("cache_capacity_gib = 1024", simulate)
    path = tmp_path / "slice.toml"
    path.write_text(text, encoding="utf-8")
    return path


BLOCK_ONLY = 'prefix_cache = "blocks"'


@pytest.mark.parametrize(
    "cache",
    ["cache_capacity_gib = 1024", "cache_capacity_gib = 16", f"cache_capacity_gib = 16\n{BLOCK_ONLY}"],
)
def test_replay_matches_the_simulator_request_by_request(tmp_path, cache):
    """With requests far apart (each done before the next arrives), the simulator's site caches and
    router give every request exactly the cached prefix and route the planner's replay gives it: with
    the 1T hybrid's linear-state checkpoints (16 GiB: states evict blocks) and without them."""
    setup = prepare(load_scenario(_slice_scenario(tmp_path, cache)))
    trace = read_trace(MOONCAKE_SLICE)
    trace = trace.replace(arrival_s=np.arange(len(trace)) * 500.0)
    shape = cache_shape(setup.stack.local.model, setup.stack.block_tokens, hybrid=setup.stack.hybrid_cache)
    assert shape.hybrid == (BLOCK_ONLY not in cache)  # kimi-1t-hybrid has linear layers
    for name, topo in setup.topologies.items():
        records: list = []
        run_topology(setup.stack, topo, trace, sink=records.append)
        records.sort(key=lambda rec: rec.trace_row)
        t = {"prfaas": topo.threshold_tokens, "naive": -1.0}.get(topo.kind, math.inf)
        r = replay_cache(
            trace.input_tokens,
            trace.hash_values,
            trace.hash_offsets,
            capacity_bytes=setup.stack.cache_capacity_bytes,
            shape=shape,
            threshold=t,
        )
        assert [rec.cached_tokens for rec in records] == r.cached.tolist(), name
        assert [rec.route == "remote" for rec in records] == r.remote.tolist(), name


# ---------------------------------------------------------------------------------------------- plan --json
def _leading_hits(trace, *, hybrid: bool) -> tuple[float, float]:
    """Token and block hit ratios of an unbounded cache, counted with plain sets (no LRU needed).
    ``hybrid``: a hit also ends where an earlier prompt's last full block ended (its saved state)."""
    seen: set[int] = set()
    ends: set[tuple[int, ...]] = set()
    b = trace.block_tokens
    hit_tok = hit_blk = 0
    for i in range(len(trace)):
        ids, prompt = trace.hash_ids(i).tolist(), int(trace.input_tokens[i])
        lead = next((k for k, h in enumerate(ids) if h not in seen), len(ids))
        if hybrid:
            lead = min(lead, (prompt - 1) // b)
            while lead and tuple(ids[:lead]) not in ends:
                lead -= 1
        hit_tok += min(lead * b, prompt - 1)
        hit_blk += lead
        seen.update(ids)
        ends.add(tuple(ids[: min(len(ids), prompt // b)]))
    return hit_tok / trace.input_tokens.sum(), hit_blk / len(trace.hash_values)


@pytest.mark.parametrize("semantics", ["hybrid", "blocks"])
def test_plan_json_reports_the_incremental_distribution_and_its_reuse(tmp_path, semantics):
    hybrid = semantics == "hybrid"
    path = _slice_scenario(tmp_path, "cache_capacity_gib = 1024" + ("" if hybrid else f"\n{BLOCK_ONLY}"))
    res = CliRunner().invoke(main, ["plan", str(path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    pl = out["workload"]["prefill_lengths"]
    trace = read_trace(MOONCAKE_SLICE)
    # The slice's 7,814 distinct blocks (8.4 MiB each) and 300 states (180 MiB) fit 1 TiB: nothing evicted.
    tokens, blocks = _leading_hits(trace, hybrid=hybrid)
    assert pl["distribution"] == "incremental" and pl["cache_capacity_gib"] == 1024
    assert pl["prefix_cache"] == semantics and pl["state_bytes"] == (180 * 2**20 if hybrid else 0)
    assert pl["token_hit_ratio"] == pytest.approx(tokens) and pl["block_hit_ratio"] == pytest.approx(blocks)
    assert 0.05 < blocks < 0.09
    assert pl["mean_uncached_tokens"] == pytest.approx(trace.input_tokens.mean() * (1 - tokens))
    assert pl["mean_input_tokens"] == pytest.approx(trace.input_tokens.mean())
    assert out["workload"]["context"] == {
        "policy": "refuse",
        "context_tokens": 131072,
        "requests": 300,
        "rows": 0,
        "longest_tokens": 0,
    }
    tops = out["topologies"]
    for name in ("homogeneous", "naive"):  # one site sees every request
        assert tops[name]["token_hit_ratio"] == pytest.approx(tokens)
        assert tops[name]["block_hit_ratio"] == pytest.approx(blocks)
    # PrfaaS splits the prompts between two caches, so it can only find less.
    assert 0 <= tops["prfaas"]["block_hit_ratio"] <= blocks
    text = CliRunner().invoke(main, ["plan", str(path)]).output
    assert (
        "prefill lengths: incremental, after a 1,024 GiB" in text and "cache hits (tokens / blocks)" in text
    )
    assert ("hybrid model: a hit ends where a prefill saved its linear state" in text) == hybrid


def test_plan_with_the_cache_off_uses_raw_lengths(tmp_path):
    path = _slice_scenario(tmp_path, "cache_capacity_gib = 0")
    deployment = deployment_from_scenario(load_scenario(path))
    pl = deployment.describe_workload()["prefill_lengths"]
    trace = read_trace(MOONCAKE_SLICE)
    assert pl["distribution"] == "raw" and pl["token_hit_ratio"] == 0
    assert pl["mean_uncached_tokens"] == pytest.approx(trace.input_tokens.mean())
    # Priced as the simulator pays: the mean prefill time over the trace's requests.
    whole = deployment.context().prefills.whole()
    cost = deployment.local_cost
    mean_t = np.mean([cost.prefill_time_s(int(n)) for n in trace.input_tokens])
    assert whole.prefill_time_s(cost) == pytest.approx(mean_t, rel=1e-12)


def test_the_cache_raises_every_prefill_pool_on_a_reused_trace(tmp_path):
    """The same rows planned with and without their reuse: a prefill instance serves more requests."""
    with_cache = deployment_from_scenario(load_scenario(_slice_scenario(tmp_path)))
    (tmp_path / "off").mkdir()
    off = _slice_scenario(tmp_path / "off", "cache_capacity_gib = 0")
    without = deployment_from_scenario(load_scenario(off))
    a, b = with_cache.context(), without.context()
    assert evaluate_homogeneous(a, 9, 3).theta_pd_p > evaluate_homogeneous(b, 9, 3).theta_pd_p
    assert evaluate_naive(a, 4, 8).theta_prfaas > evaluate_naive(b, 4, 8).theta_prfaas
    # The decode side sees whole prompts either way (the cache saves prefill, not KV).
    assert a.bs_max == b.bs_max and a.decode_context_tokens == b.decode_context_tokens


@pytest.mark.parametrize("gbps", [1.0, 4.0, 100.0])
def test_threshold_search_on_a_trace_beats_a_dense_exact_scan(tmp_path, gbps):
    """The PrfaaS search (a grid of replays, refined on interpolated estimates, winner replayed) finds
    what replaying every threshold of a dense grid finds, link-bound or not, to 1%: on 300 requests a
    single request more or less offloaded moves Λ_max by about 0.5%, a step the estimates can miss."""
    deployment = with_overrides(
        deployment_from_scenario(load_scenario(_slice_scenario(tmp_path))), bandwidth_gbps=gbps
    )
    ctx = deployment.context()
    found = best_prfaas(ctx, 8, 4)
    top = int(deployment.workload.trace.input_tokens.max())
    scan = max(
        (
            evaluate_prfaas(ctx, 4, k, 8 - k, float(t))
            for t in range(0, top + 1, top // 150)
            for k in range(8)
        ),
        key=lambda r: r.lambda_max,
    )
    assert found.lambda_max >= scan.lambda_max * 0.99
    # And what it reports is exact at its threshold, not an estimate.
    again = evaluate_prfaas(ctx, 4, found.n_p, found.n_d, found.threshold_tokens)
    assert again.lambda_max == found.lambda_max and again.block_hit_ratio == found.block_hit_ratio
