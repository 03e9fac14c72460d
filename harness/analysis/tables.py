"""Human-readable tables (rich) and CSV rows from an ``analyze`` result."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from harness.errors import InputError

# (summary key, header, format kind)
MAIN_COLUMNS = (
    ("requests", "req", "int"), ("failed", "fail", "int"), ("throughput_rps", "req/s", "f3"),
    ("output_tps", "tok/s", "f0"), ("goodput_rps", "good/s", "f3"), ("ttft_p50_s", "TTFT p50", "s"),
    ("ttft_p90_s", "p90", "s"), ("ttft_p99_s", "p99", "s"), ("tpot_p50_s", "TPOT p50", "ms"),
    ("tpot_p99_s", "p99", "ms"), ("itl_p99_s", "ITL p99", "ms"), ("e2e_p50_s", "E2E p50", "s"),
    ("e2e_p99_s", "p99", "s"), ("offload_share", "offload", "pct"), ("egress_gbps", "egress Gb/s", "f2"),
    ("cache_hit_rate", "cache hit", "pct"), ("send_lag_p99_s", "lag p99", "ms"),
)  # fmt: skip
BREAKDOWN_COLUMNS = (
    ("ttft_queue", "queue"), ("ttft_prefill", "prefill"), ("ttft_transfer", "KV transfer"),
    ("ttft_first_token", "first token"),
)  # fmt: skip


def fmt(value: Any, kind: str) -> str:
    """Format one cell; None (unobservable) prints as an en dash."""
    if value is None:
        return "–"
    match kind:
        case "int":
            return f"{int(value):,}"
        case "s":
            return f"{value:.3f}s"
        case "ms":
            return f"{value * 1000:.1f}ms"
        case "pct":
            return f"{value * 100:.1f}%"
        case "f0":
            return f"{value:,.0f}"
        case "f2":
            return f"{value:.2f}"
        case "x":
            return f"{value:.2f}×"
        case _:
            return f"{value:.3f}"


def source_order(source: str) -> tuple[int, str]:
    """Sort key: plan, simulate, replay, then anything else alphabetically."""
    known = ("plan", "simulate", "replay")
    return (known.index(source) if source in known else len(known), source)


def group_order(group: str) -> tuple[tuple[int, str], float]:
    """Sort key for comparison groups: by source, then by offered rate (``simulate@2.5rps``)."""
    source, _, rate = group.partition("@")
    return source_order(source), float(rate.removesuffix("rps") or 0)


def ratio_text(est: Mapping[str, Any] | None) -> str:
    """``1.23× [1.05–1.47]`` from a ``{value, low, high}`` estimate; an en dash when unknown."""
    if not est or est.get("value") is None:
        return "–"
    ci = "" if est.get("low") is None else f" [{est['low']:.2f}–{est['high']:.2f}]"
    return f"{est['value']:.2f}×{ci}"


def main_table(result: Mapping[str, Any]) -> Table:
    t = Table(
        title="Per topology (latencies of successful requests; from the scheduled send)", title_justify="left"
    )
    t.add_column("topology", style="bold")
    t.add_column("source")
    for _, header, _ in MAIN_COLUMNS:
        t.add_column(header, justify="right")
    for key, e in result["topologies"].items():
        cells = [fmt(e.get(k), kind) for k, _, kind in MAIN_COLUMNS]
        share = e.get("failed_share")
        if share:  # a throughput over a run with failures says so beside the figure
            cells[2] += f" ({share:.0%} failed)"
        t.add_row(key, e["source"], *cells)
    return t


def errors_table(result: Mapping[str, Any]) -> Table | None:
    """Failures by class, each with the server's own message (its first), when any request failed."""
    rows = [
        (key, cls, n, e.get("error_examples", {}).get(cls, ""))
        for key, e in result["topologies"].items()
        for cls, n in (e.get("errors") or {}).items()
    ]
    if not rows:
        return None
    t = Table(title="Failures (the server's message, first of each class)", title_justify="left")
    for col in ("topology", "error class", "count", "message"):
        t.add_column(col, justify="right" if col == "count" else "left")
    for key, cls, n, said in rows:
        t.add_row(key, cls, str(n), Text(said))
    return t


def breakdown_table(result: Mapping[str, Any]) -> Table:
    t = Table(title="TTFT breakdown (p50 / mean)", title_justify="left")
    t.add_column("topology", style="bold")
    for _, header in BREAKDOWN_COLUMNS:
        t.add_column(header, justify="right")
    t.add_column("TTFT p50", justify="right")
    for key, e in result["topologies"].items():
        cells = [
            "not measured"  # a PD pair without a KV connector: no KV moved (analyze's note says more)
            if k == "ttft_transfer" and e.get("pd_no_kv_transfer") and e.get(f"{k}_mean_s") is None
            else f"{fmt(e.get(f'{k}_p50_s'), 's')} / {fmt(e.get(f'{k}_mean_s'), 's')}"
            for k, _ in BREAKDOWN_COLUMNS
        ]
        t.add_row(key, *cells, fmt(e.get("ttft_p50_s"), "s"))
    return t


def sessions_table(result: Mapping[str, Any]) -> Table | None:
    """Session-mode runs: sessions, turns, time to complete a session, TTFT p50 by turn index."""
    rows = {k: e["sessions"] for k, e in result["topologies"].items() if e.get("sessions")}
    if not rows:
        return None
    turns = sorted({t for f in rows.values() for t in f["ttft_by_turn"]}, key=lambda t: int(t.rstrip("+")))
    t = Table(title="Sessions (TTFT p50 by turn index)", title_justify="left")
    for c in ("topology", "sessions", "turns mean / max", "session p50 / p90", *(f"turn {x}" for x in turns)):
        t.add_column(c, justify="left" if c == "topology" else "right")
    for key, f in rows.items():
        by = f["ttft_by_turn"]
        t.add_row(
            key,
            str(f["sessions"]),
            f"{f['turns_mean']:.2f} / {f['turns_max']}",
            f"{fmt(f['session_s_p50'], 's')} / {fmt(f['session_s_p90'], 's')}",
            *(fmt(by[x]["p50_s"], "s") if x in by else "" for x in turns),
        )
    return t


def comparison_table(source: str, comp: Mapping[str, Any]) -> Table:
    """Ratios against the baseline; an invalid comparison says so in its title, in red, so its ratios are
    never read as a finding."""
    title = f"{source}: vs {comp['baseline']} (ratio [95% bootstrap CI])"
    if _invalid(comp.get("validity")):
        title = f"[bold red]{title}: INVALID RUNS, not a finding (see validity above)[/]"
    t = Table(title=title, title_justify="left")
    for h in (
        "topology",
        "throughput",
        "goodput",
        "TTFT p50",
        "TTFT p90",
        "TPOT p50",
        "$/h",
        "throughput per $",
    ):
        t.add_column(h, justify="left" if h == "topology" else "right")
    for name, row in comp["rows"].items():
        cost = row.get("cost_per_hour")
        t.add_row(
            name, ratio_text(row["throughput_rps"]), ratio_text(row["goodput_rps"]), ratio_text(row["ttft_p50_s"]),
            ratio_text(row["ttft_p90_s"]), ratio_text(row["tpot_p50_s"]), "–" if cost is None else f"{cost:,.0f}",
            ratio_text(row.get("throughput_per_cost")),
        )  # fmt: skip
    return t


def side_by_side_table(side: Mapping[str, Any]) -> Table:
    sources = sorted({s for per in side.values() for s in per}, key=source_order)
    t = Table(
        title="Side by side: Λ_max (plan, or measured by a sweep), throughput, TTFT p90", title_justify="left"
    )
    t.add_column("topology", style="bold")
    for s in sources:
        for h in ("Λ_max", "req/s", "TTFT p90"):
            t.add_column(f"{s} {h}", justify="right")
    for name, per in side.items():
        cells = []
        for s in sources:
            e = per.get(s, {})
            cells += [
                fmt(e.get("lambda_max_rps"), "f3"),
                fmt(e.get("throughput_rps"), "f3"),
                fmt(e.get("ttft_p90_s"), "s"),
            ]
        t.add_row(name, *cells)
    return t


def show_side_by_side(side: Mapping[str, Any]) -> bool:
    """Worth a table when plan results exist or more than one source measured the topologies."""
    sources = {s for per in side.values() for s in per}
    return len(sources) > 1 or "plan" in sources


def headline(result: Mapping[str, Any]) -> list[str]:
    """One line per source with the gains over the baseline: the plan's Λ_max ratios, measured Λ_max
    ratios from rate sweeps, and measured throughput / TTFT p90 ratios (what ``make bench`` ends with).

    A measured line whose runs are invalid (``harness.validity``) says ``invalid: <reasons>`` instead of
    ratios the runs cannot support."""
    lines = []
    plan_ratios = (result.get("plan") or {}).get("ratios") or {}
    vs = [f"{k.replace('_vs_', ' vs ')} {v:.2f}×" for k, v in plan_ratios.items()
          if "_vs_" in k and not k.endswith("_per_cost") and isinstance(v, int | float)]  # fmt: skip
    if vs:
        lines.append("plan (Λ_max): " + ", ".join(vs))
    for source, per in sorted(result.get("lambda_max", {}).items(), key=lambda kv: source_order(kv[0])):
        invalid = _invalid(_source_verdict(result, source))
        if invalid:
            lines.append(f"{source} (measured Λ_max): {invalid}")
            continue
        base = (per.get("homogeneous") or {}).get("lambda_max_rps")
        parts = [f"{n} {found['lambda_max_rps'] / base:.2f}×" for n, found in per.items()
                 if base and n != "homogeneous" and found["lambda_max_rps"] is not None]  # fmt: skip
        if parts:
            lines.append(f"{source} (measured Λ_max vs homogeneous): " + ", ".join(parts))
    for group, comp in sorted(result.get("comparison", {}).items(), key=lambda kv: group_order(kv[0])):
        invalid = _invalid(comp.get("validity"))
        if invalid:
            lines.append(f"{group} (vs {comp['baseline']}): {invalid}")
            continue
        parts = [f"{n} throughput {ratio_text(r['throughput_rps'])}, TTFT p90 {ratio_text(r['ttft_p90_s'])}"
                 for n, r in comp["rows"].items() if n != comp["baseline"]]  # fmt: skip
        if parts:
            lines.append(f"{group} (vs {comp['baseline']}): " + "; ".join(parts))
    if result.get("capacity_ladder"):
        lines += ladder_lines(result["capacity_ladder"])
    return lines


def ladder_lines(lad: Mapping[str, Any]) -> list[str]:
    """The capacity ladder's headline (``analysis.json`` ``capacity_ladder``): per topology Λ_max from
    plan, simulate's search and replay's ladder (with its bracket), then replay's gains with their
    interval beside simulate's and plan's. Invalid replay runs print their reasons instead of figures."""
    invalid = _invalid(lad.get("validity"))
    replay = (lad.get("sources") or {}).get("replay") or {}
    lines = []
    for name, lam in lad["lambda_max"].items():
        fit = replay.get(name) or {}
        if invalid:
            measured = "replay not a finding (invalid runs)"
        elif fit.get("lambda_max_rps") is not None:
            measured = f"replay {fit['lambda_max_rps']:.2f} [{fit['low_rps']:.2f}–{fit['high_rps']:.2f}]"
        elif fit.get("high_rps") is not None:
            measured = f"replay < {fit['high_rps']:.2f} (the lowest rung failed)"
        else:
            measured = (
                f"replay ≥ {fit['low_rps']:.2f} (every rung passed)" if fit.get("low_rps") else "replay –"
            )
        lines.append(
            f"Λ_max {name} (req/s): plan {fmt(lam.get('plan'), 'f2')}, simulate {fmt(lam.get('simulate'), 'f2')}, "
            f"{measured}"
        )
    for pair, g in lad["gain"].items():
        label = pair.replace("_vs_", " vs ")
        if invalid:
            lines.append(
                f"replay gain {label}: invalid runs, not a finding (reasons: the capacity ladder table)"
            )
            continue
        rep = g.get("replay_ladder")
        text = "– (a Λ_max not bracketed)" if rep is None else (
            f"{rep['value']:.2f}× [{rep['ci_low']:.2f}–{rep['ci_high']:.2f}] (95% CI from the rungs)"
        )  # fmt: skip
        lines.append(
            f"replay gain {label}: {text}; simulate {fmt(g.get('simulate'), 'x')}, plan {fmt(g.get('plan'), 'x')}"
        )
    return lines


def ladder_table(lad: Mapping[str, Any]) -> Table:
    """Every rung, replay beside simulate on the same requests: attainment, achieved / offered, verdict."""
    t = Table(
        title="Capacity ladder (each rung judged as a Λ_max probe; replay / simulate on the same requests)",
        title_justify="left",
    )
    for h in ("topology", "× Λ_max sim", "req/s", "attainment", "achieved/offered", "verdict", "validity"):
        t.add_column(h, justify="left" if h in ("topology", "verdict", "validity") else "right")
    sources = lad["sources"]
    for name, rep in (sources.get("replay") or {}).items():
        sim = {r["share"]: r for r in ((sources.get("simulate") or {}).get(name) or {}).get("rungs", [])}
        for r in rep["rungs"]:
            s = sim.get(r["share"], {})

            def pair(f: Any, r: Mapping[str, Any] = r, s: Mapping[str, Any] = s) -> str:
                return f"{f(r)} / {f(s) if s else '–'}"

            t.add_row(
                name, f"{r['share']:g}", f"{r['rate_rps']:.3f}",
                pair(lambda x: f"{x['attainment']:.1%}"),
                pair(lambda x: f"{x['achieved_rps'] / x['offered_rps']:.1%}"),
                pair(lambda x: "pass" if x["passed"] else x["reason"]),
                r.get("validity") or "–",
            )  # fmt: skip
    return t


def _invalid(verdict: str | None) -> str | None:
    return verdict if verdict and verdict.startswith("invalid") else None


def _source_verdict(result: Mapping[str, Any], source: str) -> str | None:
    """The first invalid verdict among a source's runs (a measured Λ_max needs every rate's run)."""
    verdicts = [r.get("validity") for r in result.get("runs", ()) if r.get("source") == source]
    return next((v for v in verdicts if _invalid(v)), None)


def render(result: Mapping[str, Any], with_headline: bool = True) -> Group:
    """All tables for a terminal: per topology, breakdown, comparisons, side by side, notes, and the
    headline lines unless the caller prints them itself (bench, after its run summary)."""
    parts: list[Any] = [validity_line(result)] if result.get("validity") else []
    parts += [main_table(result), breakdown_table(result)] if result["topologies"] else []
    errors = errors_table(result) if result["topologies"] else None
    parts += [errors] if errors is not None else []
    sessions = sessions_table(result) if result["topologies"] else None
    parts += [sessions] if sessions is not None else []
    parts += [comparison_table(src, comp) for src, comp in result["comparison"].items()]
    if show_side_by_side(result["side_by_side"]):
        parts.append(side_by_side_table(result["side_by_side"]))
    parts += [ladder_table(result["capacity_ladder"])] if result.get("capacity_ladder") else []
    parts += [f"[yellow]note:[/] {n}" for n in result["notes"]]
    parts += [f"[bold]{line}[/]" for line in headline(result)] if with_headline else []
    return Group(*parts)


def validity_line(result: Mapping[str, Any]) -> Text:
    """The measured runs' verdict, first: green ``valid``, red ``invalid: …``, yellow ``unknown``."""
    verdict = str(result["validity"])
    style = "bold green" if verdict == "valid" else "bold red" if verdict.startswith("invalid") else "yellow"
    return Text(f"validity: {verdict}", style=style)


def print_tables(
    result: Mapping[str, Any], console: Console | None = None, with_headline: bool = True
) -> None:
    (console or Console(width=200)).print(render(result, with_headline))


def write_csv(result: Mapping[str, Any], path: str | Path) -> Path:
    """One row per topology entry, every scalar key a column (the error histogram is left out)."""
    rows = [
        {"key": key, **{k: v for k, v in e.items() if not isinstance(v, Mapping)}}
        for key, e in result["topologies"].items()
    ]
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    return write_output(path, buf.getvalue())


def write_output(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` (parents created); a path that cannot be written is named in one line."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "w", newline="", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise InputError(f"cannot write ({exc.strerror or exc})", where=str(p)) from None
    return p
