"""The state file a built network leaves behind, so later processes can show, check and remove it.

``/run/prfaas-bench/<prefix>state.json`` (tmpfs: it does not outlive a reboot, and neither do namespaces).
It records the ``[network]`` table, the live per-direction specs, the backend, the owner process (if
the network lives only inside a ``with Network.up()``), and every process started for it.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE_DIR = Path(os.environ.get("PFB_STATE_DIR", "/run/prfaas-bench"))


@dataclass
class State:
    prefix: str
    backend: str
    table: dict[str, Any]
    current: dict[str, dict[str, Any]] = field(default_factory=dict)  # "a->b" -> LinkSpec fields
    owner_pid: int | None = None  # None: persistent (net up); else torn down when that process exits
    relays: dict[str, list[int]] = field(default_factory=dict)  # "a->b" -> [pid, start_ticks]
    spawned: list[list[int]] = field(default_factory=list)  # [[pid, start_ticks], ...]
    interfaces: list[str] = field(default_factory=list)  # real host interfaces shaped with --interface

    @staticmethod
    def path(prefix: str) -> Path:
        return STATE_DIR / f"{prefix}state.json"

    def save(self) -> None:
        """Write atomically through a temporary file of this process and thread, so a reader never
        sees half a file and two writers never share one. Read-modify-write callers hold
        ``locks.state_lock(prefix)`` so neither loses what the other recorded."""
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path(self.prefix), json.dumps(self.__dict__, indent=1))

    @classmethod
    def load(cls, prefix: str) -> State | None:
        p = cls.path(prefix)
        try:
            return cls(**json.loads(p.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):  # a foreign file (ours are written atomically): no state
            return None

    def delete(self) -> None:
        self.path(self.prefix).unlink(missing_ok=True)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step; the temporary name is unique to this thread."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_native_id()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): with the pid it names one process, even
    after the pid is reused. ``None`` when the process is gone or has exited (zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # exited; a daemonized relay's zombie waits for init to reap it
        return None
    return int(fields[19])


def is_alive(pid: int, ticks: int) -> bool:
    return start_ticks(pid) == ticks
