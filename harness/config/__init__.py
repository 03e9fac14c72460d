"""The configuration layer: every TOML file the harness reads (scenarios, presets) becomes typed,
frozen values here, through one library (pydantic) and with one error wording.

base.py        strict scalar types, bounds, ``parse`` and the ``FILE: [TABLE] KEY: PROBLEM`` wording
links.py       the link vocabulary: ``ModelledLink`` (Gbit/s, the deployment) and ``LinkSpec``
               (Mbit/s, one shaped direction on this machine)
deployment.py  [model] [hardware] [workload] [slo] [topologies.NAME]
network.py     [network]: sites, links, events -> ``NetworkSpec``
runs.py        [simulate] [emulation] [bench] [replay]
scenario.py    ``ScenarioConfig``: the whole file, and the checks that span its tables
overrides.py   warnings for knobs that another knob overrides or a command ignores

Hardware and model presets are typed in ``harness.model.presets`` with the same building blocks.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.config.base import FieldError, parse, where
    from harness.config.links import LinkSpec, ModelledLink
    from harness.config.overrides import overrides
    from harness.config.scenario import ScenarioConfig

__all__ = ["FieldError", "LinkSpec", "ModelledLink", "ScenarioConfig", "overrides", "parse", "where"]

# Imported on first use (PEP 562), not with the package: ``harness.network`` needs only base, links
# and network, and the scenario pulls in the trace readers and pandas (~80% of its import time; in the
# netem VM under TCG every Python process a network test starts paid that again).
_HOME = {
    "FieldError": "base",
    "parse": "base",
    "where": "base",
    "LinkSpec": "links",
    "ModelledLink": "links",
    "overrides": "overrides",
    "ScenarioConfig": "scenario",
}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value
