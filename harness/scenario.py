"""Scenario files: one TOML document that names the model, hardware, workload, topologies, SLO and network.

``load_scenario`` reads the file and validates *every* table of it (``harness.config``) before any
command does work, so a typo in a table the command does not read still stops it, in one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import ScenarioConfig, overrides, parse, where
from harness.config.base import read_toml
from harness.errors import ScenarioError


@dataclass(frozen=True)
class Scenario:
    """A scenario file: ``config`` is the typed document, ``raw`` the TOML it came from."""

    path: Path
    raw: Mapping[str, Any] = field(repr=False)
    config: ScenarioConfig = field(repr=False)

    @property
    def name(self) -> str:
        return self.config.name or self.path.stem

    def section(self, key: str, *, required: bool = False) -> Mapping[str, Any]:
        """One top-level table as written (``{}`` when absent and not required); already validated."""
        if required:
            self.require(key)
        return self.raw.get(key) or {}

    def require(self, *tables: str) -> None:
        """Raise, naming the first of ``tables`` the file lacks."""
        for key in tables:
            if key not in self.raw:
                raise ScenarioError("missing (required)", where=self.where(key))

    def where(self, *keys: str | int) -> str:
        """The location of a table in error messages: ``file.toml: [a.b]``."""
        return where(str(self.path), keys)

    def warnings(self, command: str, *, speedup: float | None = None, quick: bool = False) -> list[str]:
        """Knobs that ``command`` overrides or ignores, one line each (see ``harness.config.overrides``)."""
        found = overrides(self.config, self.raw, command=command, speedup=speedup, quick=quick)
        return [f"{self.path}: {w}" for w in found]


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario TOML file and validate all of it; a ``ScenarioError`` names what is wrong."""
    p = Path(path)
    if not p.is_file():
        raise ScenarioError("no such scenario file", where=str(p))
    raw = read_toml(p.read_bytes(), source=str(p))
    return Scenario(path=p, raw=raw, config=parse(ScenarioConfig, raw, source=str(p)))
