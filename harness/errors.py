"""Exceptions the harness raises on purpose. The CLI prints them as one clear line, never a traceback.

HarnessError                 anything the user can fix by changing input
├── InputError               a file, line or field that is wrong (names where)
│   ├── TraceError           a trace file the readers cannot use
│   └── ScenarioError        a scenario file, preset or flag that cannot work
└── CapabilityError          the machine lacks something (root, a qdisc, a binary)
"""

from __future__ import annotations


class HarnessError(Exception):
    """Base class: a problem the user can fix. ``str(err)`` is the whole message."""


class InputError(HarnessError, ValueError):
    """Bad input. ``where`` names the file, and line or field, when known."""

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class TraceError(InputError):
    """A trace file that cannot be read as asked."""


class ScenarioError(InputError):
    """A scenario, preset name or option that cannot work."""


class CapabilityError(HarnessError):
    """This machine cannot do what was asked (missing root, qdisc, binary...)."""
