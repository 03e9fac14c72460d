"""The client's loop watchdog tells a loop held by code from one blocked in a system call, and says where."""

from __future__ import annotations

import asyncio
import time

import pytest

from harness.loadgen.stalls import KEEP, STALL_S, merge, watched


async def _watch(hold) -> dict:
    with watched(time.monotonic()) as watch:
        await asyncio.sleep(0.1)  # a few healthy beats first
        hold()
        await asyncio.sleep(0.1)
    return watch.summary()


def _sleep_on_the_loop() -> None:
    time.sleep(0.3)  # a blocking call: no CPU used


def _spin_on_the_loop() -> None:
    start = time.thread_time()
    while time.thread_time() - start < 0.3:  # 0.3 s of this thread's CPU, however long that takes
        pass


def _the(summary: dict) -> dict:
    (stall,) = [s for s in summary["worst"] if s["length_s"] >= 0.3]  # others: a busy machine's
    return stall


def test_a_blocking_call_on_the_loop_is_a_stall_that_did_not_run_and_names_the_call():
    summary = asyncio.run(_watch(_sleep_on_the_loop))
    stall = _the(summary)
    assert "_sleep_on_the_loop" in stall["where"]
    # Sleeping uses no CPU: of >= 0.3 s, the thread ran only the heartbeat's microseconds.
    assert stall["ran_s"] < 0.1 and stall["length_s"] - stall["ran_s"] - stall["waited_s"] > 0.15
    assert summary["count"] >= 1 and summary["stalled_s"] >= stall["length_s"]


def test_code_holding_the_loop_is_a_stall_that_ran_for_the_cpu_it_used():
    stall = _the(asyncio.run(_watch(_spin_on_the_loop)))
    assert "_spin_on_the_loop" in stall["where"]
    assert stall["ran_s"] >= 0.28  # the 0.3 s of CPU it spun (schedstat and thread_time agree)


def test_merging_workers_adds_their_stalls_and_keeps_the_longest():
    def stall(length: float, ran: float | None) -> dict:
        return {"start_s": 1.0, "length_s": length, "where": "w", "ran_s": ran, "waited_s": ran and 0.01}

    def part(*stalls: dict) -> dict:
        return {
            "threshold_s": STALL_S, "count": len(stalls), "stalled_s": sum(s["length_s"] for s in stalls),
            "max_s": max(s["length_s"] for s in stalls), "ran_s": None, "waited_s": None,
            "blocked_s": None, "worst": list(stalls),
        }  # fmt: skip

    a = part(*(stall(0.1 * k, 0.05) for k in range(1, 5)))
    a.update(ran_s=0.2, waited_s=0.04, blocked_s=1.0 - 0.24)
    b = part(stall(0.9, None), stall(0.06, None))  # a kernel without schedstats: no split
    a["processes"] = b["processes"] = 1
    m = merge([a, b])
    assert (
        m["processes"] == 2
        and m["count"] == 6
        and m["stalled_s"] == pytest.approx(1.0 + 0.96)
        and m["max_s"] == 0.9
    )
    assert (m["ran_s"], m["waited_s"], m["blocked_s"]) == (0.2, 0.04, pytest.approx(0.76))
    assert [w["length_s"] for w in m["worst"]] == pytest.approx([0.9, 0.4, 0.3, 0.2, 0.1][:KEEP])
