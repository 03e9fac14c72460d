"""The servers' own series (``server_metrics.parquet``, scraped by replay) in engine-neutral quantities.

vLLM, SGLang and the emulated clusters name the same figures differently; ``server_series`` maps them to
one set of columns per topology and scrape: ``running``, ``waiting`` (requests, summed over servers),
``kv_usage`` (fraction of KVCache in use, averaged over the servers that report it) and
``prefix_queries``/``prefix_hits`` (prompt tokens, counters summed over servers).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from harness.records import iter_jsonl_records
from harness.servermetrics import FILE_STEM

QUANTITIES: dict[str, tuple[str, ...]] = {
    "running": ("vllm:num_requests_running", "sglang:num_running_reqs"),
    "waiting": ("vllm:num_requests_waiting", "sglang:num_queue_reqs"),
    "kv_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage"),
    "prefix_queries": ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"),
    "prefix_hits": ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
}
_AVERAGED = ("kv_usage",)
_BY_NAME = {name: q for q, names in QUANTITIES.items() for name in names}


def read_server_metrics(run_dir: Path, meta: Mapping[str, Any]) -> pd.DataFrame | None:
    """A run's long-form server series (Parquet, else the log of an interrupted run), in model seconds
    for a replay against a sped-up emulator (``time_scale``, as the records); None when there are none."""
    parquet, log = run_dir / f"{FILE_STEM}.parquet", run_dir / f"{FILE_STEM}.jsonl"
    if parquet.is_file():
        df = pd.read_parquet(parquet)
    elif log.is_file():
        df = pd.DataFrame(list(iter_jsonl_records(log)))
    else:
        return None
    if df.empty or not {"time_s", "topology", "metric", "labels", "value"} <= set(df.columns):
        return None
    scale = float(meta.get("time_scale") or 1.0)
    return df.assign(time_s=df["time_s"] * scale) if scale != 1.0 else df


def own_topology(df: pd.DataFrame) -> pd.DataFrame:
    """The emulator labels each sample with the topology it belongs to; a replay of one topology keeps
    its own (others served by the same site are idle bystanders). Unlabelled samples stay."""
    label = df["labels"].map(lambda text: json.loads(text).get("topology") if text else None)
    own = label.isna() | (label == df["topology"])
    # An endpoint named unlike the emulator's topologies (replay --endpoint emu=...): keep them all.
    has_own = (label == df["topology"]).groupby(df["topology"]).transform("any")
    return df[own | ~has_own]


def server_series(df: pd.DataFrame) -> pd.DataFrame:
    """Wide form: ``topology``, ``time_s`` and one column per quantity of ``QUANTITIES`` present."""
    known = df[df["metric"].isin(_BY_NAME)]
    if known.empty:
        return pd.DataFrame(columns=["topology", "time_s"])
    known = own_topology(known).assign(quantity=lambda d: d["metric"].map(_BY_NAME))
    mean = known["quantity"].isin(_AVERAGED)
    parts = [
        part.pivot_table("value", ["topology", "time_s"], "quantity", aggfunc=agg)
        for part, agg in ((known[~mean], "sum"), (known[mean], "mean"))
        if not part.empty
    ]
    out = pd.concat(parts, axis=1).reset_index().sort_values(["topology", "time_s"], kind="stable")
    out.columns.name = None
    return out.reset_index(drop=True)
