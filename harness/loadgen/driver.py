"""The asyncio side of one worker: dispatch a schedule's requests on time, hand each record to a sink.

Open loop: one dispatcher sleeps until each request's scheduled time and starts it as its own task
(a concurrency cap makes the dispatcher wait, and the wait shows up as send lag). Closed loop: N
coroutines each send their next request as soon as the previous one ends (scheduled = sent).
On cancellation (Ctrl-C) in-flight requests end as "cancelled" records, handed to the sink too.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from harness.loadgen.client import Client, Job
from harness.loadgen.config import Endpoint, Timeouts
from harness.loadgen.schedule import Schedule, closed_loop_phase
from harness.records import RequestRecord
from harness.serving.clock import sleep_until
from harness.serving.sessions import SessionGate
from harness.traces.frame import Trace
from harness.traces.prompts import PromptFits, PromptSynth
from harness.traces.sessions import SessionPlan

_LOOKAHEAD = 64  # prepared requests held ahead of their send time (bounded memory)
_PREP_SLACK_S = 0.002  # stop preparing this close to a send time
_PREP_LEAD_S = 0.25  # session mode: a first turn's prompt is built this long before its send


@dataclass(frozen=True, kw_only=True)
class WorkerSetup:
    """What a worker needs besides the schedule (picklable, so it crosses into worker processes)."""

    run_id: str
    t0: float  # time.monotonic() of run-clock zero (system-wide on Linux)
    wall_offset_s: float  # time.time() at run-clock zero
    timeouts: Timeouts
    api_key: str | None
    extra_body: dict[str, Any]
    seed: int
    prompt_fits: PromptFits | None = None  # prompts fitted to a tokenizer before the run
    sessions: SessionPlan | None = None  # session mode: later turns wait for their predecessor


class Jobs:
    """Makes ``Job``s from schedule indices: trace lengths plus synthesised prompt text."""

    def __init__(self, trace: Trace, schedule: Schedule, synth: PromptSynth) -> None:
        self.trace, self.schedule, self.synth = trace, schedule, synth

    def row(self, i: int) -> int:
        s = self.schedule
        return int(s.row[i]) if s.row is not None else i % s.trace_len

    def make(self, i: int, scheduled_s: float, phase: int) -> Job:
        row = self.row(i)
        n_in = int(self.trace.input_tokens[row])
        prompt = self.synth.prompt(self.trace.hash_ids(row), n_in, row)
        return Job(i, row, scheduled_s, prompt, n_in, int(self.trace.output_tokens[row]), phase)

    def follow(self, i: int, scheduled_s: float, phase: int, prev: Job, user_tokens: int) -> Job:
        """A session's later turn: ``prev``'s conversation, its answer as received, new user text."""
        row = self.row(i)
        history = (*prev.history, prev.prompt, prev.answer or "")
        prompt = self.synth.user_text(row, user_tokens)
        n_in, n_out = int(self.trace.input_tokens[row]), int(self.trace.output_tokens[row])
        return Job(i, row, scheduled_s, prompt, n_in, n_out, phase, history=history)


KEEPALIVE_S = 4.0  # below uvicorn's 5 s keep-alive timeout (new_session)


def new_session(timeouts: Timeouts) -> aiohttp.ClientSession:
    """One pooled session per worker: no connection limit (the schedule is the only limit).

    An idle pooled connection is reused for at most 4 s: uvicorn (vLLM, SGLang) closes a keep-alive
    connection after 5 s, and a request written into one it has closed fails with "Can not write
    request body" (seen after a 6 s client stall beside two CPU hogs: 7 of 20 PD requests lost)."""
    connector = aiohttp.TCPConnector(
        limit=0, ttl_dns_cache=300, enable_cleanup_closed=False, keepalive_timeout=KEEPALIVE_S
    )
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)


async def drive(
    endpoint: Endpoint,
    trace: Trace,
    schedule: Schedule,
    setup: WorkerSetup,
    sink: Callable[[RequestRecord], None],
    synth: PromptSynth,
    counters: dict[str, int] | None = None,
) -> None:
    """Send ``schedule``'s requests to ``endpoint``; every finished request goes to ``sink``.

    ``counters["dispatched"]`` (if given) counts requests sent so far, for progress displays.
    """
    client = Client(
        endpoint,
        run_id=setup.run_id,
        t0=setup.t0,
        wall_offset_s=setup.wall_offset_s,
        timeouts=setup.timeouts,
        api_key=setup.api_key,
        extra_body=setup.extra_body,
    )
    jobs = Jobs(trace, schedule, synth)
    gc.freeze()  # long-lived objects (trace, imports) leave the GC's scans: shorter pauses mid-run
    counters = counters if counters is not None else {}
    counters.setdefault("dispatched", 0)
    async with new_session(setup.timeouts) as session:
        if setup.sessions is not None:
            gate = SessionGate(setup.sessions, zero=setup.t0)
            await _sessions(client, session, jobs, schedule, gate, sink, counters)
        elif schedule.closed_loop:
            await _closed(client, session, jobs, schedule, setup.t0, sink, counters)
        else:
            await _open(client, session, jobs, schedule, setup.t0, sink, counters)


async def _open(client, session, jobs: Jobs, schedule: Schedule, t0: float, sink, counters) -> None:
    sem = asyncio.Semaphore(schedule.concurrency) if schedule.concurrency else None

    async def one(job: Job) -> None:
        try:
            sink(await client.execute(session, job))
        finally:
            if sem is not None:
                sem.release()

    offsets, phases = schedule.offset_s, schedule.phase
    assert offsets is not None and phases is not None
    mono, sleep = time.monotonic, asyncio.sleep
    todo = iter(schedule.indices())
    ready: deque[Job] = deque()

    def prepare_next() -> bool:
        i = next(todo, None)
        if i is None:
            return False
        at = float(offsets[i])
        ready.append(client.prepare(jobs.make(i, at, int(phases[i]))))
        return True

    # Cancelled (Ctrl-C) or failed (a sink that raised, say on a full disk), the group cancels the
    # requests in flight; each still hands its "cancelled" record to the sink before the group exits.
    try:
        async with asyncio.TaskGroup() as group:
            while ready or prepare_next():
                job = ready.popleft()
                # Idle time before this send builds the next prompts, so a burst finds them ready; yield
                # between them so requests already started are sent first.
                while len(ready) < _LOOKAHEAD and t0 + job.scheduled_s - mono() > _PREP_SLACK_S:
                    await sleep(0)
                    if not prepare_next():
                        break
                delay = t0 + job.scheduled_s - mono()
                if delay > 0:
                    await sleep(delay)
                if sem is not None:
                    await sem.acquire()
                group.create_task(one(job))
                counters["dispatched"] += 1
    except* Exception as failed:
        raise failed.exceptions[0] from None


async def _sessions(
    client, session, jobs: Jobs, schedule: Schedule, gate: SessionGate, sink, counters
) -> None:
    """Session mode: every request waits in its own task, a first turn for its scheduled time, a later
    turn for its predecessor's end plus think time (``SessionGate``, the rule simulate uses too)."""
    offsets = schedule.offset_s
    assert offsets is not None
    finished: dict[int, Job] = {}  # row -> its finished job, kept until its next turn takes it

    async def turn(i: int) -> None:
        row = jobs.row(i)
        pred_end = await gate.predecessor_end(row)
        at = gate.send_time(row, float(offsets[i]), pred_end)
        if pred_end is None:  # a first turn's prompt is built ahead; a later turn's as its predecessor ends
            await sleep_until(gate.zero + at - _PREP_LEAD_S)
        phase = closed_loop_phase(schedule, at)
        if pred_end is None:
            job = jobs.make(i, at, phase)
        else:
            prev = finished.pop(gate.predecessor(row))
            job = jobs.follow(i, at, phase, prev, int(gate.plan.user_tokens[row]))
        # the answer's text is kept only for a next turn to carry (reading it costs a decode per chunk)
        job.answer = "" if gate.has_successor(row) else None
        job.session = (*gate.describe(row), pred_end)
        client.prepare(job)
        await sleep_until(gate.zero + at)
        counters["dispatched"] += 1
        rec = await client.execute(session, job)
        if gate.has_successor(row):
            finished[row] = job
        gate.ended(row, rec.end_s if rec.end_s is not None else at)
        sink(rec)

    try:
        async with asyncio.TaskGroup() as group:
            for i in schedule.indices():
                group.create_task(turn(i))
    except* Exception as failed:
        raise failed.exceptions[0] from None


async def _closed(client, session, jobs: Jobs, schedule: Schedule, t0: float, sink, counters) -> None:
    indices = iter(schedule.indices())
    mono = time.monotonic
    end = None if schedule.duration_s is None else t0 + schedule.duration_s

    async def loop() -> None:
        await asyncio.sleep(max(t0 - mono(), 0))  # t0 is a little ahead: a send before it would be "warmup"
        for i in indices:
            now = mono()
            if end is not None and now >= end:
                return
            job = client.prepare(jobs.make(i, now - t0, closed_loop_phase(schedule, now - t0)))
            job.scheduled_s = mono() - t0  # the slot freed now; prompt synthesis is not send lag here
            counters["dispatched"] += 1
            rec = await client.execute(session, job)
            sink(rec)
            if rec.error_class == "cancelled":  # execute absorbed our cancellation: stop here
                return

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(schedule.concurrency or 1):
                group.create_task(loop())
    except* Exception as failed:
        raise failed.exceptions[0] from None
