"""Real KV transfers over loopback TCP: byte accounting, layer pacing, multiplexing and failures."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest

from harness.emulation.clock import ScaledTimeLoop, run_scaled
from harness.emulation.kvlink import (
    KvReceiver,
    KvSender,
    KvTransferAborted,
    chunk_sizes,
    layer_ready_times,
    new_transfer_id,
)


def test_chunks_and_layer_times_partition_the_transfer():
    assert chunk_sizes(10, 3) == [3, 3, 4]
    assert sum(chunk_sizes(1_000_003, 8)) == 1_000_003
    times = layer_ready_times(2.0, 4.0, 4)
    assert times == [3.0, 4.0, 5.0, 6.0]  # layer i done after (i+1)/4 of a 4 s prefill starting at 2 s


async def _pair(connections: int = 1):
    rx = KvReceiver()
    addr = await rx.start("127.0.0.1", 0)
    return rx, KvSender(connections=connections), addr


@pytest.mark.parametrize("connections", [1, 3])
def test_bytes_arrive_exactly_and_both_ends_agree(connections):
    async def main():
        rx, tx, addr = await _pair(connections)
        try:
            tid = new_transfer_id()
            nbytes = 3_000_001
            obs = await tx.send(tid, addr, nbytes, ready_times_s=[0.0] * 4)
            got = await rx.wait(tid)  # claimed after arrival
            return obs, got, tx.bytes_sent, rx.bytes_received
        finally:
            await tx.close()
            await rx.close()

    obs, got, sent, received = asyncio.run(main())
    assert obs == got
    assert obs.nbytes == sent == received == 3_000_001
    assert obs.last_byte_s >= obs.first_byte_s


def test_layers_never_leave_before_their_prefill_share_is_done():
    async def main():
        rx, tx, addr = await _pair()
        loop = asyncio.get_running_loop()
        try:
            tid = new_transfer_id()
            waiter = asyncio.create_task(rx.wait(tid))  # waiting before any byte exists
            ready = layer_ready_times(loop.time() + 0.05, 0.2, 4)
            obs = await tx.send(tid, addr, 400_000, ready_times_s=ready)
            return ready, obs, await waiter
        finally:
            await tx.close()
            await rx.close()

    ready, obs, waited = asyncio.run(main())
    assert waited == obs
    assert obs.first_byte_s >= ready[0]
    assert obs.last_byte_s >= ready[-1]


def test_concurrent_transfers_are_demultiplexed():
    sizes = [1, 70_000, 1_000_000, 2_500_000, 123_457]

    async def main():
        rx, tx, addr = await _pair(connections=2)
        try:
            ids = [new_transfer_id() for _ in sizes]
            results = await asyncio.gather(*(tx.send(t, addr, n) for t, n in zip(ids, sizes, strict=True)))
            claimed = [await rx.wait(t) for t in ids]
            return ids, results, claimed, rx.bytes_received, rx.transfers_received
        finally:
            await tx.close()
            await rx.close()

    ids, results, claimed, received, count = asyncio.run(main())
    assert [r.transfer_id for r in results] == ids
    assert [r.nbytes for r in claimed] == sizes
    assert received == sum(sizes) and count == len(sizes)


def test_receiver_gone_mid_transfer_fails_the_sender_instead_of_hanging():
    async def main():
        rx, tx, addr = await _pair()
        loop = asyncio.get_running_loop()
        tid = new_transfer_id()
        # The second half is released 0.3 s later; the receiver is closed in between.
        task = asyncio.create_task(tx.send(tid, addr, 2_000_000, ready_times_s=[0.0, loop.time() + 0.3]))
        await asyncio.sleep(0.1)
        await rx.close()
        try:
            with pytest.raises(ConnectionError):
                await asyncio.wait_for(task, 5)
        finally:
            await tx.close()

    asyncio.run(main())


def test_wait_times_out_for_an_unknown_transfer():
    async def main():
        rx = KvReceiver()
        await rx.start("127.0.0.1", 0)
        try:
            with pytest.raises(TimeoutError):
                await rx.wait(new_transfer_id(), timeout_s=0.05)
        finally:
            await rx.close()

    asyncio.run(main())


def test_scaled_loop_runs_sleeps_faster_by_the_speedup():
    async def main():
        loop = asyncio.get_running_loop()
        assert isinstance(loop, ScaledTimeLoop)
        t0, w0 = loop.time(), time.monotonic()
        await asyncio.sleep(2.0)  # 2 loop seconds = 20 ms of wall time at 100x
        return loop.time() - t0, time.monotonic() - w0

    loop_dt, wall_dt = run_scaled(main(), speedup=100.0)
    assert loop_dt >= 2.0
    assert wall_dt >= 2.0 / 100.0


def _frame(tid: str, total: int, n: int) -> bytes:
    """One data frame in the documented wire format: magic, id, total bytes, payload length, payload."""
    return struct.pack("!4s16sQI", b"KVF1", bytes.fromhex(tid), total, n) + bytes(n)


def test_a_pool_that_cannot_be_filled_closes_the_connections_it_opened():
    # A listener with a backlog of 0 that never accepts: the kernel completes one handshake (it waits
    # in the accept queue) and drops the SYNs of the next, so the 2nd connection of a pool of 3 fails.
    async def main():
        loop = asyncio.get_running_loop()
        with socket.socket() as lsn:
            lsn.bind(("127.0.0.1", 0))
            lsn.listen(0)
            lsn.setblocking(False)
            tx = KvSender(connections=3, connect_timeout_s=0.3)
            try:
                with pytest.raises(ConnectionError, match=r"KV connection to 127\.0\.0\.1"):
                    await tx.send(new_transfer_id(), lsn.getsockname()[:2], 1000)
                conn, _ = await loop.sock_accept(lsn)  # the one connection that did open ...
                with conn:
                    # ... is closed by the sender: EOF at once (it used to stay open, with its task)
                    return await asyncio.wait_for(loop.sock_recv(conn, 16), 5)
            finally:
                await tx.close()

    assert asyncio.run(main()) == b""


def test_a_transfer_whose_connection_ends_is_dropped_and_its_waiters_fail():
    total, n = 1_000_000, 65_536

    async def main():
        rx = KvReceiver()
        addr = await rx.start("127.0.0.1", 0)
        tid = new_transfer_id()
        try:
            waiter = asyncio.create_task(rx.wait(tid))
            _, first = await asyncio.open_connection(*addr)
            _, second = await asyncio.open_connection(*addr)  # multi-connection: frames on both
            for w in (first, second):
                w.write(_frame(tid, total, n))
                await w.drain()
            while rx.bytes_received < 2 * n:
                await asyncio.sleep(0.01)
            pending_before = rx.bytes_pending
            first.close()  # the sender side of one connection goes away mid-transfer
            with pytest.raises(KvTransferAborted):
                await asyncio.wait_for(waiter, 5)
            # A late frame of the same transfer on the surviving connection must not bring it back.
            second.write(_frame(tid, total, n))
            await second.drain()
            while rx.bytes_received < 3 * n:
                await asyncio.sleep(0.01)
            second.close()
            return pending_before, rx.bytes_pending, rx.in_flight
        finally:
            await rx.close()

    pending_before, pending_after, in_flight = asyncio.run(main())
    assert pending_before == total - 2 * n
    assert (pending_after, in_flight) == (0, 0)


def test_waiting_for_a_transfer_that_was_already_aborted_fails_at_once():
    async def main():
        rx = KvReceiver()
        addr = await rx.start("127.0.0.1", 0)
        tid = new_transfer_id()
        try:
            _, w = await asyncio.open_connection(*addr)
            w.write(_frame(tid, 10 * 65_536, 65_536))
            await w.drain()
            while rx.in_flight == 0:
                await asyncio.sleep(0.01)
            w.close()
            while rx.in_flight:
                await asyncio.sleep(0.01)
            with pytest.raises(KvTransferAborted):
                await rx.wait(tid, timeout_s=5)  # no waiter existed when it ended: still no hang
        finally:
            await rx.close()

    asyncio.run(main())
