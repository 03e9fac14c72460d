"""Serving instances: a FIFO prefill instance and a continuously batching decode instance.

Both take their timing from the cost model and their clock from the running asyncio loop
(``loop.time()``), so they run unchanged in virtual time (simulate) and real time (serve).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from harness.model.cost import InstanceCost
from harness.serving.cache import PrefixCache
from harness.serving.clock import sleep_until, wake


@dataclass(frozen=True, slots=True)
class PrefillTimes:
    """What one prefill did: when it reached the engine's queue (its arrival plus the frontend's
    ``frontend_s``), ran and ended, and how many tokens the cache supplied."""

    instance: str
    enqueued_s: float
    start_s: float
    end_s: float
    cached_tokens: int


class _Job:
    __slots__ = ("enqueued", "estimate", "fetched", "future", "hash_ids", "on_start", "prompt")

    def __init__(self, prompt, hash_ids, on_start, fetched, estimate, enqueued, future) -> None:
        self.prompt, self.hash_ids, self.on_start, self.fetched = prompt, hash_ids, on_start, fetched
        self.estimate, self.enqueued, self.future = estimate, enqueued, future


class PrefillInstance:
    """One prefill instance: a FIFO queue served one prefill (or one batch) at a time.

    Prefill time is ``cost.prefill_time_s(uncached, cached)`` where ``cached`` is the site cache's
    prefix hit at the moment the prefill starts; the prompt's blocks enter the cache when it ends.

    ``max_batch_tokens`` > 0 batches: the head of the queue plus the following requests while their
    uncached tokens total at most that many. A batch costs the sum of its prefills minus all but one
    fixed per-prefill overhead (the calibration's ``prefill_overhead_s``), and every request in it
    starts and ends together. 0 (the default) runs one request at a time.

    ``colocated``: the same GPUs decode too, as an engine with chunked prefill runs them. A batch waits
    for the decode step in progress, then runs in steps of at most ``max_batch_tokens`` tokens (the
    whole batch in one step when 0), each carrying one decode step of the running sequences: a step
    lasts its share of the prefill plus what their decode adds (``InstanceCost.carried_decode_s``: no
    second fixed overhead, no second read of the weights), and each running sequence makes a token as
    it ends. The prefill's own time is as without decodes; the decodes stretch it.

    A request can start the calibration's ``frontend_s`` after it arrives, in its order of arrival:
    the engine's frontend (HTTP, tokenising, streaming) works beside the model, so it delays each
    request by that much but keeps no other request waiting.
    """

    def __init__(
        self,
        name: str,
        cost: InstanceCost,
        cache: PrefixCache | None = None,
        *,
        colocated: DecodeInstance | None = None,
        max_batch_tokens: int = 0,
    ) -> None:
        self.name = name
        self.cost = cost
        self.cache = cache
        # Colocated: the same GPUs also decode; that decode instance stalls while a prefill runs.
        self.colocated = colocated
        self.max_batch_tokens = max_batch_tokens
        self._queue: deque[_Job] = deque()
        self._running = 0
        self._queued_work_s = 0.0
        self._busy_until = 0.0
        self._worker: asyncio.Task[None] | None = None
        self.completed = 0
        # Over the completed prefills (loop seconds), as an engine reports them: queued, then computing.
        self.queue_s_total = self.prefill_s_total = 0.0

    def __repr__(self) -> str:
        return f"<PrefillInstance {self.name} queue={self.queue_depth}>"

    @property
    def busy(self) -> bool:
        return self._running > 0

    @property
    def queue_depth(self) -> int:
        """Requests waiting or running here."""
        return len(self._queue) + self._running

    @property
    def running(self) -> int:
        """Requests being prefilled now."""
        return self._running

    def load_s(self, now: float) -> float:
        """Estimated seconds of work ahead of a new arrival (for least-loaded balancing)."""
        return max(0.0, self._busy_until - now) * self.busy + self._queued_work_s

    def _cached_now(self, prompt_tokens: int, hash_ids: Sequence[int]) -> int:
        cached = self.cache.peek(hash_ids, prompt_tokens) if self.cache is not None else 0
        return min(cached, prompt_tokens - 1)

    def estimate_s(self, prompt_tokens: int, hash_ids: Sequence[int]) -> float:
        cached = self._cached_now(prompt_tokens, hash_ids)
        return self.cost.prefill_time_s(prompt_tokens - cached, cached)

    async def prefill(
        self,
        prompt_tokens: int,
        hash_ids: Sequence[int],
        on_start: Callable[[float, float, int], None] | None = None,
        *,
        fetched_tokens: int = 0,
    ) -> PrefillTimes:
        """Queue, then prefill; ``on_start(start, duration, cached)`` fires as it starts (KV can leave).

        ``fetched_tokens``: a prefix whose KV was pulled from another site; it counts as cached.
        """
        loop = asyncio.get_running_loop()
        estimate = self.estimate_s(prompt_tokens, hash_ids)
        # In line now, so that the order of arrival holds; eligible once through the frontend.
        ready = loop.time() + self.cost.hardware.calibration.frontend_s
        job = _Job(prompt_tokens, hash_ids, on_start, fetched_tokens, estimate, ready, loop.create_future())
        self._queue.append(job)
        self._queued_work_s += estimate
        if self._worker is None:
            self._worker = loop.create_task(self._work(), name=f"prefill-{self.name}")
        return await job.future

    def _take_batch(self, now: float) -> list[_Job]:
        batch: list[_Job] = []
        tokens = 0
        while self._queue:
            job = self._queue[0]
            if job.enqueued > now:  # still in the frontend
                break
            new = job.prompt - self._cached_now(job.prompt, job.hash_ids)
            if batch and tokens + new > self.max_batch_tokens:
                break
            self._queue.popleft()
            self._queued_work_s -= job.estimate
            if job.future.done():  # the caller gave up (cancelled) while queued
                continue
            batch.append(job)
            tokens += new
        if not self._queue:
            self._queued_work_s = 0.0  # no float residue from the running sum
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        batch: list[_Job] = []
        # A batch queued behind another starts where that one ended on the plan (or as its last job
        # came in, if later), not when the loop woke: the same in virtual time, and on a real clock
        # a late wake-up delays this batch's start but never the next one's (decode does the same).
        planned_end: float | None = None
        try:
            while self._queue:
                if self._queue[0].enqueued > loop.time():
                    await sleep_until(self._queue[0].enqueued)
                batch = self._take_batch(loop.time())
                if not batch:
                    continue
                decode = self.colocated
                if decode is not None:
                    decode.pause()
                try:
                    if decode is not None:
                        await decode.halted()  # the decode step in progress ends first
                    start, duration, cached = self._begin(batch, loop.time(), planned_end)
                    self._busy_until = start + duration
                    self._running = len(batch)
                    for job, c in zip(batch, cached, strict=True):
                        if job.on_start is not None:
                            job.on_start(start, duration, c)
                    if decode is None:
                        end = start + duration
                        await sleep_until(end)
                    else:
                        new = sum(j.prompt - c for j, c in zip(batch, cached, strict=True))
                        end = await self._mixed(decode, start, duration, new)
                finally:
                    self._running = 0
                    if decode is not None:
                        decode.resume()
                planned_end = end
                for job, c in zip(batch, cached, strict=True):
                    if self.cache is not None:
                        self.cache.insert(job.hash_ids, job.prompt)
                    self.completed += 1
                    self.queue_s_total += start - job.enqueued
                    self.prefill_s_total += end - start
                    if not job.future.done():
                        job.future.set_result(PrefillTimes(self.name, job.enqueued, start, end, c))
                batch = []
        except BaseException as exc:
            # A prefill that raised (or a worker torn down) must not leave its batch and the queue
            # behind it waiting for results that will never come: each caller gets the error.
            self._fail([*batch, *self._queue], exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._worker = None

    def _begin(
        self, batch: list[_Job], now: float, planned_end: float | None
    ) -> tuple[float, float, list[int]]:
        """A batch's start, duration and cache hits, taken from the cache as it starts."""
        start = now if planned_end is None else min(now, max(planned_end, *(j.enqueued for j in batch)))
        cached = []
        for job in batch:
            hit = self.cache.lookup(job.hash_ids, job.prompt) if self.cache is not None else 0
            cached.append(max(hit, min(job.fetched, job.prompt - 1)))
        times = [self.cost.prefill_time_s(j.prompt - c, c) for j, c in zip(batch, cached, strict=True)]
        duration = sum(times) - (len(batch) - 1) * self.cost.hardware.calibration.prefill_overhead_s
        return start, duration, cached

    async def _mixed(self, decode: DecodeInstance, start: float, duration: float, new_tokens: int) -> float:
        """Run ``duration`` seconds of prefill over ``new_tokens`` tokens in chunked steps, each with one
        step of ``decode``'s running sequences; returns the end. The prefill's time is split evenly over
        its steps (the chunks' attention terms add up to the whole prompt's, so only their spread is
        approximate)."""
        budget = self.max_batch_tokens - len(decode.active)  # the running sequences' tokens come first
        steps = max(1, math.ceil(new_tokens / max(1, budget))) if self.max_batch_tokens else 1
        t = start
        for _ in range(steps):
            t += duration / steps + decode.carried_step_s()
            self._busy_until = t
            await sleep_until(t)
            decode.step_along(t)
        return t

    def _fail(self, jobs: list[_Job], exc: BaseException) -> None:
        self._queue.clear()
        self._queued_work_s = 0.0
        self._running = 0
        self._busy_until = 0.0
        for job in jobs:
            if job.future.done():
                continue
            if isinstance(exc, asyncio.CancelledError):
                job.future.cancel()
            else:
                job.future.set_exception(exc)


class DecodeRejected(Exception):
    """A sequence whose KVCache can never fit this instance's memory."""


class TokenStream:
    """Token times of one decoding sequence, in chunks as they are produced.

    ``async for chunk in stream`` yields numpy arrays of token times (streaming, for HTTP);
    ``await stream.wait()`` returns every token time once the sequence is done (simulation).
    """

    def __init__(self, output_tokens: int) -> None:
        self.output_tokens = output_tokens
        self.chunks: list[np.ndarray] = []
        self.produced = 0
        self.admitted_s: float | None = None
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._event: asyncio.Event | None = None

    def _push(self, times: np.ndarray) -> None:
        self.chunks.append(times)
        self.produced += len(times)
        if self._event is not None:
            self._event.set()

    def _finish(self, exc: BaseException | None = None) -> None:
        if not self._done.done():
            if exc is None:
                self._done.set_result(None)
            else:
                self._done.set_exception(exc)
        if self._event is not None:
            self._event.set()

    @property
    def done(self) -> bool:
        return self._done.done()

    async def wait(self) -> np.ndarray:
        """All token times, once the last token is out (raises DecodeRejected if it was refused)."""
        await self._done
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0)

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        if self._event is None:
            self._event = asyncio.Event()
        i = 0
        while True:
            if i < len(self.chunks):
                i += 1
                yield self.chunks[i - 1]
            elif self._done.done():
                self._done.result()  # re-raise a rejection
                return
            else:
                self._event.clear()
                await self._event.wait()


class _Seq:
    __slots__ = ("context", "kv_reserved", "remaining", "stream")

    def __init__(self, stream: TokenStream, context: int, remaining: int, kv_reserved: int) -> None:
        self.stream, self.context, self.remaining, self.kv_reserved = stream, context, remaining, kv_reserved


class DecodeInstance:
    """Continuous batching up to ``batch_max`` sequences, admission only at step boundaries.

    A sequence is admitted when a slot is free and its final KVCache (prompt + output tokens) fits in
    the instance's memory; it is reserved whole, so nothing is ever preempted. Each step emits one
    token per sequence and lasts ``cost.decode_step_s(B, total context)``.

    Between batch changes the step times are known in advance, so the instance advances a *segment*
    of up to ``max_segment_steps`` steps per wake-up (computed arithmetically, identical to ticking
    every step) and is woken early when a new sequence could be admitted. Use ``math.inf`` in
    simulation and 1 in real-time serving, where tokens are streamed as each step ends.
    """

    def __init__(
        self,
        name: str,
        cost: InstanceCost,
        batch_max: int,
        *,
        kv_capacity_bytes: int | None = None,
        max_segment_steps: float = math.inf,
    ) -> None:
        if batch_max < 1:
            raise ValueError(f"decode instance {name}: batch_max must be >= 1")
        self.name = name
        self.cost = cost
        self.batch_max = int(batch_max)
        self.kv_capacity = cost.kv_capacity_bytes() if kv_capacity_bytes is None else kv_capacity_bytes
        self.max_segment_steps = max_segment_steps
        self.active: list[_Seq] = []
        self.pending: deque[_Seq] = deque()
        self.kv_used = 0
        self.steps = 0
        self.completed = 0
        self.paused = 0
        self._wake: asyncio.Future[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._stepping = False  # the runner is inside a segment of steps
        self._halt_waiters: list[asyncio.Future[None]] = []

    def __repr__(self) -> str:
        return f"<DecodeInstance {self.name} batch={len(self.active)}/{self.batch_max} pending={len(self.pending)}>"

    @property
    def load(self) -> int:
        """Sequences running or waiting here (for least-loaded balancing)."""
        return len(self.active) + len(self.pending)

    def submit(
        self, prompt_tokens: int, output_tokens: int, *, first_token_s: float | None = None
    ) -> TokenStream:
        """Queue a sequence whose KVCache has arrived; returns its token stream.

        ``first_token_s``: the first token is already out at that time, sampled by the prefill that ran
        on these GPUs (colocated, as an engine's prefill step samples it); the batch decodes the rest.
        """
        stream = TokenStream(output_tokens)
        need = self.cost.kv_bytes(prompt_tokens + output_tokens)
        if need > self.kv_capacity:
            stream._finish(
                DecodeRejected(f"{self.name}: KVCache {need} B exceeds capacity {self.kv_capacity} B")
            )
            return stream
        if first_token_s is not None:
            stream._push(np.array([first_token_s]))
            prompt_tokens, output_tokens = prompt_tokens + 1, output_tokens - 1
            if output_tokens <= 0:
                stream.admitted_s = first_token_s
                self.completed += 1
                stream._finish()
                return stream
        self.pending.append(_Seq(stream, prompt_tokens, output_tokens, need))
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run(), name=f"decode-{self.name}")
            self._runner.add_done_callback(self._runner_ended)
        elif self._wake is not None and not self._wake.done() and self._can_admit():
            self._wake.set_result(None)
        return stream

    def _runner_ended(self, task: asyncio.Task[None]) -> None:
        # The step loop never returns; if it raised, fail every sequence it held rather than leave their
        # clients waiting for tokens that will never come.
        self._stepping = False
        self._release_halted()
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        for seq in [*self.active, *self.pending]:
            seq.stream._finish(exc)
        self.active, self._runner = [], None
        self.pending.clear()
        self.kv_used = 0

    def pause(self) -> None:
        """Stop stepping at the next step boundary until ``resume`` (a colocated prefill has the GPUs)."""
        self.paused += 1
        self._poke()

    def resume(self) -> None:
        self.paused -= 1
        if not self.paused:
            self._poke()

    def halted(self) -> asyncio.Future[None]:
        """Done once no step is in progress: at once when none is, else when the one in progress ends
        (after ``pause``, the runner then stays at that boundary)."""
        fut = asyncio.get_running_loop().create_future()
        if not self._stepping:  # also False with no runner: it is cleared when the runner ends
            fut.set_result(None)
        else:
            self._halt_waiters.append(fut)
        return fut

    def _release_halted(self) -> None:
        for fut in self._halt_waiters:
            if not fut.done():
                fut.set_result(None)
        self._halt_waiters.clear()

    def carried_step_s(self) -> float:
        """Seconds one step of the running sequences adds to a colocated prefill step that carries it
        (0 when none run): ``InstanceCost.carried_decode_s``."""
        return self.cost.carried_decode_s(len(self.active), sum(s.context for s in self.active))

    def step_along(self, end: float) -> None:
        """One step of the running sequences, ended at ``end`` by a colocated prefill that carried it
        (the runner is paused); sequences waiting to join are admitted at that boundary."""
        if self.active:
            self._commit(np.array([end]))
        self._admit(end)

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _can_admit(self) -> bool:
        return (
            bool(self.pending)
            and len(self.active) < self.batch_max
            and (self.kv_used + self.pending[0].kv_reserved <= self.kv_capacity)
        )

    def _admit(self, now: float) -> None:
        while self._can_admit():
            seq = self.pending.popleft()
            self.kv_used += seq.kv_reserved
            seq.stream.admitted_s = now
            self.active.append(seq)

    def step_times(self, batch: int, contexts: np.ndarray) -> np.ndarray:
        """Durations of successive steps of ``batch`` sequences holding ``contexts`` tokens in total."""
        return np.asarray(self.cost.decode_step_s(batch, contexts), dtype=float)

    async def _sleep_until(self, when: float) -> bool:
        """Sleep until ``when``; True if woken early (an admissible arrival, or a pause)."""
        loop = asyncio.get_running_loop()
        self._wake = fut = loop.create_future()
        handle = loop.call_at(when, wake, fut)
        try:
            await fut
        finally:
            handle.cancel()
            self._wake = None
        return loop.time() < when

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # While busy, a step starts where the previous one ended on the plan, not when the loop woke:
        # identical in virtual time, and on a real clock wake-up lag does not accumulate step by step.
        anchor: float | None = None
        while True:
            now = loop.time() if anchor is None else anchor
            self._admit(now)
            if self.paused or not self.active:
                anchor = None
                self._stepping = False
                self._release_halted()
                self._wake = fut = loop.create_future()
                await fut
                self._wake = None
                continue
            self._stepping = True
            batch = len(self.active)
            n = int(min(min(s.remaining for s in self.active), self.max_segment_steps))
            context0 = sum(s.context for s in self.active)
            durations = self.step_times(batch, context0 + batch * np.arange(n, dtype=np.int64))
            # Step end times, accumulated left to right from ``now`` (same rounding as step-by-step).
            ends = np.cumsum(np.concatenate(([now], durations)))[1:]
            done = n
            if await self._sleep_until(float(ends[-1])):
                # A sequence can join (or a pause begins): finish the step in progress, then re-plan.
                # On a real clock time moves on after the wake-up, possibly past the last planned end:
                # the step in progress is then the last one, never one beyond the plan.
                k = min(int(np.searchsorted(ends, loop.time(), side="left")), n - 1)
                await sleep_until(float(ends[k]))
                done = k + 1
            self._commit(ends[:done])
            anchor = float(ends[done - 1])

    def _commit(self, ends: np.ndarray) -> None:
        steps = len(ends)
        self.steps += steps
        still: list[_Seq] = []
        for s in self.active:
            s.stream._push(ends)
            s.context += steps
            s.remaining -= steps
            if s.remaining > 0:
                still.append(s)
            else:
                self.kv_used -= s.kv_reserved
                self.completed += 1
                s.stream._finish()
        self.active = still
