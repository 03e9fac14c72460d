"""Hardware and model presets: TOML data files under ``harness/presets/``, parsed into frozen specs.

A preset is named by its file stem (``H200`` -> ``hardware/h200.toml``, case-insensitive), or given as a
path to the user's own TOML file in the same format. Every KV size is *derived* from architecture
fields, never typed in: per-token KV from the full-attention layers, the fixed per-sequence state from
the linear-attention layers.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from harness.errors import ScenarioError

_PRESETS = "presets"


@dataclass(frozen=True)
class Calibration:
    """Effective-throughput factors fitted to the PrfaaS paper (docs/planner.md has the fit).

    prefill_overhead_s    fixed cost of one prefill (scheduling, launches, MoE dispatch)
    gemm_efficiency       achieved fraction of peak on the linear prefill FLOPs (2 * active params)
    attention_efficiency  achieved fraction of peak on the quadratic attention FLOPs
    decode_overhead_s     fixed cost of one decode step
    decode_efficiency     achieved fraction of peak on the per-token decode FLOPs
    hbm_efficiency        achieved fraction of HBM bandwidth when streaming weights and KV
    memory_utilization    fraction of HBM the server may fill with weights plus KVCache
    """

    prefill_overhead_s: float
    gemm_efficiency: float
    attention_efficiency: float
    decode_overhead_s: float
    decode_efficiency: float
    hbm_efficiency: float
    memory_utilization: float


@dataclass(frozen=True)
class Hardware:
    """One GPU type (figures are per GPU). ``price_per_gpu_hour`` is the user's own number (USD)."""

    name: str
    bf16_tflops: float
    fp8_tflops: float
    hbm_tbps: float
    hbm_gb: float
    price_per_gpu_hour: float
    calibration: Calibration
    description: str = ""

    def peak_flops(self, dtype: str) -> float:
        """Dense peak FLOP/s of one GPU for ``"bf16"`` or ``"fp8"``."""
        return (self.fp8_tflops if dtype == "fp8" else self.bf16_tflops) * 1e12


@dataclass(frozen=True)
class Attention:
    """The full-attention layers (the only ones holding per-token KV). ``kind`` is ``mla`` or ``gqa``."""

    kind: str
    layers: int
    heads: int
    kv_dtype_bytes: int
    kv_heads: int = 0
    head_dim: int = 0
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0

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


@dataclass(frozen=True)
class LinearAttention:
    """Linear-attention (e.g. KDA) layers: a fixed ``heads x head_dim_k x head_dim_v`` state each."""

    layers: int
    heads: int
    head_dim_k: int
    head_dim_v: int
    state_dtype_bytes: int

    @property
    def state_bytes(self) -> int:
        return self.layers * self.heads * self.head_dim_k * self.head_dim_v * self.state_dtype_bytes

    @property
    def flops_per_token(self) -> int:
        """State update (k^T v) plus readout (q S): 2 matrix-vector products of 2 FLOPs per MAC."""
        return 4 * self.layers * self.heads * self.head_dim_k * self.head_dim_v


@dataclass(frozen=True)
class Moe:
    """Mixture-of-experts routing: ``experts_per_token`` of ``experts`` per layer."""

    experts: int
    experts_per_token: int


@dataclass(frozen=True)
class ModelSpec:
    """A model's architecture, from which the cost model derives FLOPs and KV bytes."""

    name: str
    params_total: float
    params_active: float
    context_length: int
    weight_bytes_per_param: float
    compute_dtype: str
    attention: Attention
    linear_attention: LinearAttention | None = None
    moe: Moe | None = None
    description: str = ""

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
    try:
        return tomllib.loads(data.decode("utf-8")), where
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"not UTF-8 text ({exc.reason})", where=where) from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"invalid TOML: {exc}", where=where) from None


class _Fields:
    """Typed field access on one TOML table, with errors naming the file and field; rejects unknown keys."""

    def __init__(self, table: Any, where: str, allowed: set[str]) -> None:
        if not isinstance(table, Mapping):
            raise ScenarioError("must be a table", where=where)
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise ScenarioError(
                f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}", where=where
            )
        self.table, self.where = table, where

    def num(
        self,
        key: str,
        *,
        default: float | None = None,
        integer: bool = False,
        lo: float = 0.0,
        strict: bool = True,
        hi: float | None = None,
    ) -> Any:
        value = self.table.get(key, default)
        if value is None:
            raise ScenarioError("missing required field", where=f"{self.where}: {key}")
        if isinstance(value, bool) or not isinstance(value, int | float) or (integer and value != int(value)):
            kind = "an integer" if integer else "a number"
            raise ScenarioError(f"must be {kind}, got {value!r}", where=f"{self.where}: {key}")
        if (value <= lo if strict else value < lo) or (hi is not None and value > hi):
            bound = f"> {lo}" if strict else f">= {lo}"
            bound += f" and <= {hi}" if hi is not None else ""
            raise ScenarioError(f"must be {bound}, got {value}", where=f"{self.where}: {key}")
        return int(value) if integer else float(value)

    def text(self, key: str, *, default: str | None = None, choices: tuple[str, ...] = ()) -> str:
        value = self.table.get(key, default)
        if not isinstance(value, str):
            raise ScenarioError(f"must be a string, got {value!r}", where=f"{self.where}: {key}")
        if choices and value not in choices:
            raise ScenarioError(
                f"must be one of {', '.join(choices)}, got {value!r}", where=f"{self.where}: {key}"
            )
        return value


_CALIBRATION_FIELDS = {f for f in Calibration.__dataclass_fields__}


def load_hardware(name_or_path: str | Path, *, base: Path | None = None) -> Hardware:
    """Load a hardware preset by name (``H200``) or from a TOML path (relative to ``base`` if given)."""
    raw, where = _read_preset("hardware", name_or_path, base)
    top = _Fields(
        raw,
        where,
        {
            "name",
            "description",
            "bf16_tflops",
            "fp8_tflops",
            "hbm_tbps",
            "hbm_gb",
            "price_per_gpu_hour",
            "calibration",
        },
    )
    cal = _Fields(raw.get("calibration", {}), f"{where}:[calibration]", _CALIBRATION_FIELDS)
    calibration = Calibration(
        prefill_overhead_s=cal.num("prefill_overhead_s", strict=False),
        gemm_efficiency=cal.num("gemm_efficiency", hi=1.0),
        attention_efficiency=cal.num("attention_efficiency", hi=1.0),
        decode_overhead_s=cal.num("decode_overhead_s", strict=False),
        decode_efficiency=cal.num("decode_efficiency", hi=1.0),
        hbm_efficiency=cal.num("hbm_efficiency", hi=1.0),
        memory_utilization=cal.num("memory_utilization", hi=1.0),
    )
    return Hardware(
        name=top.text("name"),
        description=top.text("description", default=""),
        bf16_tflops=top.num("bf16_tflops"),
        fp8_tflops=top.num("fp8_tflops"),
        hbm_tbps=top.num("hbm_tbps"),
        hbm_gb=top.num("hbm_gb"),
        price_per_gpu_hour=top.num("price_per_gpu_hour", strict=False),
        calibration=calibration,
    )


def _attention(table: Any, where: str) -> Attention:
    f = _Fields(table, where, {f for f in Attention.__dataclass_fields__})
    kind = f.text("kind", choices=("mla", "gqa"))
    common = {
        "kind": kind,
        "layers": f.num("layers", integer=True),
        "heads": f.num("heads", integer=True),
        "kv_dtype_bytes": f.num("kv_dtype_bytes", integer=True),
    }
    if kind == "gqa":
        return Attention(
            **common, kv_heads=f.num("kv_heads", integer=True), head_dim=f.num("head_dim", integer=True)
        )
    return Attention(
        **common,
        kv_lora_rank=f.num("kv_lora_rank", integer=True),
        qk_rope_head_dim=f.num("qk_rope_head_dim", integer=True),
        qk_nope_head_dim=f.num("qk_nope_head_dim", integer=True),
        v_head_dim=f.num("v_head_dim", integer=True),
    )


def load_model(name_or_path: str | Path, *, base: Path | None = None) -> ModelSpec:
    """Load a model preset by name (``kimi-1t-hybrid``) or from a TOML path (relative to ``base`` if given)."""
    raw, where = _read_preset("models", name_or_path, base)
    top = _Fields(
        raw,
        where,
        {
            "name",
            "description",
            "params_total",
            "params_active",
            "context_length",
            "weight_bytes_per_param",
            "compute_dtype",
            "attention",
            "linear_attention",
            "moe",
        },
    )
    if "attention" not in raw:
        raise ScenarioError("missing required table [attention]", where=where)
    linear = None
    if "linear_attention" in raw:
        f = _Fields(
            raw["linear_attention"],
            f"{where}:[linear_attention]",
            {f for f in LinearAttention.__dataclass_fields__},
        )
        linear = LinearAttention(*(f.num(k, integer=True) for k in LinearAttention.__dataclass_fields__))
    moe = None
    if "moe" in raw:
        f = _Fields(raw["moe"], f"{where}:[moe]", {"experts", "experts_per_token"})
        moe = Moe(f.num("experts", integer=True), f.num("experts_per_token", integer=True))
        if moe.experts_per_token >= moe.experts:
            raise ScenarioError("experts_per_token must be below experts", where=f"{where}:[moe]")
    spec = ModelSpec(
        name=top.text("name"),
        description=top.text("description", default=""),
        params_total=top.num("params_total"),
        params_active=top.num("params_active"),
        context_length=top.num("context_length", integer=True),
        weight_bytes_per_param=top.num("weight_bytes_per_param"),
        compute_dtype=top.text("compute_dtype", default="bf16", choices=("bf16", "fp8")),
        attention=_attention(raw["attention"], f"{where}:[attention]"),
        linear_attention=linear,
        moe=moe,
    )
    if spec.params_active > spec.params_total:
        raise ScenarioError("params_active exceeds params_total", where=where)
    return spec
