"""What the emulated endpoints put on the wire besides the OpenAI fields.

* The ``prfaas`` breakdown object (format owned by ``harness.loadgen.sse`` / docs/replay.md): route,
  sites, instances, cached tokens, KV bytes, and phase times as Unix epoch seconds, with
  ``prefill_queue_s`` a duration. Times are converted from the serving loop's clock, which runs
  ``speedup`` times faster than the wall clock, so every figure a client sees is in wall seconds.
* ``kv_transfer_params`` of vLLM's PD-proxy protocol: a prefill leg carries
  ``{"do_remote_decode": true}`` and returns ``{"do_remote_prefill": true, "remote_engine_id",
  "remote_block_ids", "remote_host", "remote_port", ...}`` for the decode leg. The emulator adds
  ``transfer_id`` (the KV transfer the decode leg waits for) and its own timing fields.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness import pdproxy
from harness.serving.cluster import Outcome
from harness.serving.instances import PrefillTimes
from harness.serving.site import PrefillResult

PRFAAS_KEY = "prfaas"


@dataclass(frozen=True)
class WallClock:
    """Maps the serving loop's clock (``time.monotonic() * speedup``) to wall-clock epoch seconds."""

    speedup: float
    epoch_offset_s: float  # time.time() - time.monotonic() when the process started

    @classmethod
    def now(cls, speedup: float) -> WallClock:
        return cls(speedup, time.time() - time.monotonic())

    def epoch(self, loop_t: float) -> float:
        return loop_t / self.speedup + self.epoch_offset_s

    def loop_time(self, epoch_s: float) -> float:
        """The inverse of ``epoch``: an epoch time on this loop's clock."""
        return (epoch_s - self.epoch_offset_s) * self.speedup

    def seconds(self, loop_dt: float) -> float:
        """A loop-clock duration in wall seconds."""
        return loop_dt / self.speedup


def prefill_fields(result: PrefillResult, clock: WallClock) -> dict[str, Any]:
    """The breakdown fields a prefill determines (epoch times, queue duration in wall seconds)."""
    t = result.times
    return {
        "prefill_site": result.site,
        "prefill_instance": t.instance,
        "cached_tokens": int(t.cached_tokens),
        "kv_bytes": int(result.kv_bytes),
        "prefill_queue_s": clock.seconds(t.start_s - t.enqueued_s),
        "prefill_start_s": clock.epoch(t.start_s),
        "prefill_end_s": clock.epoch(t.end_s),
        "kv_transfer_start_s": clock.epoch(result.transfer_start_s),
        "kv_transfer_end_s": clock.epoch(result.transfer_end_s),
    }


def outcome_fields(out: Outcome, clock: WallClock) -> dict[str, Any]:
    """The breakdown of a request the router dispatched (``Cluster.dispatch``), up to its decode."""
    assert out.route is not None and out.prefill is not None
    fields = {"route": out.route.route, **prefill_fields(out.prefill, clock)}
    if out.route.route == "colocated":  # the KV never left its GPUs
        for key in ("kv_bytes", "kv_transfer_start_s", "kv_transfer_end_s"):
            fields.pop(key)
    fields.update(decode_site=out.decode_site, decode_instance=out.decode_instance)
    return fields


def prefill_result(params: Mapping[str, Any], clock: WallClock) -> PrefillResult:
    """The ``PrefillResult`` a prefill leg's ``kv_transfer_params`` describe, on this loop's clock
    (the inverse of ``prefill_fields``). Raises KeyError, TypeError or ValueError if a field is
    missing or malformed."""
    start = clock.loop_time(float(params["prefill_start_s"]))
    times = PrefillTimes(
        instance=str(params["prefill_instance"]),
        enqueued_s=start - float(params["prefill_queue_s"]) * clock.speedup,
        start_s=start,
        end_s=clock.loop_time(float(params["prefill_end_s"])),
        cached_tokens=int(params["cached_tokens"]),
    )
    return PrefillResult(
        site=str(params["prefill_site"]),
        times=times,
        kv_bytes=int(params["kv_bytes"]),
        transfer_start_s=clock.loop_time(float(params["kv_transfer_start_s"])),
        transfer_end_s=clock.loop_time(float(params["kv_transfer_end_s"])),
    )


def prefill_leg_params(
    fields: Mapping[str, Any], *, transfer_id: str, engine_id: str, host: str | None, port: int | None
) -> dict[str, Any]:
    """``kv_transfer_params`` a prefill leg returns: vLLM's keys plus the emulator's breakdown fields."""
    return {
        "do_remote_prefill": True,
        "do_remote_decode": False,
        "remote_engine_id": engine_id,
        "remote_block_ids": [],
        "remote_host": host,
        "remote_port": port,
        "transfer_id": transfer_id,
        **fields,
    }


def breakdown_from_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The breakdown fields carried by a prefill leg's ``kv_transfer_params`` (unknown keys dropped)."""
    keep = (
        "prefill_site",
        "prefill_instance",
        "cached_tokens",
        "kv_bytes",
        "prefill_queue_s",
        "prefill_start_s",
        "prefill_end_s",
        "kv_transfer_start_s",
        "kv_transfer_end_s",
    )
    return {k: params[k] for k in keep if k in params}


@dataclass(frozen=True)
class ClientRequest:
    """A client's request as it arrived (``ServeRequest.payload``): what a prefill leg is built from."""

    path: str  # "/v1/completions" or "/v1/chat/completions"
    body: Mapping[str, Any]


def prefill_leg_body(
    body: Mapping[str, Any], *, transfer_id: str, decode_site: str, extra: Mapping[str, Any]
) -> dict[str, Any]:
    """A PD prefill leg as vLLM's proxy builds it (``harness.pdproxy``); the emulator adds the transfer
    id and decode site (and ``extra``: a prefix to pull, ``prefix_site`` and ``prefix_tokens``)."""
    return pdproxy.prefill_leg_body(body, transfer_id=transfer_id, decode_site=decode_site, **extra)
