"""A sweep file: a base scenario, the overrides that make its points, and what each point runs.

    scenario = "paper-case-study.toml"    # the base scenario, relative to the sweep file
    run = ["plan", "max-rate"]           # per point: plan, simulate (at a fixed rate), max-rate
    topologies = ["prfaas", "homogeneous"]  # optional: a subset of the scenario's topologies

    [grid]                               # every combination of these (a Cartesian product)
    "link.bandwidth_gbps" = [10, 25, 100]
    seed = [0, 1, 2]

    [[cases]]                            # or/and a list of override sets, each crossed with the grid
    "model.preset" = "minimax-m2.5"

A key is a scenario field by its dotted name (``[link] bandwidth_gbps`` is ``link.bandwidth_gbps``;
an item of an array of tables by its index, ``network.links.0.rate_mbit``), or ``rate`` (simulate's
``--rate``, requests/s) or ``seed`` (simulate's ``--seed``). ``load_sweep`` checks all of it before
anything runs: the file's own keys, every value of every axis applied alone to the base scenario (the
whole deployment built from it), and every point's combination against the scenario's schema; a
problem is one ``ScenarioError`` line naming the file, the table and the key.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from harness.config import ScenarioConfig, parse
from harness.config.base import Positive, Seed, Str, read_toml, table
from harness.errors import ScenarioError
from harness.scenario import Scenario, load_scenario

RUNS = ("plan", "simulate", "max-rate")
RATE, SEED = "rate", "seed"  # the two keys that are simulate's options, not scenario fields
MAX_POINTS = 100_000  # a typo in a grid must not queue a year of work
_TABLES = frozenset(f.name for f in dataclasses.fields(ScenarioConfig))  # top-level tables a key may add


@table
class SweepTable:
    """The sweep file as written (see the module docstring)."""

    scenario: Str
    run: Annotated[list[Literal["plan", "simulate", "max-rate"]], Field(min_length=1)]
    description: Str = ""
    topologies: Annotated[list[Str], Field(min_length=1)] | None = None
    grid: dict[Str, Annotated[list[Any], Field(min_length=1)]] = field(default_factory=dict)
    cases: list[dict[Str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Point:
    """One design point: the base scenario with ``overrides``, run as ``runs`` say. Picklable, so an
    executor can ship it to a worker process or host."""

    index: int  # its place in the sweep file's order
    key: str  # deterministic: the same point in any sweep has the same key
    overrides: tuple[tuple[str, Any], ...]  # dotted scenario field -> value, in the file's order
    rate: float | None
    seed: int | None
    runs: tuple[str, ...]
    topologies: tuple[str, ...] | None
    scenario_path: str
    base: Mapping[str, Any] = field(repr=False, compare=False)  # the base scenario's TOML document

    def scenario(self) -> Scenario:
        """The point's scenario, validated (relative presets and traces resolve beside the base file)."""
        raw = apply_overrides(self.base, self.overrides)
        path = Path(self.scenario_path)
        return Scenario(path=path, raw=raw, config=parse(ScenarioConfig, raw, source=str(path)))

    def labels(self) -> dict[str, Any]:
        """The point's own columns: key, index and every value that sets it."""
        return {
            "key": self.key,
            "point": self.index,
            **dict(self.overrides),
            RATE: self.rate,
            SEED: self.seed,
        }


@dataclass(frozen=True)
class Sweep:
    """A checked sweep file: its points in order."""

    path: Path
    table: SweepTable
    base: Scenario
    points: tuple[Point, ...]


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """A copy of the TOML document ``raw`` with each dotted key set. A missing top-level table of the
    scenario is added; any other missing table is a ``ScenarioError`` (a misspelt topology name must not
    quietly become a new topology)."""
    out = copy.deepcopy(dict(raw))
    for dotted, value in overrides:
        parts = dotted.split(".")
        node: Any = out
        for depth, part in enumerate(parts[:-1]):
            node = _child(node, part, dotted, top=depth == 0)
        last = parts[-1]
        if isinstance(node, list):
            node[_index(node, last, dotted)] = value
        else:
            node[last] = value
    return out


def _child(node: Any, part: str, dotted: str, *, top: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, dotted)]
    if not isinstance(node, dict):
        raise ScenarioError(f"{dotted!r}: {part!r} is inside a value, not a table")
    if part not in node:
        if not (top and part in _TABLES):
            raise ScenarioError(f"{dotted!r}: the base scenario has no table {part!r} there")
        node[part] = {}
    child = node[part]
    if not isinstance(child, dict | list):
        raise ScenarioError(f"{dotted!r}: {part!r} is a value, not a table")
    return child


def _index(node: list, part: str, dotted: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ScenarioError(f"{dotted!r}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def point_key(base: Mapping[str, Any], point: Mapping[str, Any]) -> str:
    """16 hex digits of SHA-256 over the base scenario's document and the point's settings."""
    text = json.dumps({"scenario": base, **point}, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file and its base scenario; every point is built, none is run."""
    p = Path(path)
    if not p.is_file():
        raise ScenarioError("no such sweep file", where=str(p))
    source = str(p)
    spec = parse(SweepTable, read_toml(p.read_bytes(), source=source), source=source)
    base_path = Path(spec.scenario) if Path(spec.scenario).is_absolute() else p.parent / spec.scenario
    if not base_path.is_file():
        raise ScenarioError(f"no such scenario file {str(base_path)!r}", where=f"{source}: scenario")
    base = load_scenario(base_path)
    known = list(base.config.topologies or {})
    for name in spec.topologies or ():
        if name not in known:
            raise ScenarioError(f"unknown topology {name!r}; the scenario defines {', '.join(known)}",
                                where=f"{source}: topologies")  # fmt: skip
    for i, case in enumerate(spec.cases):
        for k in case:
            if k in spec.grid:
                raise ScenarioError(
                    "is also a [grid] axis; give it in one place", where=f"{source}: [cases[{i}]] {k}"
                )
    size = math.prod(len(v) for v in spec.grid.values()) * max(1, len(spec.cases))
    if size > MAX_POINTS:
        raise ScenarioError(
            f"{size:,} points; at most {MAX_POINTS:,} in one sweep", where=f"{source}: [grid]"
        )
    check = partial(_check_value, base, spec)
    for name, values in spec.grid.items():
        for value in {_hashable(v): v for v in values}.values():
            check(name, value, where=f"{source}: [grid] {name}")
    for i, case in enumerate(spec.cases):
        for name, value in case.items():
            check(name, value, where=f"{source}: [cases[{i}]] {name}")
    points = tuple(_points(spec, base, source))
    return Sweep(p, spec, base, points)


def _hashable(value: Any) -> Any:
    """A key for de-duplicating axis values (lists and tables are checked once per distinct value)."""
    return json.dumps(value, sort_keys=True, default=str)


def _check_value(base: Scenario, spec: SweepTable, name: str, value: Any, *, where: str) -> None:
    """One axis value applied alone to the base scenario: the scenario must validate and its deployment
    build (presets found, the model fits the hardware; for simulate, every topology resolved), or the
    sweep stops here."""
    from harness.model.deployment import deployment_from_scenario
    from harness.serving.config import prepare

    if name == RATE:
        parse(Positive, value, source=where)
        return
    if name == SEED:
        parse(Seed, value, source=where)
        return
    try:
        raw = apply_overrides(base.raw, [(name, value)])
        scenario = Scenario(path=base.path, raw=raw, config=parse(ScenarioConfig, raw, source=str(base.path)))
        if {"simulate", "max-rate"} & set(spec.run):
            prepare(scenario, topologies=spec.topologies)
        else:
            deployment_from_scenario(scenario)
    except ScenarioError as exc:
        raise ScenarioError(f"= {value!r}: {_without(str(exc), str(base.path))}", where=where) from None


def _without(message: str, path: str) -> str:
    """A scenario error's message without the base file's name (the sweep file is the one to fix)."""
    return message.removeprefix(f"{path}: ")


def _points(spec: SweepTable, base: Scenario, source: str):
    names = list(spec.grid)
    runs = tuple(r for r in RUNS if r in spec.run)
    topologies = tuple(spec.topologies) if spec.topologies else None
    index = 0
    for c, case in enumerate(spec.cases or [{}]):
        for combo in itertools.product(*spec.grid.values()):
            settings = [*zip(names, combo, strict=True), *case.items()]
            values = dict(settings)
            overrides = tuple((k, v) for k, v in settings if k not in (RATE, SEED))
            rate, seed = values.get(RATE), values.get(SEED)
            where = f"{source}: point {index} ({_describe(settings)})" + (
                f" of [cases[{c}]]" if spec.cases else ""
            )
            try:
                scenario = Point(
                    index, "", overrides, rate, seed, runs, topologies, str(base.path), base.raw
                ).scenario()
            except ScenarioError as exc:
                raise ScenarioError(_without(str(exc), str(base.path)), where=where) from None
            if "simulate" in runs and rate is None and _needs_rate(scenario):
                raise ScenarioError(
                    "simulate needs a rate: give [grid] rate or [workload] rate_rps", where=where
                )
            key = point_key(
                base.raw,
                {"overrides": dict(overrides), RATE: rate, SEED: seed, "run": runs, "topologies": topologies},
            )
            yield Point(index, key, overrides, rate, seed, runs, topologies, str(base.path), base.raw)
            index += 1


def _needs_rate(scenario: Scenario) -> bool:
    workload = scenario.config.workload
    return workload is not None and workload.kind != "trace" and workload.rate_rps is None


def _describe(settings: Sequence[tuple[str, Any]]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in settings) or "the base scenario"
