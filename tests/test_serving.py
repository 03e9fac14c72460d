"""The serving stack's parts against hand-computed values: virtual clock, fluid link, prefix cache, decode."""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace

import numpy as np
import pytest

from harness.model.cost import InstanceCost
from harness.model.presets import load_hardware, load_model
from harness.serving import (
    CacheShape,
    DecodeInstance,
    FluidLink,
    PrefillInstance,
    PrefixCache,
    VirtualTimeDeadlock,
    VirtualTimeLoop,
    run_virtual,
)

GB = 1e9  # bytes; a 8 Gbps link moves 1e9 B/s


@pytest.fixture(scope="module")
def h20() -> InstanceCost:
    return InstanceCost(load_model("kimi-1t-hybrid"), load_hardware("H20"))


# ---------------------------------------------------------------------------------------------- clock
def test_virtual_loop_jumps_to_timers_in_order():
    order = []

    async def main():
        loop = asyncio.get_running_loop()
        loop.call_at(7200.0, order.append, "b")
        loop.call_at(3600.0, order.append, "a")
        ev = asyncio.Event()
        loop.call_later(10_000.0, ev.set)
        await ev.wait()
        await asyncio.sleep(0.25)
        return loop.time()

    assert run_virtual(main()) == 10_000.25
    assert order == ["a", "b"]


def test_virtual_loop_reports_deadlock():
    async def main():
        await asyncio.Event().wait()  # nobody will ever set it

    with pytest.raises(VirtualTimeDeadlock):
        run_virtual(main())


# ---------------------------------------------------------------------------------------------- link
def _transfers(link: FluidLink, plan: list[tuple[float, int, float]]) -> list[tuple[float, float]]:
    """Start transfers (start time, bytes, prefill duration from that start) and return their (start, end)."""

    async def one(at: float, nbytes: int, duration: float):
        await asyncio.sleep(at)
        return await link.send(nbytes, at, duration)

    async def main():
        return await asyncio.gather(*(one(*p) for p in plan))

    return run_virtual(main())


def test_link_shares_bandwidth_fairly_and_adds_delay():
    link = FluidLink("x", 8, delay_ms=10)  # 1e9 B/s
    # A alone for 0.5 s (0.5 GB), then both at 0.5 GB/s: A ends at 1.5 s; B then alone, ends at 2.0 s.
    (a0, a1), (b0, b1) = _transfers(link, [(0.0, int(GB), 0.0), (0.5, int(GB), 0.0)])
    assert (a0, b0) == (0.0, 0.5)
    assert a1 == pytest.approx(1.5 + 0.010, abs=1e-9)
    assert b1 == pytest.approx(2.0 + 0.010, abs=1e-9)
    assert link.bytes_total == 2 * int(GB) and link.transfers == 2


def test_pipelined_transfer_follows_production_and_exposes_only_the_tail():
    # 1 GB produced over 2 s on a 1 GB/s link: capped at 0.5 GB/s, the last byte leaves as prefill ends.
    ((_, end),) = _transfers(FluidLink("fast", 8, delay_ms=5), [(0.0, int(GB), 2.0)])
    assert end == pytest.approx(2.0 + 0.005, abs=1e-9)
    # On a 0.25 GB/s link it falls behind production: 4 s in all, 2 s exposed after the prefill.
    ((_, end),) = _transfers(FluidLink("slow", 2, delay_ms=5), [(0.0, int(GB), 2.0)])
    assert end == pytest.approx(4.0 + 0.005, abs=1e-9)


def test_backlogged_transfer_catches_up_then_follows_production():
    # A: 1.2 GB over 2 s (0.6 GB/s); B: 0.2 GB ready. Fair shares 0.5/0.5 until B ends at 0.4 s; A is then
    # 0.04 GB behind, runs at 1 GB/s and catches up at 0.5 s, then follows production to 2.0 s.
    (_, a1), (_, b1) = _transfers(FluidLink("x", 8), [(0.0, int(1.2 * GB), 2.0), (0.0, int(0.2 * GB), 0.0)])
    assert b1 == pytest.approx(0.4, abs=1e-9)
    assert a1 == pytest.approx(2.0, abs=1e-9)


def test_backlog_left_at_prefill_end_drains_at_full_rate():
    # A: 1.6 GB over 2 s (0.8 GB/s); B: 0.5 GB ready. 0.5/0.5 until B ends at 1.0 s (A sent 0.5 GB);
    # A alone at 1 GB/s sends 1.0 GB by 2.0 s, 0.1 GB left: ends at 2.1 s.
    (_, a1), (_, b1) = _transfers(FluidLink("x", 8), [(0.0, int(1.6 * GB), 2.0), (0.0, int(0.5 * GB), 0.0)])
    assert b1 == pytest.approx(1.0, abs=1e-9)
    assert a1 == pytest.approx(2.1, abs=1e-9)


# ---------------------------------------------------------------------------------------------- cache
def test_prefix_cache_counts_leading_blocks_and_evicts_lru():
    cache = PrefixCache(3 * 10, CacheShape(block_tokens=4, block_bytes=10))
    cache.insert([1, 2, 3], 12)
    assert cache.peek([1, 2, 9], 12) == 8  # two leading blocks
    assert cache.peek([9, 2, 3], 12) == 0  # a prefix must start at the first block
    assert cache.lookup([1, 2, 3], 12) == 11  # all cached, but one token is always computed
    cache.lookup([2], 4)  # refresh 2: least recently used first, the order is now 1, 3, 2
    cache.insert([7], 4)  # evicts the least recently used block
    assert len(cache) == 3
    assert cache.peek([1], 4) == 0 and cache.peek([2], 4) == 4 and cache.peek([3], 4) == 4
    assert (cache.hit_blocks, cache.lookup_blocks) == (4, 4)


def test_prefix_cache_of_zero_capacity_never_hits():
    cache = PrefixCache(0, CacheShape(block_tokens=4, block_bytes=10))
    cache.insert([1, 2], 8)
    assert cache.lookup([1, 2], 8) == 0


# ---------------------------------------------------------------------------------------------- prefill
def test_prefill_is_fifo_and_skips_cached_tokens(h20):
    cache = PrefixCache(None, CacheShape(block_tokens=512, block_bytes=10))
    inst = PrefillInstance("p0", h20, cache)

    async def main():
        a = asyncio.ensure_future(inst.prefill(2048, [1, 2, 3, 4]))
        b = asyncio.ensure_future(inst.prefill(2048, [1, 2, 3, 4]))
        return await a, await b

    a, b = run_virtual(main())
    t_full = h20.prefill_time_s(2048)
    assert (a.start_s, a.end_s, a.cached_tokens) == (0.0, t_full, 0)
    assert b.start_s == a.end_s and b.cached_tokens == 2047  # a's blocks are in the cache now
    assert b.end_s == pytest.approx(t_full + h20.prefill_time_s(1, 2047), abs=1e-12)


# ---------------------------------------------------------------------------------------------- decode
def test_decode_token_times_follow_the_step_cost(h20):
    async def main():
        d = DecodeInstance("d0", h20, batch_max=4)
        return await d.submit(1000, 3).wait()

    times = run_virtual(main())
    s = [h20.decode_step_s(1, 1000 + k) for k in range(3)]
    assert times.tolist() == pytest.approx(np.cumsum(s).tolist(), abs=1e-12)


def test_decode_batch_limit_and_admission_at_step_boundaries(h20):
    async def main():
        d = DecodeInstance("d0", h20, batch_max=2)
        a, b = d.submit(100, 5), d.submit(100, 2)
        await asyncio.sleep(1e-4)  # mid-step: c must wait for b's slot, freed at the end of step 2
        c = d.submit(100, 2)
        ta, tb, tc = await a.wait(), await b.wait(), await c.wait()
        return ta, tb, tc, c.admitted_s

    ta, tb, tc, c_admitted = run_virtual(main())
    assert c_admitted == tb[-1]  # admitted exactly when b's last step ended
    assert tc[0] == pytest.approx(tb[-1] + h20.decode_step_s(2, 100 + 2 + 100), abs=1e-12)
    assert ta[2] == tc[0]  # a and c step together


def test_decode_refuses_a_sequence_larger_than_memory(h20):
    async def main():
        d = DecodeInstance("d0", h20, batch_max=2, kv_capacity_bytes=h20.kv_bytes(1000))
        with pytest.raises(Exception, match="exceeds capacity"):
            await d.submit(2000, 10).wait()
        return await d.submit(990, 10).wait()

    assert len(run_virtual(main())) == 10


def test_memory_admission_waits_for_room(h20):
    async def main():
        d = DecodeInstance("d0", h20, batch_max=8, kv_capacity_bytes=h20.kv_bytes(1000 + 4) + 10)
        a, b = d.submit(1000, 4), d.submit(1000, 4)  # only one fits at a time
        ta, tb = await a.wait(), await b.wait()
        return ta, tb, b.admitted_s

    ta, tb, b_admitted = run_virtual(main())
    assert b_admitted == ta[-1] and tb[0] > ta[-1]


def test_token_stream_yields_every_step_in_streaming_mode(h20):
    async def main():
        d = DecodeInstance("d0", h20, batch_max=4, max_segment_steps=1)
        stream = d.submit(500, 6)
        chunks = [c async for c in stream]
        return chunks, await stream.wait()

    chunks, times = run_virtual(main())
    assert [len(c) for c in chunks] == [1] * 6
    assert np.concatenate(chunks).tolist() == times.tolist()
    assert math.isfinite(times[-1])


def test_prefill_batching_shares_the_fixed_overhead(h20):
    inst = PrefillInstance("p0", h20, None, max_batch_tokens=2500)

    async def main():
        jobs = [asyncio.ensure_future(inst.prefill(1000, [])) for _ in range(5)]
        return [await j for j in jobs]

    a, b, c, d, e = run_virtual(main())
    t, overhead = h20.prefill_time_s(1000), h20.hardware.calibration.prefill_overhead_s
    pair = 2 * t - overhead  # two prefills, one fixed overhead
    # All five are queued when the instance starts; batches of at most 2,500 tokens: [a b] [c d] [e].
    assert (a.start_s, b.start_s, a.end_s, b.end_s) == (0.0, 0.0, pair, pair)
    assert (c.start_s, d.start_s) == (pair, pair) and c.end_s == d.end_s == pytest.approx(2 * pair, abs=1e-12)
    assert (e.start_s, e.end_s) == (c.end_s, pytest.approx(c.end_s + t, abs=1e-12))


def test_the_frontend_delays_each_request_but_keeps_no_other_waiting(h20):
    """With ``frontend_s`` f, three prompts of 1,000 tokens that arrive together reach the queue at f
    and run one after another: they end at f + T, f + 2T, f + 3T (T the prefill's own time). Were the
    frontend engine time, as ``prefill_overhead_s`` is, they would end at k(f + T). An engine's frontend
    works beside the model, so its queue shows no wait for it (``enqueued_s`` = f)."""
    f = 0.25
    cal = replace(h20.hardware.calibration, frontend_s=f)
    cost = replace(h20, hardware=replace(h20.hardware, calibration=cal))
    inst = PrefillInstance("p0", cost, None)

    async def main(prompts):
        jobs = [asyncio.ensure_future(inst.prefill(n, [])) for n in prompts]
        return [await j for j in jobs]

    t = h20.prefill_time_s(1000)
    done = run_virtual(main([1000] * 3))
    assert [p.enqueued_s for p in done] == [f, f, f]
    assert [p.end_s for p in done] == pytest.approx([f + t, f + 2 * t, f + 3 * t], abs=1e-12)
    # What an engine reports of them: queued 0, T and 2T; prefilling T each.
    assert inst.queue_s_total == pytest.approx(3 * t, abs=1e-12)
    assert inst.prefill_s_total == pytest.approx(3 * t, abs=1e-12)
    # First come, first served through the frontend too, whatever their lengths.
    mixed = run_virtual(main([3000, 200, 1500, 800, 5000, 100]))
    assert [p.start_s for p in mixed] == sorted(p.start_s for p in mixed)
    assert mixed[0].start_s == f


class _BusyClockLoop(VirtualTimeLoop):
    """A clock that moves while code runs, as a real one does: every reading is 1 ms later."""

    def time(self) -> float:
        self._now += 1e-3
        return self._now


def test_decode_survives_a_clock_that_moves_between_wake_up_and_replanning(h20):
    # On serve's real clock a sequence arriving mid-step wakes the step loop, and by the time it
    # re-plans the last planned step may already have ended; every sequence must still finish.
    async def main():
        d = DecodeInstance("d0", h20, batch_max=8, max_segment_steps=1)
        streams = []
        for i in range(40):
            streams.append(d.submit(1000 + i, 20))
            await asyncio.sleep(0.003 * (i % 5))
        return [len(await s.wait()) for s in streams]

    loop = _BusyClockLoop()
    try:
        assert loop.run_until_complete(main()) == [20] * 40
    finally:
        loop.close()


class _LateTimerLoop(VirtualTimeLoop):
    """Every timer fires ``late`` seconds after its deadline, as on a real loop busy with other work."""

    def __init__(self, late: float) -> None:
        super().__init__()
        jump = self._selector.select

        def select(timeout=None):
            before = self._now
            events = jump(timeout)
            if self._now > before:
                self._now += late
            return events

        self._selector.select = select


def test_prefills_queued_back_to_back_keep_their_planned_times_when_the_loop_wakes_late(h20):
    # Three prompts queued at 0 on a loop whose every wake-up is 50 ms late. Each batch starts
    # where the one before it ended on the plan, so the lag delays no start and does not add up:
    # the third ends at exactly 3 prefill times, not 3 prefill times + 2 x 50 ms.
    inst = PrefillInstance("p0", h20, None)

    async def main():
        return await asyncio.gather(*(inst.prefill(2048, [i]) for i in range(3)))

    loop = _LateTimerLoop(late=0.05)
    try:
        times = loop.run_until_complete(main())
    finally:
        loop.close()
    t = h20.prefill_time_s(2048)
    assert [p.start_s for p in times] == pytest.approx([0.0, t, 2 * t], abs=1e-12)
    assert [p.end_s for p in times] == pytest.approx([t, 2 * t, 3 * t], abs=1e-12)


def test_a_failing_decode_loop_fails_its_sequences_instead_of_hanging(h20):
    class BrokenCost:  # a fault that cannot be caused for real: the cost model raising mid-run
        def __getattr__(self, name):
            return getattr(h20, name)

        def decode_step_s(self, batch, contexts):
            raise RuntimeError("cost model failed")

    async def main():
        d = DecodeInstance("d0", BrokenCost(), batch_max=4, kv_capacity_bytes=h20.kv_capacity_bytes())
        with pytest.raises(RuntimeError, match="cost model failed"):
            await d.submit(100, 5).wait()

    run_virtual(main())
