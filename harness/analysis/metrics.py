"""Metrics: small pure functions over a records DataFrame, one metric each, tagged with name and unit.

The definitions (they differ across tools; these are ours, see docs/analysis.md):

- TTFT  = first generated token − scheduled send (no coordinated omission: from *scheduled*, not
  sent); a token counts even when its text is empty (a partial UTF-8 byte)
- ITL   = gaps between successive generated tokens (a chunk of k tokens gives k gaps of its gap / k);
  requests whose ITL is unresolved (``itl_unresolved``: most tokens in one read, or tokens packed
  without per-chunk counts) are left out of it
- TPOT  = (last token − first token) / (output tokens − 1); excludes TTFT; undefined for one token,
  and when every token came in one read (no time between them was observed: not 0)
- E2E   = last token − scheduled send
- send lag = actual send − scheduled send (the client's own lateness)
- TTFT breakdown, which sums to TTFT when every boundary is known:
  queue = prefill start − scheduled (or the server's ``prefill_queue_s``), prefill = prefill end −
  prefill start, KV transfer (exposed) = max(0, transfer end − prefill end), first token = first
  token − max(prefill end, transfer end); a PD request whose prefill server returned no
  ``kv_transfer_params`` (warning ``pd_no_kv_transfer_params``: no KV connector, the decode server
  prefilled again) has no KV transfer to measure: NaN, not 0
- throughput = successful requests / duration; output tok/s = tokens received / duration, where
  duration = the schedule's span: earliest scheduled send − the last end of any request (a success's
  last token, a failure's end), so failures never shorten it
- goodput = successful requests meeting every SLO (TTFT ≤ bound, TPOT ≤ bound) / duration
- Λ_max = the highest offered rate whose SLO attainment stays ≥ the target at it and every lower rate

Per-request metrics return a float array aligned with the rows (NaN where the producer could not
observe it); aggregate metrics return one float (NaN when undefined).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from harness.pdproxy import NO_KV_TRANSFER
from harness.records import STATUS_OK

Better = Literal["higher", "lower", "none"]


@dataclass(frozen=True, slots=True)
class MetricDefinition:
    """What a metric function computes: its name, unit and which direction is an improvement."""

    name: str
    unit: str
    better: Better
    doc: str


METRICS: dict[str, MetricDefinition] = {}


def metric(name: str, unit: str, better: Better = "lower") -> Callable[[Callable], Callable]:
    """Tag a metric function with its :class:`MetricDefinition` (``fn.metric``); register it in ``METRICS``."""

    def tag(fn: Callable) -> Callable:
        doc = (fn.__doc__ or name).strip().splitlines()[0]
        fn.metric = METRICS[name] = MetricDefinition(name, unit, better, doc)  # type: ignore[attr-defined]
        return fn

    return tag


def col(df: pd.DataFrame, name: str) -> np.ndarray:
    """A numeric column as float64 with NaN for missing values (all NaN when the column is absent)."""
    if name not in df.columns:
        return np.full(len(df), np.nan)
    return pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def ok_mask(df: pd.DataFrame) -> np.ndarray:
    """Rows whose request succeeded."""
    if "status" not in df.columns:
        return np.ones(len(df), dtype=bool)
    return (df["status"] == STATUS_OK).to_numpy(dtype=bool, na_value=False)


def warned(df: pd.DataFrame, name: str) -> np.ndarray:
    """Rows whose ``warning`` names ``name``."""
    if "warning" not in df.columns:
        return np.zeros(len(df), dtype=bool)
    return df["warning"].str.contains(name, regex=False, na=False).to_numpy(dtype=bool)


def itl_unresolved(df: pd.DataFrame) -> np.ndarray:
    """Rows whose inter-token gaps do not resolve tokens (``itl_unresolved``; older records: no)."""
    if "itl_unresolved" not in df.columns:
        return np.zeros(len(df), dtype=bool)
    return df["itl_unresolved"].fillna(False).to_numpy(dtype=bool)


# --- per request -------------------------------------------------------------------------------


@metric("ttft", "s")
def ttft(df: pd.DataFrame) -> np.ndarray:
    """Time to first generated token, from the scheduled send."""
    return col(df, "first_token_s") - col(df, "scheduled_s")


@metric("tpot", "s")
def tpot(df: pd.DataFrame) -> np.ndarray:
    """Time per output token after the first: (last − first) / (output tokens − 1); NaN for one token,
    and for tokens that all came in one read (a frontend that delivered the whole answer at once: a 0
    here would be a figure nobody measured, and it pulled a busy vLLM's TPOT p50 to 0)."""
    n = col(df, "output_tokens_received")
    span = col(df, "last_token_s") - col(df, "first_token_s")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n >= 2) & (span > 0), span / (n - 1), np.nan)


@metric("e2e", "s")
def e2e(df: pd.DataFrame) -> np.ndarray:
    """End-to-end latency: last token − scheduled send."""
    return col(df, "last_token_s") - col(df, "scheduled_s")


@metric("send_lag", "s")
def send_lag(df: pd.DataFrame) -> np.ndarray:
    """Client lateness: actual send − scheduled send."""
    return col(df, "sent_s") - col(df, "scheduled_s")


@metric("itl", "s")
def itl(df: pd.DataFrame) -> np.ndarray:
    """Inter-token latencies of requests whose ITL is resolved, flattened (not aligned with rows)."""
    if "itl_s" not in df.columns:
        return np.empty(0)
    keep = ~itl_unresolved(df)
    parts = [
        np.asarray(x, dtype=float)
        for x, k in zip(df["itl_s"], keep, strict=True)
        if k and x is not None and len(x)
    ]
    return np.concatenate(parts) if parts else np.empty(0)


@metric("ttft_queue", "s")
def ttft_queue(df: pd.DataFrame) -> np.ndarray:
    """TTFT part before prefill starts: prefill start − scheduled, else the server's queue time."""
    waited = col(df, "prefill_start_s") - col(df, "scheduled_s")
    return np.where(np.isnan(waited), col(df, "prefill_queue_s"), waited)


@metric("ttft_prefill", "s")
def ttft_prefill(df: pd.DataFrame) -> np.ndarray:
    """TTFT part spent computing the prefill."""
    return col(df, "prefill_end_s") - col(df, "prefill_start_s")


def _ready(df: pd.DataFrame) -> np.ndarray:
    # When the decoder can start: after prefill, and after the KV arrived if it had to travel.
    pe, ke = col(df, "prefill_end_s"), col(df, "kv_transfer_end_s")
    return np.where(np.isnan(ke), pe, np.fmax(pe, ke))


@metric("ttft_transfer", "s")
def ttft_transfer(df: pd.DataFrame) -> np.ndarray:
    """Exposed KV transfer: max(0, transfer end − prefill end); 0 when nothing was transferred, NaN
    when a PD prefill server returned no KV to transfer (not measured)."""
    pe = col(df, "prefill_end_s")
    unknown = np.isnan(pe) | warned(df, NO_KV_TRANSFER)
    return np.where(unknown, np.nan, np.maximum(0.0, _ready(df) - pe))


@metric("ttft_first_token", "s")
def ttft_first_token(df: pd.DataFrame) -> np.ndarray:
    """TTFT part after prefill and transfer: first token − max(prefill end, transfer end)."""
    return col(df, "first_token_s") - _ready(df)


# --- aggregates ---------------------------------------------------------------------------------


def request_end(df: pd.DataFrame) -> np.ndarray:
    """When each request ended: a success at its last token; a failure when it was recorded as failed
    (``end_s``; older records without it: the last time they show, down to the send)."""
    ok = ok_mask(df)
    end = col(df, "end_s")
    for name in ("last_token_s", "first_token_s", "first_byte_s", "sent_s"):
        end = np.where(np.isnan(end), col(df, name), end)
    return np.where(ok, col(df, "last_token_s"), end)


@metric("duration", "s", "none")
def duration(df: pd.DataFrame) -> float:
    """The schedule's span: the last end of any request (ok or failed) − earliest scheduled send."""
    end = request_end(df)
    if len(df) == 0 or np.all(np.isnan(end)):
        return float("nan")
    return float(np.nanmax(end) - np.nanmin(col(df, "scheduled_s")))


@metric("failed_share", "fraction", "lower")
def failed_share(df: pd.DataFrame) -> float:
    """Failed requests / requests."""
    return float((~ok_mask(df)).mean()) if len(df) else float("nan")


def _per_second(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")


@metric("throughput", "req/s", "higher")
def throughput_rps(df: pd.DataFrame) -> float:
    """Successful requests per second over the measured window."""
    return _per_second(float(ok_mask(df).sum()), duration(df))


@metric("output_throughput", "tok/s", "higher")
def output_tps(df: pd.DataFrame) -> float:
    """Output tokens received by successful requests per second."""
    return _per_second(float(np.nansum(col(df, "output_tokens_received")[ok_mask(df)])), duration(df))


# A latency equal to its bound up to float rounding meets it ((last − first)/(n − 1) is rarely exact).
_SLO_RTOL = 1e-9


def meets_slo(df: pd.DataFrame, ttft_slo_s: float | None, tpot_slo_s: float | None) -> np.ndarray:
    """Rows that succeeded and meet every given bound (a one-token answer has no TPOT to miss)."""
    good = ok_mask(df).copy()
    if ttft_slo_s is not None:
        good &= ttft(df) <= ttft_slo_s * (1 + _SLO_RTOL)
    if tpot_slo_s is not None:
        t = tpot(df)
        good &= np.isnan(t) | (t <= tpot_slo_s * (1 + _SLO_RTOL))
    return good


@metric("goodput", "req/s", "higher")
def goodput_rps(df: pd.DataFrame, ttft_slo_s: float | None = None, tpot_slo_s: float | None = None) -> float:
    """Requests per second that succeeded and met every SLO."""
    return _per_second(float(meets_slo(df, ttft_slo_s, tpot_slo_s).sum()), duration(df))


@metric("slo_attainment", "fraction", "higher")
def slo_attainment(
    df: pd.DataFrame, ttft_slo_s: float | None = None, tpot_slo_s: float | None = None
) -> float:
    """Share of all requests (failed ones included) that met every SLO."""
    return float(meets_slo(df, ttft_slo_s, tpot_slo_s).mean()) if len(df) else float("nan")


@metric("offload_share", "fraction", "none")
def offload_share(df: pd.DataFrame) -> float:
    """Share of routed requests prefilled remotely (route == "remote")."""
    if "route" not in df.columns:
        return float("nan")
    route = df["route"].dropna()
    return float((route == "remote").mean()) if len(route) else float("nan")


@metric("kv_bytes_total", "B", "none")
def kv_bytes_total(df: pd.DataFrame) -> float:
    """KV bytes moved, all transfers (intra- and cross-site)."""
    b = col(df, "kv_bytes")
    return float(np.nansum(b)) if not np.all(np.isnan(b)) else float("nan")


def cross_site(df: pd.DataFrame) -> np.ndarray:
    """Rows whose KV crossed the inter-site link: prefill and decode sites differ, else route remote."""
    if "prefill_site" in df.columns and "decode_site" in df.columns:
        ps, ds = df["prefill_site"], df["decode_site"]
        known = (ps.notna() & ds.notna()).to_numpy(dtype=bool)
        differ = (ps != ds).to_numpy(dtype=bool, na_value=False)
    else:
        known = differ = np.zeros(len(df), dtype=bool)
    remote = (
        (df["route"] == "remote").to_numpy(dtype=bool, na_value=False) if "route" in df.columns else known
    )
    return np.where(known, differ, remote)


@metric("egress", "Gbit/s", "none")
def egress_gbps(df: pd.DataFrame) -> float:
    """Cross-site KV bytes × 8 / duration, in Gbit/s."""
    b = col(df, "kv_bytes")[cross_site(df)]
    if np.all(np.isnan(b)):
        return float("nan") if np.all(np.isnan(col(df, "kv_bytes"))) else 0.0
    return _per_second(float(np.nansum(b)) * 8 / 1e9, duration(df))


@metric("cache_hit_rate", "fraction", "higher")
def cache_hit_rate(df: pd.DataFrame) -> float:
    """Cached prompt tokens / prompt tokens, over requests whose cached count is known."""
    cached = col(df, "cached_tokens")
    prompt = col(df, "prompt_tokens_server")
    prompt = np.where(np.isnan(prompt), col(df, "prompt_tokens_trace"), prompt)
    known = ~np.isnan(cached) & (prompt > 0)
    return (
        _per_second(float(cached[known].sum()), float(prompt[known].sum())) if known.any() else float("nan")
    )


def lambda_max(offered_rps: Sequence[float], attainment: Sequence[float], target: float) -> float:
    """Λ_max: the highest offered rate whose SLO attainment is ≥ ``target`` there and at every lower rate.

    NaN when even the lowest rate misses the target.
    """
    order = np.argsort(np.asarray(offered_rps, dtype=float))
    rates = np.asarray(offered_rps, dtype=float)[order]
    ok = np.asarray(attainment, dtype=float)[order] >= target
    if not len(ok) or not ok[0]:
        return float("nan")
    first_miss = int(np.argmin(ok)) if not ok.all() else len(ok)
    return float(rates[first_miss - 1])


# --- measurement window ---------------------------------------------------------------------------


def measured(df: pd.DataFrame) -> pd.DataFrame:
    """The rows to count: ``phase == "measure"`` (or unmarked); warm-up and cool-down rows are kept
    in the run but excluded here."""
    if "phase" not in df.columns:
        return df
    keep = (df["phase"].isna() | (df["phase"] == "measure")).to_numpy(dtype=bool)
    return df if keep.all() else df[keep]
