"""The whole analysis of a bundle of runs: per-topology summaries, the baseline comparison and the
side-by-side of plan, simulate and replay. The result is the plain dict ``analyze --json`` prints."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pandas as pd

from harness.analysis.baseline import compare_to_baseline, rate_ci
from harness.analysis.capacity import measured_lambda_max, offered_rate, split_label
from harness.analysis.cost import cost_per_hour
from harness.analysis.runs import Bundle, Run
from harness.analysis.sessions import session_figures
from harness.analysis.summary import Slo, summarize
from harness.validity import UNKNOWN, combine

BASELINE_TOPOLOGY = "homogeneous"
SIDE_BY_SIDE_KEYS = (
    "throughput_rps",
    "goodput_rps",
    "ttft_p50_s",
    "ttft_p90_s",
    "offload_share",
    "egress_gbps",
)
PLAN_KEYS = {"lambda_max": "lambda_max_rps", "offload_share": "offload_share", "egress_gbps": "egress_gbps"}


def _entries(bundle: Bundle) -> list[tuple[Run, str, pd.DataFrame]]:
    return [
        (run, str(name), df)
        for run in bundle.runs
        for name, df in run.records.groupby("topology", sort=True, observed=True)
    ]


def _keys(entries: list[tuple[Run, str, pd.DataFrame]]) -> list[str]:
    # Plain topology name when unique; else "<source>/<name>"; else "<run_id>/<name>".
    by_name = Counter(name for _, name, _ in entries)
    by_source = Counter((run.source, name) for run, name, _ in entries)
    keys = []
    for run, name, _ in entries:
        if by_name[name] == 1:
            keys.append(name)
        elif by_source[(run.source, name)] == 1:
            keys.append(f"{run.source}/{name}")
        else:
            keys.append(f"{run.run_id}/{name}")
    return keys


def _baseline_name(run_meta_kinds: dict[str, str], names: list[str], requested: str | None) -> str | None:
    if requested:
        return requested if requested in names else None
    if BASELINE_TOPOLOGY in names:
        return BASELINE_TOPOLOGY
    return next((n for n in names if run_meta_kinds.get(n) == BASELINE_TOPOLOGY), None)


def run_verdict(run: Run, topology: str | None = None) -> str | None:
    """The run's validity verdict from its meta (``valid`` / ``invalid: …``); ``unknown`` for a replay
    that recorded none, ``unknown: <why>`` for another tool's file (a measurement nobody judged), None
    for a simulation (virtual time has no conditions to break)."""
    validity = run.meta.get("validity")
    if not isinstance(validity, dict):
        if run.source == "simulate":
            return None
        if run.source == "replay":
            return UNKNOWN
        return f"{UNKNOWN}: {run.source} records no send lag, loop stalls or CPU use to judge its client by"
    if topology is not None:
        by = validity.get("by_topology")
        if isinstance(by, dict) and isinstance(by.get(topology), str):
            return by[topology]
    text = validity.get("verdict")
    return text if isinstance(text, str) else UNKNOWN


def _record_notes(key: str, s: dict[str, Any]) -> list[str]:
    """What the records themselves say about how far a topology's figures can be read."""
    notes = []
    if s.get("pd_no_kv_transfer"):
        notes.append(
            f"{key}: {s['pd_no_kv_transfer']} of {s['requests']} PD requests got no kv_transfer_params "
            "from the prefill server (no KV connector): no KV moved, the decode server prefilled the "
            "prompt again, so 'KV transfer' is not measured and 'first token' holds that second prefill"
        )
    if s.get("itl_unresolved"):
        notes.append(
            f"{key}: ITL unresolved on {s['itl_unresolved']} of {s['requests'] - s['failed']} successful "
            "requests (most of their tokens arrived in one read, or chunks held several tokens without "
            "per-chunk counts); ITL percentiles leave them out, TPOT and token counts still hold"
        )
    if s.get("tpot_one_read"):
        notes.append(
            f"{key}: TPOT undefined on {s['tpot_one_read']} of {s['requests'] - s['failed']} successful "
            "requests (every token arrived in one read: no time per token was observed); TPOT "
            "percentiles leave them out"
        )
    return notes


def _kinds(run: Run) -> dict[str, str]:
    topos = run.meta.get("topologies")
    if not isinstance(topos, dict):
        return {}
    return {name: str(t.get("kind")) for name, t in topos.items() if isinstance(t, dict)}


Member = tuple[Run, str, float | None, pd.DataFrame]  # run, topology label, offered rate, records


def _group_by_load(members: list[Member], notes: list[str]) -> dict[str, dict[str, tuple[Run, pd.DataFrame]]]:
    # Compare topologies at equal offered load: per source, and per rate when a source swept rates.
    rates_by_source: dict[str, set[float]] = {}
    for run, _, rate, _ in members:
        if rate is not None and not run.meta.get("find_max_rate"):
            rates_by_source.setdefault(run.source, set()).add(rate)
    groups: dict[str, dict[str, tuple[Run, pd.DataFrame]]] = {}
    for run, name, rate, df in members:
        sweep = rate is not None and len(rates_by_source.get(run.source, ())) > 1
        group = f"{run.source}@{rate:g}rps" if sweep else run.source
        if run.meta.get("find_max_rate"):
            # Each topology ran at its own Λ_max: compared among themselves, never with a paired run.
            group = f"{run.source} at Λ_max"
        base_name = split_label(name)[0]
        if base_name in groups.setdefault(group, {}):
            notes.append(f"{group}: topology {base_name!r} appears in several runs; compared using the first")
        else:
            groups[group][base_name] = (run, df)
    return groups


def _comparisons(
    groups: dict[str, dict[str, tuple[Run, pd.DataFrame]]],
    plan: dict[str, Any] | None,
    slo_override: tuple[float | None, float | None],
    baseline: str | None,
    notes: list[str],
    **boot: int,
) -> dict[str, Any]:
    comparison: dict[str, Any] = {}
    for group, members in groups.items():
        names = sorted(members)
        kinds = {k: v for run, _ in members.values() for k, v in _kinds(run).items()}
        base = _baseline_name(kinds, names, baseline)
        if base is None:
            if len(names) > 1 or baseline:
                notes.append(
                    f"{group}: no baseline topology {baseline or BASELINE_TOPOLOGY!r}; no comparison"
                )
            continue
        slo = Slo.from_meta(members[base][0].meta).override(*slo_override)
        costs = {n: cost_per_hour(n, run.meta, plan) for n, (run, _) in members.items()}
        frames = {n: df for n, (_, df) in members.items()}
        verdicts = {n: run_verdict(run, n) for n, (run, _) in members.items()}
        comparison[group] = {
            "baseline": base,
            "rows": compare_to_baseline(frames, base, slo, costs, **boot),
            "validity": combine(verdicts) if any(v is not None for v in verdicts.values()) else None,
        }
    return comparison


def _side_by_side(
    bundle: Bundle, topologies: dict[str, dict[str, Any]], plan: dict[str, Any] | None, capacity: dict
) -> dict[str, dict[str, dict[str, Any]]]:
    side: dict[str, dict[str, dict[str, Any]]] = {}
    for name, t in ((plan or {}).get("topologies") or {}).items():
        side.setdefault(name, {})["plan"] = {out: t.get(k) for k, out in PLAN_KEYS.items()}
    for entry in topologies.values():
        side.setdefault(entry["topology"], {})[entry["source"]] = {k: entry[k] for k in SIDE_BY_SIDE_KEYS}
    # simulate --find-max-rate leaves its Λ_max in meta; a rate sweep gives a measured one.
    for run in bundle.runs:
        for name, found in (run.meta.get("summary") or {}).items():
            if isinstance(found, dict) and found.get("lambda_max") is not None and name in side:
                side[name].setdefault(run.source, {})["lambda_max_rps"] = found["lambda_max"]
    for source, per in capacity.items():
        for name, found in per.items():
            for label in [k for k in side if split_label(k)[0] == name and k != name]:
                side[label].pop(source, None)  # the per-rate rows are summarised by the sweep
                if not side[label]:
                    del side[label]
            side.setdefault(name, {})[source] = {"lambda_max_rps": found["lambda_max_rps"]}
    return side


def analyze(
    bundle: Bundle,
    *,
    ttft_slo_s: float | None = None,
    tpot_slo_s: float | None = None,
    baseline: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Analyse every topology of every run in ``bundle``.

    Returns ``{"runs", "topologies", "comparison", "side_by_side", "lambda_max", "plan", "notes"}``: see
    docs/analysis.md for every key. SLO bounds given here override the ones runs recorded.
    """
    notes = list(bundle.notes)
    entries = _entries(bundle)
    plan = next((p.result for p in bundle.plans if p.result is not None), None)
    topologies: dict[str, dict[str, Any]] = {}
    points: list[tuple[str, str, float, float]] = []
    members: list[Member] = []
    target = Slo().attainment
    for key, (run, name, df) in zip(_keys(entries), entries, strict=True):
        slo = Slo.from_meta(run.meta).override(ttft_slo_s, tpot_slo_s)
        summary = summarize(df, slo)
        ci = rate_ci(df, "throughput_rps", slo, n_boot=n_boot, seed=seed).to_dict()
        rate = offered_rate(run.meta, name)
        topologies[key] = {"topology": name, "source": run.source, "run_id": run.run_id, "slo": slo.to_dict()}
        topologies[key] |= summary | {"throughput_ci_low": ci["low"], "throughput_ci_high": ci["high"]}
        topologies[key]["offered_rps"] = rate
        topologies[key]["validity"] = run_verdict(run, name)
        figures = session_figures(df)
        if figures is not None:  # a session-mode run
            topologies[key]["sessions"] = figures
        if rate is not None and summary["slo_attainment"] is not None:
            points.append((run.source, split_label(name)[0], rate, summary["slo_attainment"]))
            target = slo.attainment
        members.append((run, name, rate, df))
        notes += _record_notes(key, summary)

    for r in bundle.runs:
        if r.meta.get("client_saturated"):
            notes.append(f"{r.run_id}: the load generator fell behind its schedule (send-lag p99 over bound)")
        if r.meta.get("complete") is False:
            notes.append(
                f"{r.run_id}: incomplete run ({r.meta.get('incomplete_reason', 'no reason recorded')})"
            )
    groups = _group_by_load(members, notes)
    comparison = _comparisons(
        groups, plan, (ttft_slo_s, tpot_slo_s), baseline, notes, n_boot=n_boot, seed=seed
    )
    capacity = measured_lambda_max(points, target)
    runs = [
        {
            "run_id": r.run_id,
            "path": str(r.path),
            "source": r.source,
            "backend": r.backend,
            "complete": r.meta.get("complete"),
            "client_saturated": r.meta.get("client_saturated"),
            "validity": run_verdict(r),
            "topologies": sorted(map(str, r.records["topology"].unique())),
        }
        for r in bundle.runs
    ]
    measured = {r["run_id"]: r["validity"] for r in runs if r["validity"] is not None}
    for r in runs:
        if r["validity"] not in (None, "valid"):
            notes.append(f"{r['run_id']}: {r['validity']}")
    return {
        "validity": combine(measured) if measured else None,
        "runs": runs,
        "topologies": topologies,
        "comparison": comparison,
        "side_by_side": _side_by_side(bundle, topologies, plan, capacity),
        "lambda_max": capacity,
        "plan": plan,
        "notes": notes,
        **({"capacity_ladder": dict(bundle.capacity_ladder)} if bundle.capacity_ladder else {}),
    }
