"""The tables of the commands that run a scenario: ``[simulate]``, ``[emulation]`` (serve), ``[bench]``
and ``[replay]``. Defaults are the field defaults; units are in the field names.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from harness.config.base import (
    MAX_TOKENS,
    Bool,
    FieldError,
    Float,
    Int,
    NonNegative,
    Positive,
    Requests,
    Seed,
    Speedup,
    Str,
    given,
    table,
)
from harness.config.links import RateMbit


def _unbounded(value: Any) -> Any:
    """``"unbounded"`` is no limit (None); any other string is a mistake worth its own words."""
    if value == "unbounded":
        return None
    if isinstance(value, str):
        raise ValueError(f'must be a number of GiB or "unbounded", got {value!r}')
    return value


@table
class SimulateSpec:
    """``[simulate]``: options of ``simulate`` (and of bench's simulation stages).

    requests              synthetic requests per run (and per --find-max-rate probe)
    intra_site_gbps       each site's RDMA fabric for PD-P -> PD-D KV (one shared fluid link)
    cache_capacity_gib    prefix cache per site ("unbounded" in the file is None here; 0 disables it)
    prfaas_cache          "local": a site's own prefix decides; "global": the best prefix anywhere
    prefix_cache          "hybrid": a hybrid model's hits end where its linear state was saved (the
                          preset's checkpoints); "blocks": any block boundary, linear state ignored
    prefill_batch_tokens  batch queued prefills up to this many uncached tokens (0: one at a time); on a
                          colocated instance also the chunked-prefill step's token budget (0: one step)
    bandwidth_aware       re-tune the PrfaaS threshold from link utilisation and queues
    decode_batch_max      default: the planner's BS_max (TPOT SLO at the mean decode context)
    sample_interval_s     time-series grid (virtual seconds)
    ttft_slo_s            --find-max-rate's TTFT bound when [slo] has no ttft_s
    """

    requests: Requests = 2000
    seed: Seed = 0
    intra_site_gbps: Positive = 400.0
    cache_capacity_gib: Annotated[NonNegative | None, BeforeValidator(_unbounded)] = 1024.0
    prfaas_cache: Literal["local", "global"] = "local"
    prefix_cache: Literal["hybrid", "blocks"] = "hybrid"
    prefill_batch_tokens: Annotated[Int, Field(ge=0, le=MAX_TOKENS)] = 0
    bandwidth_aware: Bool = False
    decode_batch_max: Annotated[Int, Field(ge=1, le=4096)] | None = None
    sample_interval_s: Annotated[Float, Field(ge=0.01)] = 1.0  # the grid's length sizes a loop
    ttft_slo_s: Positive = 30.0


@table
class EmulationSpec:
    """``[emulation]``: how ``serve`` runs a scenario."""

    speedup: Speedup = 1.0  # s: emulated time runs s× faster than the modelled deployment
    kv_rate_mbit: RateMbit = 800.0  # R_emu of the inter-site link (a [network] link's rate wins)
    layers: Annotated[Int, Field(ge=1, le=1024)] = 8  # KV chunks per transfer, each sent as produced
    connections: Annotated[Int, Field(ge=1, le=64)] = 1  # TCP connections per site pair for KV
    max_waiting: Annotated[Int, Field(ge=1, le=1_000_000)] = 1024  # waiting in a site before 429
    retry_after_s: Annotated[Int, Field(ge=0, le=3600)] = 1
    context_tokens: Annotated[Int, Field(ge=1, le=MAX_TOKENS)] = 131072  # longest prompt + max_tokens
    block_tokens: Annotated[Int, Field(ge=1, le=65536)] = 512  # prefix-cache block size, in tokens
    model_name: Str = ""  # served model name; "" means the scenario's [model] preset


@table
class BenchSizes:
    """How big each bench stage is (``[bench]``, and ``[bench.quick]`` for ``--quick``)."""

    replay_rate_rps: Positive | None = None
    replay_requests: Requests | None = None
    capacity_requests: Requests | None = None
    speedup: Speedup | None = None
    seed: Seed | None = None
    # The capacity ladder: offered rates as shares of each topology's simulated Λ_max ([] = no ladder)
    ladder_shares: Annotated[list[Annotated[Float, Field(gt=0, le=10)]], Field(max_length=16)] | None = None
    ladder_span_s: Annotated[Float, Field(gt=0, le=100_000)] | None = None  # model s of arrivals per rung

    def given(self) -> dict[str, Any]:
        return given(self, BenchSizes)


# --quick has no capacity ladder unless [bench.quick] asks for one: a rung must span a few hundred
# model seconds for its keep-up test to resolve a few percent, and 3 topologies x 3 rungs of that take
# ~10 minutes (README, "What bench runs").
QUICK_LADDER: dict[str, Any] = {"ladder_shares": ()}


@table
class BenchTable(BenchSizes):
    quick: BenchSizes | None = None

    def resolve(self, *, quick: bool) -> BenchSpec:
        """The sizes in force: ``[bench]``, then ``[bench.quick]`` over it when ``quick`` (without a
        ``[bench.quick]`` table a quick run shrinks on its own; it has no ladder unless
        ``[bench.quick]`` gives ``ladder_shares``)."""
        chosen = self.given()
        if quick:  # no ladder unless [bench.quick] names one
            small = {"replay_requests": 60, "capacity_requests": 1000}
            chosen.update(QUICK_LADDER)
            chosen.update((self.quick.given() if self.quick is not None else {}) or small)
        if "ladder_shares" in chosen:
            chosen["ladder_shares"] = tuple(sorted(chosen["ladder_shares"]))
        return BenchSpec(**chosen)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchSpec:
    """How big each bench stage is.

    replay_rate_rps   offered rate of the paired simulate/replay workload, in the modelled deployment's
                      requests per second (default: 75% of the smallest planner Λ_max, so every
                      topology is loaded but stable and TTFT differences come from the topology)
    replay_requests   requests in that workload (the same requests go to every topology)
    capacity_requests requests per --find-max-rate probe
    speedup           emulator speed-up (default: the scenario's [emulation] speedup)
    ladder_shares     the capacity ladder's rungs, as shares of each topology's simulated Λ_max; each
                      rung is replayed and simulated and judged as a Λ_max probe (empty: no ladder)
    ladder_span_s     arrival span of one rung in model seconds (requests = rate × span)
    """

    replay_rate_rps: float | None = None
    replay_requests: int = 240
    capacity_requests: int = 2000
    speedup: float | None = None
    seed: int = 0
    ladder_shares: tuple[float, ...] = (0.85, 1.0, 1.15)
    ladder_span_s: float = 240.0


@table
class EndpointTable:
    """One ``[replay.endpoints]`` entry (a bare string is its ``url``)."""

    url: Str | None = None
    prefill_url: Str | None = None
    decode_url: Str | None = None
    model: Str | None = None
    api: Literal["completions", "chat"] | None = None


def _url_table(value: Any) -> Any:
    return {"url": value} if isinstance(value, str) else value


@table
class ReplayTable:
    """``[replay]``: defaults for ``replay --scenario`` (flags given on the command line win)."""

    model: Str | None = None
    api: Literal["completions", "chat"] | None = None
    trace: Str | None = None  # relative to the scenario file; else [workload] trace
    window_s: Annotated[list[NonNegative], Field(min_length=2, max_length=2)] | None = None
    speedup: Positive | None = None
    shaping_backend: Str | None = None
    warmup_s: NonNegative | None = None
    cooldown_s: NonNegative | None = None
    seed: Seed | None = None
    scrape_interval_s: Annotated[Float, Field(ge=0, le=3600)] | None = None  # servers' /metrics; 0 = off
    scrape_metrics: Annotated[list[Str], Field(min_length=1, max_length=256)] | None = None
    endpoints: dict[Str, Annotated[EndpointTable, BeforeValidator(_url_table)]] = dataclasses.field(
        default_factory=dict
    )

    @model_validator(mode="after")
    def _window(self) -> ReplayTable:
        if self.window_s is not None and not self.window_s[0] < self.window_s[1]:
            raise FieldError("window_s", f"must be [start, end) with start < end, got {self.window_s}")
        return self
