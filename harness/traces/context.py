"""The one rule for prompts beyond the model's context, shared by plan, simulate, replay and bench.

A request fits when prompt + output <= the context. Rows that do not are refused (the default: one
line naming how many and the longest), clipped (``--clip``: the prompt is cut to context − output,
its leading block ids kept, so prefix sharing survives) or dropped (``--drop``). What was done is a
``ContextFit``, which every command writes into its results' metadata.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from harness.errors import InputError
from harness.traces.frame import Trace
from harness.traces.transforms import clip_lengths

ContextPolicy = Literal["refuse", "clip", "drop"]
POLICIES: tuple[ContextPolicy, ...] = ("refuse", "clip", "drop")


@dataclass(frozen=True)
class ContextFit:
    """What the rule did: ``rows`` of ``requests`` exceeded ``context_tokens`` (prompt + output), the
    longest by ``longest_tokens`` (prompt + output, 0 when none exceeded); ``policy`` says what happened
    to them (``refuse`` only when there were none)."""

    policy: ContextPolicy
    context_tokens: int
    requests: int
    rows: int
    longest_tokens: int

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One phrase for plain-text output."""
        if not self.rows:
            return f"every prompt + output within the {self.context_tokens:,}-token context"
        done = "clipped to fit" if self.policy == "clip" else "dropped"
        return (
            f"{self.rows:,} of {self.requests:,} requests beyond the {self.context_tokens:,}-token context "
            f"{done} (longest {self.longest_tokens:,} tokens)"
        )


def fit_context(
    trace: Trace, context_tokens: int, policy: ContextPolicy = "refuse", *, where: str | None = None
) -> tuple[Trace, ContextFit]:
    """Apply the rule to ``trace`` for a model of ``context_tokens``; returns the trace to use and what
    was done. ``refuse`` raises an ``InputError`` (at ``where``, e.g. the trace file) when any row is over."""
    if policy not in POLICIES:
        raise ValueError(f"context policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    total = trace.input_tokens + trace.output_tokens
    over = total > context_tokens
    rows = int(over.sum())
    longest = int(total[over].max()) if rows else 0
    fit = ContextFit(policy, int(context_tokens), len(trace), rows, longest)
    if not rows:
        return trace, fit
    if policy == "refuse":
        i = int(np.flatnonzero(total == longest)[0])
        raise InputError(
            f"{rows:,} of {len(trace):,} requests exceed the model's context of {context_tokens:,} tokens "
            f"(longest: row {i}, {int(trace.input_tokens[i]):,} prompt + {int(trace.output_tokens[i]):,} "
            "output); pass --clip to cut their prompts to fit or --drop to leave them out",
            where=where,
        )
    if policy == "drop":
        if rows == len(trace):
            raise InputError(
                f"all {rows:,} requests exceed the model's context of {context_tokens:,} tokens; "
                "--drop would leave none",
                where=where,
            )
        return trace.take(~over), fit
    room = np.maximum(context_tokens - trace.output_tokens, 1)
    clipped, _ = clip_lengths(trace.replace(input_tokens=np.minimum(trace.input_tokens, room)), None)
    return clipped, fit
