"""Scenario files: one TOML document that names the model, hardware, workload, topologies, SLO and network.

Each subsystem parses its own section (``Scenario.section("network")``) into its own frozen spec, so
this module knows nothing about their fields; it only finds the file, parses it and reports where a
problem is.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ScenarioError


@dataclass(frozen=True)
class Scenario:
    """A parsed scenario file. ``raw`` is the TOML document; ``path`` is where it came from."""

    path: Path
    raw: Mapping[str, Any] = field(repr=False)

    @property
    def name(self) -> str:
        return str(self.raw.get("name", self.path.stem))

    def section(self, key: str, *, required: bool = False) -> Mapping[str, Any]:
        """Return one top-level table (``{}`` when absent and not required)."""
        value = self.raw.get(key)
        if value is None:
            if required:
                raise ScenarioError(f"missing required table [{key}]", where=str(self.path))
            return {}
        if not isinstance(value, Mapping):
            raise ScenarioError(f"[{key}] must be a table", where=str(self.path))
        return value

    def where(self, *keys: str) -> str:
        """A location string for error messages: ``file.toml:[a.b]``."""
        return f"{self.path}:[{'.'.join(keys)}]"


def load_scenario(path: str | Path) -> Scenario:
    """Read and parse a scenario TOML file, with a clear error for a missing or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise ScenarioError("no such scenario file", where=str(p))
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"not UTF-8 text ({exc.reason})", where=str(p)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"invalid TOML: {exc}", where=str(p)) from None
    return Scenario(path=p, raw=raw)
