"""Hardware and model presets: TOML data files under ``harness/presets/``, parsed into frozen specs.

A preset is named by its file stem (``H200`` -> ``hardware/h200.toml``, case-insensitive), or given as a
path to the user's own TOML file in the same format. Every KV size is *derived* from architecture
fields, never typed in: per-token KV from the full-attention layers, the fixed per-sequence state from
the linear-attention layers.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from harness.config.base import (
    MAX_TOKENS,
    FieldError,
    Fraction,
    Int,
    NonNegative,
    Positive,
    Str,
    parse,
    read_toml,
    table,
)
from harness.errors import ScenarioError

_PRESETS = "presets"
Layers = Annotated[Int, Field(ge=1, le=1000)]
Dim = Annotated[Int, Field(ge=1, le=1_000_000)]
KindDim = Annotated[Int, Field(ge=0, le=1_000_000)]  # 0: a field of the other attention kind
DtypeBytes = Annotated[Int, Field(ge=1, le=8)]


@table
class Calibration:
    """Effective-throughput factors fitted to the PrfaaS paper (docs/planner.md has the fit).

    prefill_overhead_s    fixed cost of one prefill (scheduling, launches, MoE dispatch)
    gemm_efficiency       achieved fraction of peak on the linear prefill FLOPs (2 * active params)
    attention_efficiency  achieved fraction of peak on the quadratic attention FLOPs
    decode_overhead_s     fixed cost of one decode step
    decode_efficiency     achieved fraction of peak on the per-token decode FLOPs
    hbm_efficiency        achieved fraction of HBM bandwidth when streaming weights and KV
    memory_utilization    fraction of HBM the server may fill with weights plus KVCache
    frontend_s            per-request time outside the engine before its first token (HTTP, tokenising,
                          detokenising, streaming): it delays the request but runs beside the engine,
                          so it occupies no instance (0 in the paper's presets; ``calibrate`` splits it
                          from the prefill intercept where the engine reports its own prefill time)
    """

    prefill_overhead_s: NonNegative
    gemm_efficiency: Fraction
    attention_efficiency: Fraction
    decode_overhead_s: NonNegative
    decode_efficiency: Fraction
    hbm_efficiency: Fraction
    memory_utilization: Fraction
    frontend_s: NonNegative = 0.0


@table
class Hardware:
    """One GPU type (figures are per GPU). ``price_per_gpu_hour`` is the user's own number (USD)."""

    name: Str
    bf16_tflops: Positive
    fp8_tflops: Positive
    hbm_tbps: Positive
    hbm_gb: Positive
    price_per_gpu_hour: NonNegative
    calibration: Calibration
    description: Str = ""

    def peak_flops(self, dtype: str) -> float:
        """Dense peak FLOP/s of one GPU for ``"bf16"`` or ``"fp8"``."""
        return (self.fp8_tflops if dtype == "fp8" else self.bf16_tflops) * 1e12


_KIND_FIELDS = {
    "gqa": ("kv_heads", "head_dim"),
    "mla": ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"),
}


@table
class Attention:
    """The full-attention layers (the only ones holding per-token KV). ``kind`` is ``mla`` or ``gqa``;
    the fields of the other kind stay 0."""

    kind: Literal["mla", "gqa"]
    layers: Layers
    heads: Dim
    kv_dtype_bytes: DtypeBytes
    kv_heads: KindDim = 0
    head_dim: KindDim = 0
    kv_lora_rank: KindDim = 0
    qk_rope_head_dim: KindDim = 0
    qk_nope_head_dim: KindDim = 0
    v_head_dim: KindDim = 0

    @model_validator(mode="after")
    def _fields_of_its_kind(self) -> Attention:
        for kind, names in _KIND_FIELDS.items():
            for name in names:
                if kind == self.kind and not getattr(self, name):
                    raise FieldError(name, f"missing (required for {kind} attention)")
                if kind != self.kind and getattr(self, name):
                    raise FieldError(name, f"is a {kind} field; this attention is {self.kind}")
        return self

    @property
    def kv_bytes_per_token(self) -> int:
        """Cached bytes per token over all full-attention layers (MLA: latent + RoPE key; GQA: K and V)."""
        if self.kind == "mla":
            per_layer = (self.kv_lora_rank + self.qk_rope_head_dim) * self.kv_dtype_bytes
        else:
            per_layer = 2 * self.kv_heads * self.head_dim * self.kv_dtype_bytes
        return self.layers * per_layer

    @property
    def qk_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim if self.kind == "mla" else self.head_dim

    @property
    def v_dim(self) -> int:
        return self.v_head_dim if self.kind == "mla" else self.head_dim

    @property
    def flops_per_query_key(self) -> int:
        """FLOPs for one query token against one key token, over all layers (QK^T plus PV, 2 per MAC)."""
        return 2 * self.layers * self.heads * (self.qk_dim + self.v_dim)


@table
class LinearAttention:
    """Linear-attention (e.g. KDA) layers: a fixed ``heads x head_dim_k x head_dim_v`` state each.

    ``state_checkpoint_every_blocks``: where a prefill saves that state for the prefix cache, besides
    its prompt's last full block (the only place by default, 0): every that many cache blocks. A cached
    prefix is reusable only up to a saved state (harness/serving/cache.py).
    """

    layers: Layers
    heads: Dim
    head_dim_k: Dim
    head_dim_v: Dim
    state_dtype_bytes: DtypeBytes
    state_checkpoint_every_blocks: Annotated[Int, Field(ge=0, le=1_000_000)] = 0

    @property
    def state_bytes(self) -> int:
        return self.layers * self.heads * self.head_dim_k * self.head_dim_v * self.state_dtype_bytes

    @property
    def flops_per_token(self) -> int:
        """State update (k^T v) plus readout (q S): 2 matrix-vector products of 2 FLOPs per MAC."""
        return 4 * self.layers * self.heads * self.head_dim_k * self.head_dim_v


@table
class Moe:
    """Mixture-of-experts routing: ``experts_per_token`` of ``experts`` per layer."""

    experts: Dim
    experts_per_token: Dim

    @model_validator(mode="after")
    def _fewer_per_token(self) -> Moe:
        if self.experts_per_token >= self.experts:
            raise FieldError("experts_per_token", f"must be below experts ({self.experts})")
        return self


@table
class ModelSpec:
    """A model's architecture, from which the cost model derives FLOPs and KV bytes."""

    name: Str
    params_total: Positive
    params_active: Positive
    context_length: Annotated[Int, Field(ge=1, le=MAX_TOKENS)]
    weight_bytes_per_param: Positive
    attention: Attention
    compute_dtype: Literal["bf16", "fp8"] = "bf16"
    linear_attention: LinearAttention | None = None
    moe: Moe | None = None
    description: Str = ""

    @model_validator(mode="after")
    def _active_within_total(self) -> ModelSpec:
        if self.params_active > self.params_total:
            raise FieldError("params_active", f"exceeds params_total ({self.params_total:g})")
        return self

    @property
    def kv_bytes_per_token(self) -> int:
        """KVCache bytes each token adds (full-attention layers only)."""
        return self.attention.kv_bytes_per_token

    @property
    def state_bytes_per_seq(self) -> int:
        """Fixed recurrent-state bytes per sequence (linear-attention layers), independent of length."""
        return self.linear_attention.state_bytes if self.linear_attention else 0

    @property
    def num_layers(self) -> int:
        return self.attention.layers + (self.linear_attention.layers if self.linear_attention else 0)

    @property
    def weight_bytes(self) -> float:
        return self.params_total * self.weight_bytes_per_param

    @property
    def linear_flops_per_token(self) -> float:
        """Forward FLOPs per token that do not depend on context: 2 per active parameter plus linear attention."""
        extra = self.linear_attention.flops_per_token if self.linear_attention else 0
        return 2.0 * self.params_active + extra

    def weight_bytes_read(self, batch_size: int) -> float:
        """Expected weight bytes one decode step streams from HBM for ``batch_size`` tokens.

        A MoE layer reads only the experts some token in the batch routed to: with uniform routing the
        expected share is ``1 - (1 - k/E)^B``. Dense models read every weight.
        """
        if self.moe is None or batch_size <= 0:
            return self.weight_bytes if batch_size > 0 else 0.0
        e, k = self.moe.experts, self.moe.experts_per_token
        per_expert = (self.params_total - self.params_active) / (e - k)
        shared = self.params_active - k * per_expert
        touched = e * (1.0 - (1.0 - k / e) ** batch_size)
        return (shared + touched * per_expert) * self.weight_bytes_per_param


# ---------------------------------------------------------------------------------------------- loading


def known_presets(kind: str) -> list[str]:
    """Names of the shipped presets of ``kind`` (``"hardware"`` or ``"models"``)."""
    folder = resources.files("harness").joinpath(_PRESETS, kind)
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def _read_preset(kind: str, name_or_path: str | Path, base: Path | None) -> tuple[Mapping[str, Any], str]:
    text, label = str(name_or_path), kind.removesuffix("s")
    looks_like_path = text.endswith(".toml") or "/" in text or "\\" in text
    if looks_like_path:
        path = Path(text)
        if not path.is_absolute() and base is not None:
            path = base / path
        if not path.is_file():
            raise ScenarioError(f"no such {label} preset file", where=str(path))
        data, where = path.read_bytes(), str(path)
    else:
        names = known_presets(kind)
        match = next((n for n in names if n.lower() == text.lower()), None)
        if match is None:
            raise ScenarioError(
                f"unknown {label} preset {text!r}; known: {', '.join(names)} (or a .toml path)"
            )
        res = resources.files("harness").joinpath(_PRESETS, kind, f"{match}.toml")
        data, where = res.read_bytes(), f"{label} preset {match}"
    return read_toml(data, source=where), where


def load_hardware(name_or_path: str | Path, *, base: Path | None = None) -> Hardware:
    """Load a hardware preset by name (``H200``) or from a TOML path (relative to ``base`` if given)."""
    raw, where = _read_preset("hardware", name_or_path, base)
    return parse(Hardware, raw, source=where)


def load_model(name_or_path: str | Path, *, base: Path | None = None) -> ModelSpec:
    """Load a model preset by name (``kimi-1t-hybrid``) or from a TOML path (relative to ``base`` if given)."""
    raw, where = _read_preset("models", name_or_path, base)
    return parse(ModelSpec, raw, source=where)
