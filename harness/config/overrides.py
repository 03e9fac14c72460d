"""Knobs that another knob overrides, or that a command ignores: one warning line each, naming both.

A scenario can be valid and still not do what its author meant: ``serve`` replaces the
``[network.links]`` delay with the ``[link]`` delay divided by the speed-up, ``bench`` runs at its
own speed-up, ``[slo] ttft_s`` outranks ``[simulate] ttft_slo_s``. Nothing here is an error; the
commands print these on stderr and write them into the run's metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness.config.scenario import LOCAL, REMOTE, ScenarioConfig

COMMANDS = ("plan", "simulate", "serve", "bench", "net up")  # "net up": without --hold


def overrides(
    cfg: ScenarioConfig,
    raw: Mapping[str, Any],
    *,
    command: str,
    speedup: float | None = None,
    quick: bool = False,
) -> list[str]:
    """The warnings for running ``command`` on the scenario (``cfg`` parsed from ``raw``, the TOML
    document, which tells a key written out from a default). ``speedup`` is serve's speed-up in force
    (after its flags); bench works its own out from ``[bench]``."""
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {COMMANDS}, got {command!r}")

    def given(table: str, key: str) -> bool:
        section = raw.get(table)
        return isinstance(section, Mapping) and key in section

    out: list[str] = []
    hw = cfg.hardware
    if hw is not None and hw.remote is None and hw.remote_price_per_gpu_hour is not None:
        out.append("[hardware] remote_price_per_gpu_hour is ignored: there is no [hardware] remote")
    if hw is not None and hw.remote is not None and cfg.topologies and not cfg.remote_topologies():
        out.append(
            f"[hardware] remote = {hw.remote!r} is ignored: no topology in [topologies] prefills remotely"
        )
    slo_ttft = cfg.slo.ttft_s if cfg.slo is not None else None
    if command in ("simulate", "bench") and slo_ttft is not None and given("simulate", "ttft_slo_s"):
        out.append(
            f"[simulate] ttft_slo_s = {cfg.simulate.ttft_slo_s:g} is ignored: "
            f"[slo] ttft_s = {slo_ttft:g} is the TTFT bound"
        )
    sessions = getattr(cfg.workload, "sessions", None)
    if command in ("bench", "plan", "serve") and sessions is not None:
        out.append(
            f"[workload] sessions = {sessions!r} is ignored: {command} runs every row open loop "
            "(simulate and replay honour it)"
        )
    if command == "bench":
        bench = cfg.bench.resolve(quick=quick)

        quick_keys = cfg.bench.quick.given() if quick and cfg.bench.quick is not None else {}

        def source(key: str) -> str:  # where the value in force came from (see BenchTable.resolve)
            if key in quick_keys:
                return "[bench.quick]"
            return "bench --quick" if quick and not quick_keys and key.endswith("_requests") else "[bench]"

        if (
            bench.speedup is not None
            and given("emulation", "speedup")
            and bench.speedup != cfg.emulation.speedup
        ):
            out.append(
                f"{source('speedup')} speedup = {bench.speedup:g} overrides [emulation] speedup = "
                f"{cfg.emulation.speedup:g} (which only serve uses)"
            )
        speedup = bench.speedup or cfg.emulation.speedup
        if given("simulate", "requests") and cfg.simulate.requests != bench.capacity_requests:
            out.append(
                f"[simulate] requests = {cfg.simulate.requests} is ignored: bench probes with "
                f"{source('capacity_requests')} capacity_requests = {bench.capacity_requests}"
            )
        if given("simulate", "seed") and cfg.simulate.seed != bench.seed:
            out.append(
                f"[simulate] seed = {cfg.simulate.seed} is ignored: bench uses {source('seed')} seed = {bench.seed}"
            )
        if cfg.replay is not None:
            out.append("[replay] is ignored: bench replays against its own emulated clusters")
    if command in ("serve", "bench"):
        out += _served_link(
            cfg, command, speedup or cfg.emulation.speedup, given("emulation", "kv_rate_mbit")
        )
    if cfg.network is not None and cfg.network.events:
        if command == "net up":
            out.append("[[network.events]] are ignored: net up does not apply them (`net up --hold` does)")
        if command in ("simulate", "bench"):
            out += _unmodelled_events(cfg)
    return out


def _unmodelled_events(cfg: ScenarioConfig) -> list[str]:
    """What of the link events simulate's fluid link does not model: only rate, delay and down
    changes of the local-remote link are (serve applies every event to the shaped network)."""
    assert cfg.network is not None
    out = []
    for i, ev in enumerate(cfg.network.events):
        where = f"[network.events[{i}]]"
        if sorted(ev.link) != [LOCAL, REMOTE]:
            out.append(f"{where} is not simulated: simulate models only the {LOCAL}-{REMOTE} link")
            continue
        for key in ("jitter_ms", "loss_pct"):
            if getattr(ev, key) is not None:
                out.append(f"{where} {key} is not simulated: the fluid link models rate, delay and down")
    return out


def _served_link(cfg: ScenarioConfig, command: str, speedup: float, rate_given: bool) -> list[str]:
    """The emulated link serve builds: its delay is [link]'s over the speed-up, its rate [network]'s."""
    if cfg.network is None:
        return []
    out: list[str] = []
    real = cfg.link.delay_ms if cfg.link is not None else 0.0
    delay = real / speedup
    for i, link in enumerate(cfg.network.links):
        if sorted(link.between) != [LOCAL, REMOTE]:
            continue
        for part, name in ((link, f"[network.links[{i}]]"), (link.forward, f"[network.links[{i}].forward]"),
                           (link.reverse, f"[network.links[{i}].reverse]")):  # fmt: skip
            if part is not None and part.delay_ms is not None and part.delay_ms != delay:
                out.append(
                    f"{name} delay_ms = {part.delay_ms:g} is replaced by [link] delay_ms / speedup = "
                    f"{real:g} / {speedup:g} = {delay:g} under {command}"
                    + (" (jitter_ms scaled alike)" if part.jitter_ms else "")
                )
        kv = cfg.network.spec().link(LOCAL, REMOTE).spec(REMOTE, LOCAL)
        if rate_given and kv.rate_mbit is not None and kv.rate_mbit != cfg.emulation.kv_rate_mbit:
            out.append(
                f"[emulation] kv_rate_mbit = {cfg.emulation.kv_rate_mbit:g} is ignored: "
                f"[network.links[{i}]] sets the emulated rate, {kv.rate_mbit:g} Mbit/s"
            )
    return out
