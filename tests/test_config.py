"""The configuration layer: every table of every schema refuses an unknown key and a wrong type in one
wording (``FILE: [TABLE] KEY: PROBLEM``); the tables are found by walking the schemas, so a table
added later is covered (or fails here until an example of it is added to ``EXAMPLES``)."""

from __future__ import annotations

import copy
import dataclasses
import tomllib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import pytest

from harness.config import ScenarioConfig, parse
from harness.errors import ScenarioError
from harness.model.presets import Hardware, ModelSpec

REPO = Path(__file__).resolve().parent.parent


def _toml(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text(encoding="utf-8"))


# Scenarios only: a sweep spec beside them names its scenario (tests/test_sweep.py checks those).
WORKLOADS = sorted(p for p in (REPO / "workloads").glob("*.toml") if "scenario" not in _toml(p))


def _preset(kind: str, name: str) -> dict[str, Any]:
    return tomllib.loads(resources.files("harness").joinpath(f"presets/{kind}/{name}.toml").read_text())


def _everything() -> list[dict[str, Any]]:
    """The case study plus one example of each optional table and workload kind."""
    base = _toml(REPO / "workloads" / "paper-case-study.toml")
    full = copy.deepcopy(base)
    full["replay"] = {
        "model": "m",
        "endpoints": {
            "pd": {"prefill_url": "http://a", "decode_url": "http://b"},
            "prfaas": "http://127.0.0.1:1",
        },
    }
    full["validity"] = {"send_lag_p99_ms": 20.0, "failed_share": 0.05}
    full["network"]["subnet"] = "10.77.0.0/16"
    link = full["network"]["links"][0]
    link["forward"], link["reverse"] = {"loss_pct": 0.5}, {"loss_pct": 0.5}
    full["network"]["events"] = [{"at_s": 1, "link": ["local", "remote"], "loss_pct": 1}]
    out = [full]
    for workload in (
        {"kind": "fixed", "tokens": 1000, "output_tokens": 10},
        {"kind": "uniform", "min_tokens": 10, "max_tokens": 20, "output_tokens": 10},
        {"kind": "trace", "trace": "t.jsonl"},
    ):
        out.append({**copy.deepcopy(base), "workload": workload})
    return out


EXAMPLES = {
    ScenarioConfig: _everything(),
    Hardware: [_preset("hardware", "h200")],
    ModelSpec: [_preset("models", "kimi-1t-hybrid"), _preset("models", "minimax-m2.5")],
}


# ---------------------------------------------------------------------------------------------- schema walk


def _strip(tp: Any) -> Any:
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (typing.Union, types.UnionType) and type(None) in get_args(tp):
            (tp,) = [a for a in get_args(tp) if a is not type(None)]
        else:
            return tp


def _tag(cls: type) -> str | None:
    kind = typing.get_type_hints(cls).get("kind")
    return get_args(kind)[0] if get_origin(kind) is Literal and len(get_args(kind)) == 1 else None


def _tables(tp: Any, loc: tuple = ()) -> typing.Iterator[tuple[tuple, type]]:
    """Every table type in ``tp`` with its location; ``"*"`` stands for any key, 0 for a list's first item."""
    tp = _strip(tp)
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # a tagged union: each member is a table at ``loc``
        for member in get_args(tp):
            yield from _tables(member, loc)
    elif dataclasses.is_dataclass(tp):
        yield loc, tp
        hints = typing.get_type_hints(tp, include_extras=True)
        for f in dataclasses.fields(tp):
            yield from _tables(hints[f.name], (*loc, f.name))
    elif origin is list:
        yield from _tables(get_args(tp)[0], (*loc, 0))
    elif origin is dict:
        yield from _tables(get_args(tp)[1], (*loc, "*"))


def _find(doc: dict, pattern: tuple, cls: type) -> tuple[tuple, dict] | None:
    """The concrete location and table in ``doc`` matching ``pattern`` (and ``cls``'s tag), if any."""
    node: Any = doc
    loc: list = []
    for part in pattern:
        if part == "*":
            if not isinstance(node, dict) or not node:
                return None
            part = next(iter(node))
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
        loc.append(part)
    if isinstance(node, str):  # an endpoint given as a bare URL
        return None
    if not isinstance(node, dict) or (_tag(cls) is not None and node.get("kind") != _tag(cls)):
        return None
    return tuple(loc), node


def _shown(loc: tuple) -> str:
    """How a location reads in messages: ``network.links[0].forward``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


CASES = [
    pytest.param(schema, pattern, cls, id=f"{schema.__name__}:{_shown(pattern) or '(top)'}:{cls.__name__}")
    for schema in EXAMPLES
    for pattern, cls in _tables(schema)
]


def _example(schema: type, pattern: tuple, cls: type) -> tuple[dict, tuple, dict]:
    for doc in EXAMPLES[schema]:
        doc = copy.deepcopy(doc)
        found = _find(doc, pattern, cls)
        if found is not None:
            return doc, *found
    pytest.fail(f"no example of [{_shown(pattern)}] ({cls.__name__}) in EXAMPLES: add one")


def _problem(schema: type, doc: dict) -> str:
    with pytest.raises(ScenarioError) as err:
        parse(schema, doc, source="s.toml")
    message = str(err.value)
    assert "\n" not in message
    return message


def _prefix(loc: tuple, key: str) -> str:
    return f"s.toml: [{_shown(loc)}] {key}: " if loc else f"s.toml: {key}: "


def test_every_example_is_valid():
    for schema, docs in EXAMPLES.items():
        for doc in docs:
            parse(schema, doc, source="s.toml")


@pytest.mark.parametrize(("schema", "pattern", "cls"), CASES)
def test_each_table_refuses_an_unknown_key_naming_file_table_and_key(schema, pattern, cls):
    doc, loc, table = _example(schema, pattern, cls)
    table["zz_typo"] = 1
    known = ", ".join(f.name for f in dataclasses.fields(cls))
    assert _problem(schema, doc) == _prefix(loc, "zz_typo") + f"unknown key (known: {known})"


_WRONG = {int: ("1", "must be an integer"), float: ("1", "must be a number"), str: (1, "must be a string"),
          bool: ("yes", "must be true or false")}  # fmt: skip


@pytest.mark.parametrize(("schema", "pattern", "cls"), CASES)
def test_each_table_refuses_wrong_types_naming_file_table_and_key(schema, pattern, cls):
    doc, loc, table = _example(schema, pattern, cls)
    hints = typing.get_type_hints(cls, include_extras=True)
    scalars = [k for k in table if k in hints and _strip(hints[k]) in _WRONG]
    assert scalars, f"the example of [{_shown(loc)}] sets no plain scalar key"
    for key in scalars:  # each alone: a lax field would take "1" for 1, or 1 for true
        good = table[key]
        wrong, problem = _WRONG[_strip(hints[key])]
        table[key] = wrong
        message = _problem(schema, doc)
        assert message.startswith(_prefix(loc, key) + problem) and message.endswith(f"got {wrong!r}"), message
        table[key] = good


def test_an_unknown_table_is_named_as_a_table():
    doc = copy.deepcopy(EXAMPLES[ScenarioConfig][0])
    doc["simulte"] = {"requests": 5}
    assert _problem(ScenarioConfig, doc).startswith(
        "s.toml: [simulte]: unknown table (known: name, description"
    )


@pytest.mark.parametrize("path", WORKLOADS, ids=lambda p: p.name)
def test_shipped_scenarios_are_valid(path):
    parse(ScenarioConfig, _toml(path), source=str(path))


@pytest.mark.parametrize(
    ("kind", "schema"), [("hardware", Hardware), ("models", ModelSpec)], ids=["hardware", "models"]
)
def test_shipped_presets_are_valid(kind, schema):
    folder = resources.files("harness").joinpath("presets", kind)
    names = [p.name for p in folder.iterdir() if p.name.endswith(".toml")]
    assert names
    for name in names:
        parse(schema, tomllib.loads(folder.joinpath(name).read_text()), source=name)
