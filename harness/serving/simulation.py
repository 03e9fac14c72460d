"""Drive a ``Cluster`` with a trace in virtual time: arrivals, per-request records, a sampled time series.

Deterministic: the only clock is the virtual loop's, arrivals come from the trace, ties break by
request order and instance index, and no randomness is drawn here.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from harness.records import STATUS_ERROR, RequestRecord
from harness.serving.clock import run_virtual, sleep_until
from harness.serving.cluster import Cluster, Outcome
from harness.serving.sessions import SessionGate
from harness.serving.site import ServeRequest
from harness.traces.frame import Trace
from harness.traces.sessions import SessionPlan


def requests_from_trace(trace: Trace, *, prefix: str = "r") -> Iterator[ServeRequest]:
    """One ``ServeRequest`` per trace row, built lazily (hash ids become plain int lists)."""
    for i in range(len(trace)):
        yield ServeRequest(
            request_id=f"{prefix}{i}",
            arrival_s=float(trace.arrival_s[i]),
            prompt_tokens=int(trace.input_tokens[i]),
            output_tokens=int(trace.output_tokens[i]),
            hash_ids=trace.hash_ids(i).tolist(),
            trace_row=i,
        )


def to_record(out: Outcome, *, run_id: str, topology: str) -> RequestRecord:
    """The shared per-request schema (``source="simulate"``; scheduled = sent = arrival)."""
    req = out.request
    rec = RequestRecord(
        run_id=run_id,
        topology=topology,
        request_id=req.request_id,
        trace_row=req.trace_row,
        scheduled_s=req.arrival_s,
        sent_s=req.arrival_s,
        prompt_tokens_trace=req.prompt_tokens,
        prompt_tokens_server=req.prompt_tokens,
        output_tokens_requested=req.output_tokens,
        source="simulate",
        session_id=req.session_id,
        turn=req.turn,
        predecessor_end_s=req.predecessor_end_s,
    )
    if out.route is not None:
        rec.route = out.route.route
    if out.prefill is not None:
        p = out.prefill
        rec.prefill_site, rec.prefill_instance = p.site, p.times.instance
        rec.cached_tokens = p.times.cached_tokens
        rec.prefill_queue_s = p.times.start_s - p.times.enqueued_s
        rec.prefill_start_s, rec.prefill_end_s = p.times.start_s, p.times.end_s
        if out.route is not None and out.route.route != "colocated":
            rec.kv_bytes = p.kv_bytes
            rec.kv_transfer_start_s, rec.kv_transfer_end_s = p.transfer_start_s, p.transfer_end_s
    rec.decode_site, rec.decode_instance, rec.decode_start_s = (
        out.decode_site,
        out.decode_instance,
        out.decode_start_s,
    )
    times = out.token_times
    if len(times):
        rec.first_byte_s = rec.first_token_s = float(times[0])
        rec.last_token_s = float(times[-1])
        rec.itl_s = np.diff(times).tolist()
        rec.output_tokens_received = len(times)
    if out.error is not None:
        rec.status = STATUS_ERROR
        rec.error_class = type(out.error).__name__
        rec.error_message = str(out.error)
    return rec


@dataclass
class TimeSeries:
    """Long-format samples: one row per (time, entity, metric)."""

    t_s: list[float] = field(default_factory=list)
    entity: list[str] = field(default_factory=list)
    metric: list[str] = field(default_factory=list)
    value: list[float] = field(default_factory=list)

    def add(self, t: float, entity: str, metric: str, value: float) -> None:
        self.t_s.append(t)
        self.entity.append(entity)
        self.metric.append(metric)
        self.value.append(float(value))


class _Sampler:
    """Queue depths, batch sizes, link utilisation (``LinkView``) and cache hit rate, every interval."""

    def __init__(self, cluster: Cluster, series: TimeSeries) -> None:
        self.cluster, self.series = cluster, series

    def sample(self, now: float) -> None:
        add = self.series.add
        for site in self.cluster.sites.values():
            for p in site.prefill_instances:
                add(now, p.name, "prefill_queue", p.queue_depth)
            for d in site.decode_instances:
                add(now, d.name, "decode_batch", len(d.active))
                add(now, d.name, "decode_pending", len(d.pending))
            if site.cache is not None:
                add(now, site.name, "cache_hit_rate", site.cache.hit_rate)
        for (src, dst), link in self.cluster.links.items():
            add(now, f"{src}->{dst}", "link_utilisation", link.utilisation(now))


async def drive(
    cluster: Cluster,
    requests: Iterator[ServeRequest],
    n: int,
    on_outcome: Callable[[Outcome], None],
    *,
    series: TimeSeries | None = None,
    sample_interval_s: float = 1.0,
    sessions: SessionPlan | None = None,
) -> None:
    """Release ``n`` requests at their arrival times, hand each outcome to ``on_outcome`` as it ends.

    With ``sessions`` (session mode) a later turn is released by ``SessionGate`` instead: when its
    predecessor ended plus its think time, its prompt that predecessor's prompt and answer plus its
    new user tokens.
    """
    loop = asyncio.get_running_loop()
    all_done = loop.create_future()
    remaining = n
    tasks: set[asyncio.Task[Outcome]] = set()

    def finished(task: asyncio.Task[Outcome]) -> None:
        nonlocal remaining
        tasks.discard(task)
        if task.cancelled():  # the run is being torn down (Ctrl-C): no outcome, and no traceback
            return
        on_outcome(task.result())
        remaining -= 1
        if remaining == 0 and not all_done.done():
            all_done.set_result(None)

    gate = None if sessions is None else SessionGate(sessions)
    grown: dict[int, int] = {}  # session mode: row -> its prompt plus its answer, in tokens

    async def turn(req: ServeRequest) -> Outcome:
        assert gate is not None
        row = req.trace_row
        at, pred_end = await gate.release(row, req.arrival_s)
        session_id, turn_index = gate.describe(row)
        prompt = req.prompt_tokens
        if pred_end is not None:
            prompt = grown.pop(gate.predecessor(row)) + int(sessions.user_tokens[row])
        req = replace(
            req, arrival_s=at, prompt_tokens=prompt, session_id=session_id, turn=turn_index,
            predecessor_end_s=pred_end,
        )  # fmt: skip
        out = await cluster.handle(req)
        if gate.has_successor(row):
            grown[row] = prompt + len(out.token_times)
        gate.ended(row, loop.time())
        return out

    async def feed() -> None:
        for i, req in enumerate(requests):
            if i == 0:
                cluster.start(req.arrival_s)  # the run clock's zero: the first request's arrival
            if gate is None:
                await sleep_until(req.arrival_s)
                task = loop.create_task(cluster.handle(req))
            else:  # every turn waits in its own task: for its arrival or for its predecessor
                task = loop.create_task(turn(req))
            tasks.add(task)
            task.add_done_callback(finished)

    async def sample() -> None:
        assert series is not None
        sampler = _Sampler(cluster, series)
        k = 0
        while True:
            sampler.sample(loop.time())
            k += 1
            await sleep_until(k * sample_interval_s)

    if n == 0:
        return
    background = [loop.create_task(feed())]
    if series is not None and math.isfinite(sample_interval_s) and sample_interval_s > 0:
        background.append(loop.create_task(sample()))
    try:
        await all_done
    finally:
        for t in background:
            t.cancel()


def simulate_requests(
    make_cluster: Callable[[], Cluster],
    requests: Iterator[ServeRequest],
    n: int,
    on_outcome: Callable[[Outcome], None],
    *,
    series: TimeSeries | None = None,
    sample_interval_s: float = 1.0,
    sessions: SessionPlan | None = None,
) -> Cluster:
    """Build a cluster on a fresh virtual-time loop and run ``n`` requests through it; returns the cluster."""
    holder: list[Cluster] = []

    async def main() -> None:
        cluster = make_cluster()
        holder.append(cluster)
        await drive(
            cluster, requests, n, on_outcome, series=series, sample_interval_s=sample_interval_s,
            sessions=sessions,
        )  # fmt: skip

    run_virtual(main())
    return holder[0]
