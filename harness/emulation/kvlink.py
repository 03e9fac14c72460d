"""KV transfers that really cross the link: a sender in the prefilling site, a receiver in the decoding site.

Wire format (TCP, big-endian), many transfers multiplexed over a few persistent connections::

    data frame   b"KVF1" | transfer id (16 B) | total bytes (u64) | payload length (u32) | payload
    ack frame    b"KVA1" | transfer id (16 B) | first byte time (f64) | last byte time (f64)

The receiver timestamps a transfer's first and last byte on its own clock (``loop.time()``, which is
CLOCK_MONOTONIC and so shared by every process on the machine) and sends an ack on the connection
that carried the last byte; the sender's ``send`` returns those observed times. A transfer is cut
into ``layers`` chunks that leave as the matching share of prefill finishes (layer-wise pipelining);
frames of 64 KiB from concurrent transfers interleave, and with several connections a transfer's
frames are spread over all of them (multi-connection mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_DATA = struct.Struct("!4s16sQI")
_ACK = struct.Struct("!4s16sdd")
_DATA_MAGIC, _ACK_MAGIC = b"KVF1", b"KVA1"
FRAME_BYTES = 64 * 1024
_ZEROS = memoryview(bytes(FRAME_BYTES))
_KEEP_UNCLAIMED_S = 600.0  # a finished transfer nobody asked for is forgotten after this
CONNECT_TIMEOUT_S = 10.0  # a KV connection not up by then fails the transfer (and its pool)


class KvTransferAborted(ConnectionError):
    """A transfer whose bytes were on a connection that ended before its last byte arrived."""


@dataclass(frozen=True, slots=True)
class TransferObs:
    """One transfer as the receiver saw it; times are ``loop.time()`` (CLOCK_MONOTONIC) seconds."""

    transfer_id: str
    nbytes: int
    first_byte_s: float
    last_byte_s: float


def new_transfer_id() -> str:
    return uuid.uuid4().hex


def chunk_sizes(nbytes: int, layers: int) -> list[int]:
    """Split ``nbytes`` into ``layers`` near-equal chunks (the last takes the remainder)."""
    base = nbytes // layers
    return [base] * (layers - 1) + [nbytes - base * (layers - 1)]


def layer_ready_times(prefill_start_s: float, prefill_duration_s: float, layers: int) -> list[float]:
    """When each layer's KV exists: layer i is done after (i+1)/layers of the prefill."""
    return [prefill_start_s + prefill_duration_s * (i + 1) / layers for i in range(layers)]


class KvReceiver:
    """Accepts KV frames from any sender and resolves ``wait(transfer_id)`` when the last byte lands."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._progress: dict[str, list[float]] = {}  # id -> [received, total, first_byte_s]
        # Finished (or aborted) transfers nobody has claimed yet, with when they ended.
        self._done: OrderedDict[str, tuple[TransferObs | KvTransferAborted, float]] = OrderedDict()
        self._waiters: dict[str, asyncio.Future[TransferObs]] = {}
        self._carried: dict[asyncio.StreamWriter, set[str]] = {}  # connection -> unfinished ids it carried
        self._tasks: set[asyncio.Task] = set()
        self.bytes_received = 0
        self.transfers_received = 0
        self.on_bytes: Callable[[float, int], None] | None = None  # told of each frame: (loop time, bytes)

    async def start(
        self, host: str | None = None, port: int = 0, *, sock: socket.socket | None = None
    ) -> tuple[str, int]:
        """Listen on ``host:port`` (port 0 picks one) or on a bound ``sock``; returns the address."""
        where: dict = {"sock": sock} if sock is not None else {"host": host, "port": port}
        self._server = await asyncio.start_server(self._serve, limit=4 * FRAME_BYTES, **where)
        return self._server.sockets[0].getsockname()[:2]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._carried):
                w.close()
            # Let each connection's task see its reader end and return (no cancelled tasks left).
            await asyncio.wait(list(self._tasks), timeout=2.0) if self._tasks else None
            await self._server.wait_closed()
        for fut in self._waiters.values():
            if not fut.done():
                fut.cancel()

    @property
    def in_flight(self) -> int:
        return len(self._progress)

    @property
    def bytes_pending(self) -> int:
        """Bytes of transfers in progress that have not arrived yet (an aborted one no longer counts)."""
        return int(sum(total - got for got, total, _ in self._progress.values()))

    async def wait(self, transfer_id: str, timeout_s: float | None = None) -> TransferObs:
        """The transfer's observation, waiting for its last byte if it has not arrived yet. Raises
        ``KvTransferAborted`` when a connection that carried it ended first."""
        done = self._done.pop(transfer_id, None)
        if done is not None:
            if isinstance(done[0], KvTransferAborted):
                raise done[0]
            return done[0]
        fut = self._waiters.get(transfer_id)
        if fut is None:
            fut = self._waiters[transfer_id] = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout_s)
        finally:
            if fut.done() or timeout_s is not None:
                self._waiters.pop(transfer_id, None)

    def _finish(self, obs: TransferObs) -> None:
        self.transfers_received += 1
        for carried in self._carried.values():
            carried.discard(obs.transfer_id)
        self._settle(obs.transfer_id, obs)

    def _abort(self, transfer_id: str) -> None:
        """Forget a transfer that can no longer complete, and fail whoever waits (or will wait) for it."""
        del self._progress[transfer_id]
        self._settle(transfer_id, KvTransferAborted(f"KV transfer {transfer_id}: its connection closed"))

    def _settle(self, transfer_id: str, outcome: TransferObs | KvTransferAborted) -> None:
        aborted = isinstance(outcome, KvTransferAborted)
        fut = self._waiters.pop(transfer_id, None)
        if fut is not None and not fut.done():
            if aborted:
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)
            if not aborted:
                return
        # Kept until claimed; an aborted id also so that its late frames on other connections are
        # dropped instead of starting it over.
        now = time.monotonic()
        self._done[transfer_id] = (outcome, now)
        while self._done:
            key, (_, at) = next(iter(self._done.items()))
            if now - at < _KEEP_UNCLAIMED_S:
                break
            del self._done[key]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        carried = self._carried[writer] = set()
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                header = await reader.readexactly(_DATA.size)
                magic, raw_id, total, length = _DATA.unpack(header)
                if magic != _DATA_MAGIC:
                    return  # not a KV sender: drop the connection
                tid = raw_id.hex()
                state = self._progress.get(tid)
                if state is None:
                    if tid in self._done:  # aborted on another connection: drop its late frames
                        await reader.readexactly(length)
                        self.bytes_received += length  # they did cross the link
                        continue
                    state = self._progress[tid] = [0, total, loop.time()]
                carried.add(tid)
                await reader.readexactly(length)
                state[0] += length
                self.bytes_received += length
                if self.on_bytes is not None:
                    self.on_bytes(loop.time(), length)
                if state[0] >= state[1]:
                    del self._progress[tid]
                    obs = TransferObs(tid, int(state[1]), state[2], loop.time())
                    self._finish(obs)
                    writer.write(_ACK.pack(_ACK_MAGIC, raw_id, obs.first_byte_s, obs.last_byte_s))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            del self._carried[writer]
            for tid in carried:  # their bytes on this connection are lost: they can never complete
                if tid in self._progress:
                    self._abort(tid)
            self._tasks.discard(task)  # type: ignore[arg-type]
            writer.close()


class _Connection:
    """One persistent connection to a receiver, with a task that reads acks."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pending: dict) -> None:
        self.reader, self.writer, self._pending = reader, writer, pending
        self.broken: BaseException | None = None
        self.task = asyncio.create_task(self._read_acks())

    async def _read_acks(self) -> None:
        try:
            while True:
                magic, raw_id, first, last = _ACK.unpack(await self.reader.readexactly(_ACK.size))
                if magic != _ACK_MAGIC:
                    raise ConnectionError("bad ack from KV receiver")
                fut = self._pending.pop(raw_id.hex(), None)
                if fut is not None and not fut.done():
                    fut.set_result((first, last))
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            if isinstance(exc, asyncio.IncompleteReadError):
                exc = ConnectionResetError("KV receiver closed the connection")
            self.broken = exc
            # Any transfer to this receiver may have had frames on this connection: fail them all.
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"KV connection lost: {exc}"))

    async def close(self) -> None:
        self.task.cancel()
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class KvSender:
    """Pushes KV bytes to receivers over pooled connections; ``send`` returns the receiver's timestamps.

    On a link the kernel does not shape (the rootless fallback), ``pace_bytes_s`` paces each
    destination's frames in the application (bytes per loop second, shared by concurrent transfers)
    and ``delay_s`` holds a transfer's first frame back by the one-way delay.
    """

    def __init__(
        self,
        *,
        connections: int = 1,
        pace_bytes_s: float | None = None,
        delay_s: float = 0.0,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        if connections < 1:
            raise ValueError("connections must be >= 1")
        if pace_bytes_s is not None and not pace_bytes_s > 0:
            raise ValueError("pace_bytes_s must be > 0")
        self.connections = connections
        self.pace_bytes_s, self.delay_s = pace_bytes_s, delay_s
        self.connect_timeout_s = connect_timeout_s
        self._free_at: dict[tuple[str, int], float] = {}
        self._pools: dict[tuple[str, int], list[_Connection]] = {}
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}
        # Ack futures by destination, then transfer id.
        self._pending: dict[tuple[str, int], dict[str, asyncio.Future[tuple[float, float]]]] = {}
        self.bytes_sent = 0
        self.in_flight = 0

    async def _pool(self, dest: tuple[str, int]) -> list[_Connection]:
        """The destination's connections, topped up to ``connections``. If one cannot be opened, the
        ones this call opened are closed again (no half-built pool is kept or leaked) and it raises."""
        lock = self._locks.setdefault(dest, asyncio.Lock())
        async with lock:
            pool = [c for c in self._pools.get(dest, []) if c.broken is None and not c.task.done()]
            opened: list[_Connection] = []
            try:
                while len(pool) + len(opened) < self.connections:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(*dest), self.connect_timeout_s
                    )
                    writer.transport.set_write_buffer_limits(high=2 * FRAME_BYTES)
                    opened.append(_Connection(reader, writer, self._pending.setdefault(dest, {})))
            except BaseException as exc:  # cancellation included: close what we opened, then go on
                for conn in opened:
                    await conn.close()
                if isinstance(exc, OSError | TimeoutError):
                    raise ConnectionError(
                        f"KV connection to {dest[0]}:{dest[1]} failed: {type(exc).__name__}: {exc}"
                    ) from None
                raise
            self._pools[dest] = pool + opened
            return self._pools[dest]

    async def send(
        self,
        transfer_id: str,
        dest: tuple[str, int],
        nbytes: int,
        *,
        ready_times_s: Sequence[float] = (),
    ) -> TransferObs:
        """Send ``nbytes`` to the receiver at ``dest``, chunk i not before ``ready_times_s[i]``.

        With no ready times everything leaves at once. Returns the receiver's observation.
        """
        if nbytes < 1:
            raise ValueError("a transfer carries at least one byte")
        loop = asyncio.get_running_loop()
        pool = await self._pool(dest)
        raw_id = bytes.fromhex(transfer_id)
        pending = self._pending[dest]
        ack = pending[transfer_id] = loop.create_future()
        chunks = chunk_sizes(nbytes, len(ready_times_s)) if ready_times_s else [nbytes]
        self.in_flight += 1
        try:
            if self.delay_s > 0:
                await asyncio.sleep(self.delay_s)
            frame_no = 0
            for i, size in enumerate(chunks):
                if ready_times_s and (delay := ready_times_s[i] - loop.time()) > 0:
                    await asyncio.sleep(delay)
                while size > 0:
                    n = min(size, FRAME_BYTES)
                    if self.pace_bytes_s is not None:
                        await self._pace(dest, n)
                    conn = pool[frame_no % len(pool)]
                    frame_no += 1
                    if conn.broken is not None:
                        raise ConnectionError(f"KV connection to {dest[0]}:{dest[1]} broke: {conn.broken}")
                    conn.writer.write(_DATA.pack(_DATA_MAGIC, raw_id, nbytes, n))
                    conn.writer.write(_ZEROS[:n])
                    self.bytes_sent += n
                    size -= n
                    await conn.writer.drain()
            first, last = await ack
            return TransferObs(transfer_id, nbytes, first, last)
        finally:
            self.in_flight -= 1
            pending.pop(transfer_id, None)
            if not ack.done():
                ack.cancel()
            elif not ack.cancelled():
                ack.exception()  # mark it retrieved: the send already failed with its own error

    async def _pace(self, dest: tuple[str, int], n: int) -> None:
        """Wait until the destination's paced link has carried this frame (frames share it in order)."""
        assert self.pace_bytes_s is not None
        now = asyncio.get_running_loop().time()
        done = max(now, self._free_at.get(dest, now)) + n / self.pace_bytes_s
        self._free_at[dest] = done
        if done > now:
            await asyncio.sleep(done - now)

    async def close(self) -> None:
        for pool in self._pools.values():
            for conn in pool:
                await conn.close()
        self._pools.clear()
