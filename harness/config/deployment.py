"""The deployment tables: ``[model]``, ``[hardware]``, ``[workload]``, ``[slo]``, ``[topologies.NAME]``
(``[link]`` is a ``ModelledLink``). ``harness.model.deployment`` turns them into a ``Deployment``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from harness.config.base import (
    MAX_INSTANCES,
    MAX_OUTPUT_TOKENS,
    MAX_TOKENS,
    FieldError,
    Float,
    Fraction,
    Instances,
    Int,
    NonNegative,
    Positive,
    Str,
    Tokens,
    table,
)
from harness.errors import InputError
from harness.traces.sessions import ThinkTime

TopologyKind = Literal["homogeneous", "naive", "prfaas", "colocated"]
REMOTE_KINDS = ("naive", "prfaas")

OutputTokens = Annotated[Int, Field(ge=1, le=MAX_OUTPUT_TOKENS)]
TokenBound = Annotated[Float, Field(gt=0, le=MAX_TOKENS)]


@table
class ModelTable:
    preset: Str  # a preset name (harness/presets/models) or a TOML path relative to the scenario


@table
class HardwareTable:
    local: Str  # hardware preset of the local (PD) site: a name or a TOML path
    remote: Str | None = None  # of the remote PrfaaS prefill site
    gpus_per_instance: Annotated[Int, Field(ge=1, le=1024)] = 8
    local_price_per_gpu_hour: NonNegative | None = None  # overrides the preset's price
    remote_price_per_gpu_hour: NonNegative | None = None


@table
class Slo:
    """Service-level objectives: TPOT bound (ms), optional TTFT bound (s), attainment target."""

    tpot_ms: Positive
    ttft_s: Positive | None = None
    attainment: Fraction = 0.99

    @property
    def tpot_s(self) -> float:
        return self.tpot_ms / 1000.0


@table
class LognormalWorkload:
    """Input lengths from a log-normal truncated to [min_tokens, max_tokens]."""

    kind: Literal["lognormal"]
    mu: Float
    sigma: Annotated[Float, Field(gt=0, le=10)]
    output_tokens: OutputTokens
    min_tokens: TokenBound = 128.0
    max_tokens: TokenBound = 131072.0
    rate_rps: Positive | None = None  # simulate's default Poisson rate

    @model_validator(mode="after")
    def _ordered(self) -> LognormalWorkload:
        if self.min_tokens >= self.max_tokens:
            raise FieldError(
                "min_tokens", f"must be below max_tokens ({self.min_tokens:g} >= {self.max_tokens:g})"
            )
        return self


@table
class FixedWorkload:
    kind: Literal["fixed"]
    tokens: Tokens
    output_tokens: OutputTokens
    rate_rps: Positive | None = None


@table
class UniformWorkload:
    kind: Literal["uniform"]
    min_tokens: Tokens
    max_tokens: Tokens
    output_tokens: OutputTokens
    rate_rps: Positive | None = None

    @model_validator(mode="after")
    def _ordered(self) -> UniformWorkload:
        if self.min_tokens > self.max_tokens:
            raise FieldError(
                "min_tokens", f"must not exceed max_tokens ({self.min_tokens} > {self.max_tokens})"
            )
        return self


@table
class TraceWorkload:
    """Input lengths (and, unless ``output_tokens`` is set, the mean output) from a trace file."""

    kind: Literal["trace"]
    trace: Str  # relative to the scenario file
    output_tokens: OutputTokens | None = None
    rate_rps: Positive | None = None
    # Session mode for simulate and replay: "trace", "fixed:S" or "exp:MEAN", the think time between a
    # turn's end and the next turn (harness.traces.sessions.ThinkTime); absent: every row open loop.
    sessions: Str | None = None

    @model_validator(mode="after")
    def _sessions(self) -> TraceWorkload:
        if self.sessions is not None:
            try:
                ThinkTime.parse(self.sessions)
            except InputError as exc:
                raise FieldError("sessions", str(exc)) from None
        return self


WorkloadTable = Annotated[
    LognormalWorkload | FixedWorkload | UniformWorkload | TraceWorkload, Field(discriminator="kind")
]


@table
class TopologyTable:
    """One ``[topologies.NAME]``. Counts left out are the planner's to choose (see ``counts``)."""

    kind: TopologyKind
    local_instances: Annotated[Int, Field(ge=1, le=MAX_INSTANCES)]
    remote_instances: Instances | None = None
    n_p: Instances | None = None
    n_d: Annotated[Int, Field(ge=1, le=MAX_INSTANCES)] | None = None
    n_prfaas: Annotated[Int, Field(ge=1, le=MAX_INSTANCES)] | None = None
    threshold_tokens: TokenBound | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TopologyTable:
        self.counts()
        return self

    def counts(self) -> tuple[int, int | None, int | None, int | None]:
        """``(remote_instances, n_p, n_d, n_prfaas)`` with what the table implies filled in (a split
        given on one side fixes the other); None where the planner chooses."""
        kind, local = self.kind, self.local_instances
        remote = self.remote_instances
        if kind in REMOTE_KINDS:
            if remote is None:
                raise FieldError("remote_instances", f"missing (required for a {kind} topology)")
            if remote < 1:
                raise FieldError("remote_instances", f"a {kind} topology needs at least 1, got {remote}")
        elif remote:
            raise FieldError("remote_instances", f"a {kind} topology has no remote site; remove it or set 0")
        if self.threshold_tokens is not None and kind != "prfaas":
            raise FieldError("threshold_tokens", f"only a prfaas topology routes by length, not {kind}")
        n_p, n_d = self.n_p, self.n_d
        if kind == "naive":
            if n_p:
                raise FieldError("n_p", "a naive topology prefills everything remotely; n_p must be 0")
            n_p, n_d = 0, n_d or local
        if kind in ("homogeneous", "prfaas"):
            if n_p is not None and n_d is None:
                n_d = local - n_p
            elif n_d is not None and n_p is None:
                n_p = local - n_d
        if n_p is not None and n_d is not None and (n_p + n_d != local or n_d < 1):
            raise FieldError(
                "n_p", f"n_p + n_d must equal local_instances ({n_p} + {n_d} != {local}) with n_d >= 1"
            )
        if kind == "homogeneous" and local < 2:  # at least one prefill and one decode instance
            raise FieldError(
                "local_instances", f"a homogeneous topology needs at least 2 (prefill + decode), got {local}"
            )
        if kind == "homogeneous" and n_p is not None and n_p < 1:
            raise FieldError("n_p", "a homogeneous topology needs at least 1 prefill instance")
        n_prfaas = None
        if kind in REMOTE_KINDS:
            assert remote is not None
            n_prfaas = self.n_prfaas or remote
            if n_prfaas > remote:
                raise FieldError("n_prfaas", f"exceeds remote_instances ({n_prfaas} > {remote})")
        return remote or 0, n_p, n_d, n_prfaas
