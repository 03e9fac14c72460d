"""Load workers as Ray actors across a cluster's nodes (``replay --ray-address ADDR --workers N``).

The driver (this process) builds the schedule once, shards it by affinity group
(``harness.loadgen.shards``), and gives each ``LoadWorker`` actor its shard. N actors sit in a placement
group of N one-CPU bundles, one per node (``STRICT_SPREAD``) when the cluster has N nodes, else spread
as far as it goes (``SPREAD``, with a warning). Before each run the driver measures every actor's clock
against its own (``harness.loadgen.clockoffset``) and refuses the run when an offset cannot be bounded
below ``max_clock_bound_s``; it then sends one common start time, a little in the future, converted to
each actor's clock. Each actor's records therefore carry times on the driver's run clock (to within
its bound), and the driver writes them, as they are taken in batches, with the one ``RunWriter``.

Ctrl-C cancels every actor's dispatch, collects the records they still hand over (in-flight requests
end as "cancelled"), then kills the actors and removes the placement group; so does any other exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.errors import CapabilityError
from harness.loadgen.clockoffset import ClockOffset, estimate
from harness.loadgen.config import Endpoint, RayPlacement
from harness.loadgen.driver import WorkerSetup
from harness.loadgen.loadworker import LoadWorker
from harness.loadgen.schedule import Schedule
from harness.loadgen.shards import shard
from harness.loadgen.stalls import merge
from harness.loadgen.stats import RunStats
from harness.loadgen.workers import ctrl_c_counter
from harness.raycluster import connected, first_line
from harness.records import RequestRecord
from harness.traces.frame import Trace
from harness.traces.sessions import SessionPlan

FLAG = "--ray-address"
ROUND_TRIPS = 16  # clock reads per actor before each run; the shortest round trip bounds the offset
_POLL_S = 0.05  # how often the driver takes records (a local worker sends them as often)
_PLACE_S = 120.0  # Ray's autoscaler-less clusters either place a group soon or never
_STOP_S = 30.0  # after Ctrl-C, how long the actors get to hand over their cancelled records
_MIN_LEAD_S = 0.2  # the common start lies at least this far ahead of the driver's clock
_LEAD_RTTS = 10  # ... and at least this many of the slowest actor's best round trips


@dataclass
class _Tally:
    """One worker's figures during a run."""

    scheduled: int
    requested_rps: float | None
    clock: ClockOffset
    stats: RunStats = field(default_factory=RunStats)
    first_sent: float = math.inf
    last_sent: float = -math.inf

    def add(self, rec: RequestRecord) -> None:
        self.stats.add(rec)
        if rec.sent_s is not None:
            self.first_sent = min(self.first_sent, rec.sent_s)
            self.last_sent = max(self.last_sent, rec.sent_s)

    def describe(self) -> dict[str, Any]:
        sent = len(self.stats.send_lag_s)
        return {
            "scheduled": self.scheduled,
            "requests": self.stats.completed,
            "failed": self.stats.failed,
            "send_lag_s": self.stats.send_lag_quantiles(),
            "requested_rps": self.requested_rps,
            "achieved_rps": rate_rps(sent, self.first_sent, self.last_sent),
            "clock": self.clock.describe(),
        }


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr)


def rate_rps(n: int, first: float, last: float) -> float | None:
    """Requests per second of ``n`` sends from ``first`` to ``last`` (``n - 1`` gaps); None for fewer
    than two, or all at one instant."""
    return (n - 1) / (last - first) if n > 1 and last > first else None


class RayWorkers:
    """``n`` ``LoadWorker`` actors on the Ray cluster of ``placement``, for the runs of one replay.

    ``with RayWorkers(...) as pool``: joins (or starts) Ray, places the actors and checks their clocks,
    so a cluster that cannot serve is refused before any record is written; ``pool.run(...)`` per
    endpoint; leaving kills the actors, removes the placement group and disconnects, however it is left.
    """

    def __init__(self, placement: RayPlacement, n: int) -> None:
        self.placement, self.n = placement, n
        self._stack = contextlib.ExitStack()
        self._ray: Any = None
        self._actors: list[Any] = []
        self._where: list[dict[str, Any]] = []
        self._tallies: list[_Tally] = []
        self.strategy = ""

    def __enter__(self) -> RayWorkers:
        with contextlib.ExitStack() as stack:
            self._ray = stack.enter_context(
                connected(
                    self.placement.address, flag=FLAG, cpus=self.n if self.placement.address is None else None
                )
            )
            self._place(stack)
            self.clocks()  # refused here: nothing written yet
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _place(self, stack: contextlib.ExitStack) -> None:
        ray = self._ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1]
        self.strategy = "STRICT_SPREAD" if len(nodes) >= self.n else "SPREAD"
        if self.strategy == "SPREAD":
            _warn(
                f"{self.n} Ray workers on {len(nodes)} node(s) with a CPU: some share a node (SPREAD, not "
                "one per node)"
            )
        pg = placement_group([{"CPU": 1}] * self.n, strategy=self.strategy)
        stack.callback(remove_placement_group, pg)
        try:
            ray.get(pg.ready(), timeout=_PLACE_S)
        except ray.exceptions.GetTimeoutError:
            cpus = int(ray.cluster_resources().get("CPU", 0))
            raise CapabilityError(
                f"the Ray cluster cannot place {self.n} workers of one CPU each within {_PLACE_S:.0f} s "
                f"({cpus} CPUs, {len(nodes)} nodes); ask for fewer --workers"
            ) from None
        actor = ray.remote(num_cpus=1, max_restarts=0)(LoadWorker)
        for k in range(self.n):
            strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=k)
            handle = actor.options(scheduling_strategy=strategy).remote()
            self._actors.append(handle)
            stack.callback(ray.kill, handle)
        try:
            self._where = ray.get([a.where.remote() for a in self._actors])
        except ray.exceptions.RayError as exc:
            raise CapabilityError(f"a Ray load worker did not start: {first_line(exc)}") from None

    def clocks(self) -> list[ClockOffset]:
        """Every actor's clock offset, measured now; refuses (``CapabilityError``) any whose bound
        exceeds ``max_clock_bound_s``."""
        ray, out = self._ray, []
        for k, actor in enumerate(self._actors):
            samples = []
            for _ in range(ROUND_TRIPS):
                t_send = time.monotonic()
                t_remote = ray.get(actor.clock.remote())
                samples.append((t_send, t_remote, time.monotonic()))
            clock = estimate(samples)
            if clock.bound_s > self.placement.max_clock_bound_s:
                raise CapabilityError(
                    f"Ray worker {k} on {self._where[k]['node_ip']}: its clock offset cannot be bounded below "
                    f"{self.placement.max_clock_bound_s * 1e3:g} ms (best of {ROUND_TRIPS} round trips: "
                    f"±{clock.bound_s * 1e3:.2f} ms); refusing the run (--max-clock-bound-ms)"
                )
            out.append(clock)
        return out

    def run(
        self,
        endpoint: Endpoint,
        trace: Trace,
        schedule: Schedule,
        make_setup: Callable[[float, float], WorkerSetup],
        on_record: Callable[[RequestRecord], None],
        on_tick: Callable[[int], None],
        sessions: SessionPlan | None = None,
    ) -> dict[str, Any]:
        """One endpoint's run of ``schedule`` across the actors; ``on_record`` gets every record here.
        In session mode (``sessions``, the plan the setup carries) a session's turns stay on one actor,
        whose gate then sees every predecessor it waits for.
        Returns the actors' event-loop stalls, merged; ``describe()`` then gives each worker's figures.
        Ctrl-C stops the actors, collects what they recorded, then re-raises KeyboardInterrupt."""
        ray = self._ray
        shards = shard(trace, schedule, self.n, None if sessions is None else sessions.session_id)
        trace_ref, schedule_ref = ray.put(trace), ray.put(schedule)
        # the trace and the schedule travel once; each actor gets its shard's indices
        loads = [
            a.load.remote(endpoint, trace_ref, schedule_ref, s, k, self.n)
            for k, (a, s) in enumerate(zip(self._actors, shards, strict=True))
        ]
        counts = ray.get(loads)
        clocks = self.clocks()
        offsets = schedule.offset_s
        assert offsets is not None
        self._tallies = [
            _Tally(n, rate_rps(len(s), float(offsets[s[0]]), float(offsets[s[-1]])) if s else None, c)
            for n, s, c in zip(counts, shards, clocks, strict=True)
        ]
        # ahead of the driver's clock by far more than the slowest round trip: every start arrives in time
        lead = max(_MIN_LEAD_S, _LEAD_RTTS * 2 * max(c.bound_s for c in clocks))
        t0 = time.monotonic() + lead
        setup = make_setup(t0, time.time() + lead)
        starts = [
            a.start.remote(dataclasses.replace(setup, t0=c.to_remote(t0)))
            for a, c in zip(self._actors, clocks, strict=True)
        ]
        ray.get(starts)
        if (late := time.monotonic() - t0) > 0:
            _warn(f"the common start reached the last Ray worker {late * 1e3:.0f} ms late (see send lag)")
        return merge(self._collect(on_record, on_tick))

    def _collect(self, on_record, on_tick) -> list[dict[str, Any]]:
        ray = self._ray
        live = dict(enumerate(self._actors))
        dispatched = dict.fromkeys(live, 0)
        loops: list[dict[str, Any]] = []
        failures: list[str] = []
        with ctrl_c_counter() as ctrl_c:
            stop_by = math.inf
            while live:
                if ctrl_c.count and stop_by == math.inf:
                    stop_by = time.monotonic() + _STOP_S
                    for a in live.values():
                        a.cancel.remote()
                if ctrl_c.count > 1 or time.monotonic() > stop_by:
                    break  # a second Ctrl-C, or actors that do not stop: leaving kills them
                refs = {k: a.take.remote() for k, a in live.items()}
                for k, ref in refs.items():
                    try:
                        records, sent, outcome = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        failures.append(
                            f"Ray worker {k} on {self._where[k]['node_ip']} was lost: {first_line(exc)}"
                        )
                        del live[k]
                        continue
                    for rec in records:
                        on_record(rec)
                        self._tallies[k].add(rec)
                    dispatched[k] = sent
                    if outcome is not None:
                        del live[k]
                        if outcome[0] == "done":
                            loops.append(outcome[1])
                        else:
                            failures.append(f"Ray worker {k}: {outcome[1]}")
                on_tick(sum(dispatched.values()))
                if live:
                    time.sleep(_POLL_S)
        if ctrl_c.count:
            raise KeyboardInterrupt
        if failures:
            raise RuntimeError("replay worker failed: " + "; ".join(failures))
        return loops

    def describe(self) -> dict[str, Any]:
        """meta.json's figures: the placement, and per worker where it ran and its last run's figures."""
        return {
            "strategy": self.strategy,
            **self.placement.describe(),
            "workers": [
                {"worker": k, **where, **(tally.describe() if tally else {})}
                for k, (where, tally) in enumerate(
                    zip(self._where, self._tallies or [None] * len(self._where), strict=True)
                )
            ],
        }
