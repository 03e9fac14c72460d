"""One topology's records summarised into the flat dict ``analyze --json`` prints per topology."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from harness.analysis import metrics as m
from harness.analysis.stats import percentile
from harness.pdproxy import NO_KV_TRANSFER

_EXAMPLE_CHARS = 160  # of a server's error message, per failure class

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("max", 100.0))
LATENCIES = (("ttft", m.ttft), ("tpot", m.tpot), ("e2e", m.e2e))
BREAKDOWN = (
    ("ttft_queue", m.ttft_queue),
    ("ttft_prefill", m.ttft_prefill),
    ("ttft_transfer", m.ttft_transfer),
    ("ttft_first_token", m.ttft_first_token),
)


@dataclass(frozen=True, slots=True)
class Slo:
    """Service-level objectives: bounds on TTFT and TPOT (None = no bound) and the attainment target."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    attainment: float = 0.99

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Slo:
        """The SLO a run recorded: ``meta["slo"]`` or its scenario's ``[slo]`` (tpot_ms/tpot_s, ttft_s)."""
        slo = meta.get("slo")
        if not isinstance(slo, Mapping):
            scen = meta.get("scenario")
            slo = scen.get("slo", {}) if isinstance(scen, Mapping) else {}
        tpot = slo.get("tpot_s")
        if tpot is None and slo.get("tpot_ms") is not None:
            tpot = float(slo["tpot_ms"]) / 1000
        return cls(
            ttft_s=None if slo.get("ttft_s") is None else float(slo["ttft_s"]),
            tpot_s=None if tpot is None else float(tpot),
            attainment=float(slo.get("attainment", 0.99)),
        )

    def override(self, ttft_s: float | None, tpot_s: float | None) -> Slo:
        return Slo(
            self.ttft_s if ttft_s is None else ttft_s,
            self.tpot_s if tpot_s is None else tpot_s,
            self.attainment,
        )

    def to_dict(self) -> dict[str, float | None]:
        return {"ttft_s": self.ttft_s, "tpot_s": self.tpot_s, "attainment": self.attainment}


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def summarize(records: pd.DataFrame, slo: Slo) -> dict[str, Any]:
    """Every per-topology figure of ``analyze``; NaN-valued figures (unobservable) become None."""
    df = m.measured(records)
    ok = m.ok_mask(df)
    good = df[ok]
    out: dict[str, Any] = {
        "requests": len(df),
        "failed": int((~ok).sum()),
        "failed_share": m.failed_share(df),
        "excluded": len(records) - len(df),
        "duration_s": m.duration(df),
        "throughput_rps": m.throughput_rps(df),
        "output_tps": m.output_tps(df),
        "goodput_rps": m.goodput_rps(df, slo.ttft_s, slo.tpot_s),
        "slo_attainment": m.slo_attainment(df, slo.ttft_s, slo.tpot_s),
    }
    series = [(name, fn(good)) for name, fn in LATENCIES] + [("itl", m.itl(good))]
    for name, values in series:
        for tag, q in PERCENTILES:
            out[f"{name}_{tag}_s"] = percentile(values, q)
    for name, fn in BREAKDOWN:
        values = fn(good)
        out[f"{name}_p50_s"] = percentile(values, 50)
        out[f"{name}_mean_s"] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
    lag = m.send_lag(df)
    for tag, q in (("p50", 50.0), ("p99", 99.0), ("max", 100.0)):
        out[f"send_lag_{tag}_s"] = percentile(lag, q)
    out |= {
        "kv_bytes_total": m.kv_bytes_total(df),
        "offload_share": m.offload_share(df),
        "egress_gbps": m.egress_gbps(df),
        "cache_hit_rate": m.cache_hit_rate(df),
    }
    if "warning" in df.columns:  # non-fatal findings (e.g. server usage ≠ trace lengths)
        out["warnings"] = int(df["warning"].notna().sum())
    # PD requests without a KV transfer (no connector: the decode server prefilled again)
    out["pd_no_kv_transfer"] = int(m.warned(df, NO_KV_TRANSFER).sum())
    out["itl_unresolved"] = int(m.itl_unresolved(good).sum())
    out["tpot_one_read"] = int(((m.col(good, "output_tokens_received") >= 2) & np.isnan(m.tpot(good))).sum())
    most = m.col(good, "tokens_per_chunk_max")
    out["tokens_per_chunk_max"] = int(np.nanmax(most)) if np.isfinite(most).any() else None
    if "error_class" in df.columns:
        errors = df.loc[~ok, "error_class"].fillna("unknown").value_counts()
        out["errors"] = {str(k): int(v) for k, v in errors.items()}
        if "error_message" in df.columns:  # the server's own words for each class (its first failure)
            said = df.loc[~ok & df["error_message"].notna()].groupby(df["error_class"].fillna("unknown"))
            out["error_examples"] = {
                str(k): str(v)[:_EXAMPLE_CHARS] for k, v in said["error_message"].first().items()
            }
    result = {k: _num(v) if isinstance(v, float) else v for k, v in out.items()}
    if result["kv_bytes_total"] is not None:
        result["kv_bytes_total"] = int(result["kv_bytes_total"])
    return result
