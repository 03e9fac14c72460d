"""Multi-turn sessions in a trace: which row is the next turn of which, and when it may be sent.

A row belongs to a session (``Trace.session_id``) at a turn index (``Trace.turn``, 0 for the first).
The native format stores both; ``trace synth --sessions`` writes both; a native file with only
``session_id`` gets turns by arrival order within each session. Mooncake traces carry neither, so
``infer_sessions`` reads them off the ``hash_ids`` prefix chains (docs/traces.md, "Sessions"):

    row j continues row i when j's ids start with *all* of i's full-block ids (floor(input_i / block)
    of them, at least one: a turn's partial last block is rewritten once the answer follows it), and
    input_j >= input_i + output_i (the next prompt holds the previous prompt and its answer), and no
    earlier row already continues i. Of several such i, the one with the longest prefix wins, then
    the latest. A first turn whose full blocks all appeared before it (a shared system prompt, say)
    wrote nothing of its own to continue, so no row continues it.

``session_plan`` turns that into what session mode needs per row: the predecessor row, the think time
between its end and this turn's send, and the new user tokens this turn adds to the predecessor's
prompt and answer. The rule that applies it on a clock is ``harness.serving.sessions.SessionGate``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.errors import InputError, TraceError
from harness.traces.frame import Trace


def infer_sessions(trace: Trace) -> Trace:
    """``trace`` with ``session_id`` and ``turn`` inferred from its ``hash_ids`` prefix chains (the
    module's rule); every row gets a session, a row that continues none opens its own."""
    n, block = len(trace), trace.block_tokens
    session = np.empty(n, dtype=np.int64)
    turn = np.empty(n, dtype=np.int64)
    waiting: dict[tuple[int, ...], list[int]] = {}  # full-block prefix -> rows not yet continued
    lengths: set[int] = set()  # the prefix lengths some row registered
    inputs, outputs = trace.input_tokens, trace.output_tokens
    seen: set[int] = set()  # every block id of the rows so far
    sessions = 0
    for j in range(n):
        ids = trace.hash_ids(j).tolist()
        pred = -1
        for k in sorted((k for k in lengths if k <= len(ids)), reverse=True):
            rows = waiting.get(tuple(ids[:k]))
            for i in reversed(rows or ()):
                if inputs[j] >= inputs[i] + outputs[i]:
                    pred = i
                    rows.remove(i)
                    break
            if pred >= 0:
                break
        if pred >= 0:
            session[j], turn[j] = session[pred], turn[pred] + 1
        else:
            session[j], turn[j] = sessions, 0
            sessions += 1
        full = min(int(inputs[j]) // block, len(ids))
        if full and (pred >= 0 or not seen.issuperset(ids[:full])):
            waiting.setdefault(tuple(ids[:full]), []).append(j)
            lengths.add(full)
        seen.update(ids)
    return trace.replace(session_id=session, turn=turn)


def with_turns(trace: Trace) -> Trace:
    """``trace`` with turn indices: as given, or (only ``session_id``) by arrival order in each session."""
    if trace.session_id is None or trace.turn is not None:
        return trace
    turn = np.full(len(trace), -1, dtype=np.int64)
    seen: dict[int, int] = {}
    for j, s in enumerate(trace.session_id.tolist()):
        if s >= 0:
            turn[j] = seen.get(s, 0)
            seen[s] = turn[j] + 1
    return trace.replace(turn=turn)


@dataclass(frozen=True)
class ThinkTime:
    """Seconds a user takes before the next turn, after the previous one ended.

    ``kind="trace"``: the trace's gap between the two turns' timestamps (our readers record no request
    durations, so nothing is subtracted); ``"fixed"``: ``seconds`` every time; ``"exp"``: exponential
    with mean ``seconds``, drawn per row from ``seed``.
    """

    kind: str = "trace"
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("trace", "fixed", "exp"):
            raise InputError(f"think time must be trace, fixed:S or exp:MEAN, got {self.kind!r}")
        if not (self.seconds >= 0 and np.isfinite(self.seconds)):
            raise InputError(f"think time seconds must be >= 0, got {self.seconds}")

    @classmethod
    def parse(cls, text: str) -> ThinkTime:
        """``trace``, ``fixed:S`` or ``exp:MEAN`` (seconds)."""
        kind, _, value = text.strip().partition(":")
        if kind == "trace" and not value:
            return cls()
        try:
            return cls(kind, float(value))
        except ValueError:
            raise InputError(f"think time must be trace, fixed:S or exp:MEAN, got {text!r}") from None

    def draw(self, gaps: np.ndarray, seed: int) -> np.ndarray:
        if self.kind == "trace":
            return gaps
        if self.kind == "fixed":
            return np.full(len(gaps), self.seconds)
        return np.random.default_rng(seed).exponential(self.seconds, len(gaps)) if self.seconds else gaps * 0


@dataclass(frozen=True, eq=False)
class SessionPlan:
    """Per trace row: ``predecessor`` (the row of the previous turn, -1 for a first turn or a row in no
    session), ``think_s`` (seconds after the predecessor ended before this turn is sent) and
    ``user_tokens`` (the new user tokens this turn adds to the predecessor's prompt and answer; a first
    turn's whole prompt)."""

    session_id: np.ndarray
    turn: np.ndarray
    predecessor: np.ndarray
    think_s: np.ndarray
    user_tokens: np.ndarray

    @property
    def sessions(self) -> int:
        return len(np.unique(self.session_id[self.session_id >= 0]))

    def summary(self) -> dict[str, float | int | None]:
        """Sessions, multi-turn sessions, later turns, the highest turn, and the median / p90 of the
        think time and the median of the new user tokens over later turns (None when there are none)."""
        later = self.predecessor >= 0
        multi = len(np.unique(self.session_id[later]))

        def q(values: np.ndarray, pct: float) -> float | None:
            return float(np.percentile(values[later], pct)) if later.any() else None

        return {
            "sessions": self.sessions, "multi_turn_sessions": multi, "later_turns": int(later.sum()),
            "max_turn": int(self.turn.max()) if len(self.turn) else 0,
            "think_p50_s": q(self.think_s, 50), "think_p90_s": q(self.think_s, 90),
            "user_tokens_p50": q(self.user_tokens, 50),
        }  # fmt: skip


def session_plan(trace: Trace, think: ThinkTime | None = None, *, seed: int = 0) -> SessionPlan:
    """The plan of ``trace`` (sessions as given, else inferred from ``hash_ids``).

    Raises ``TraceError`` naming the trace and row when a session's turns have a gap, repeat, or do
    not start at 0 (a turn whose predecessor is missing): session mode could never send it.
    """
    trace = with_turns(trace) if trace.session_id is not None else infer_sessions(trace)
    assert trace.session_id is not None and trace.turn is not None
    sid, turn = trace.session_id, trace.turn
    pred = np.full(len(trace), -1, dtype=np.int64)
    last: dict[int, tuple[int, int]] = {}  # session -> (its latest turn, that row)
    for j, (s, t) in enumerate(zip(sid.tolist(), turn.tolist(), strict=True)):
        if s < 0:
            continue
        seen_turn, row = last.get(s, (-1, -1))
        if t != seen_turn + 1:
            problem = (
                f"turn {t} repeats turn {seen_turn} of row {row + 1}"
                if t <= seen_turn
                else f"turn {t} has no predecessor (turn {seen_turn + 1} is missing)"
            )
            raise TraceError(f"session {s}: {problem}", where=f"{trace.source or 'trace'}: row {j + 1}")
        pred[j] = row
        last[s] = (t, j)
    follow = pred >= 0
    gaps = np.where(follow, trace.arrival_s - trace.arrival_s[np.maximum(pred, 0)], 0.0)
    think = np.where(follow, (think or ThinkTime()).draw(gaps, seed), 0.0)
    before = trace.input_tokens[np.maximum(pred, 0)] + trace.output_tokens[np.maximum(pred, 0)]
    user = np.where(follow, np.maximum(trace.input_tokens - before, 1), trace.input_tokens)
    return SessionPlan(sid, turn, pred, think, user.astype(np.int64))
