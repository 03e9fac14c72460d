"""Synthetic traces: lengths x arrivals, plus prefix sharing expressed as ``hash_ids``.

Block ids follow Mooncake's meaning: an id names a full ``block_tokens`` block *and everything before
it*, so two requests share a block only when their prompts agree up to the end of that block. Hence:

- a shared system prompt of L tokens gives floor(L / block) shared leading blocks; the partial block
  where the user text starts is fresh;
- in a multi-turn session, turn k's prompt is turn k-1's prompt + its answer + a new user message,
  so it reuses the floor(input_{k-1} / block) full blocks of the previous prompt and the rest is fresh.

Every request has exactly ceil(input_tokens / block_tokens) ids. Each random stream (arrivals, lengths,
outputs, prompts, sessions) has its own child seed, so switching prefix sharing on does not change the
arrivals or lengths drawn for the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from harness.errors import InputError
from harness.traces.arrivals import ArrivalProcess
from harness.traces.distributions import Fixed, LengthDistribution, Uniform
from harness.traces.frame import DEFAULT_BLOCK_TOKENS, Trace, offsets_from_lengths, offsets_from_lists


@dataclass(frozen=True)
class SystemPrompts:
    """``count`` shared system prompts of ``tokens`` tokens each.

    A fraction ``share`` of requests (sessions: first turns) carries one; which one is drawn with
    probability proportional to 1 / rank**zipf (0 = uniform, larger = a few prompts dominate).
    """

    count: int
    tokens: int
    share: float = 1.0
    zipf: float = 0.0

    def __post_init__(self) -> None:
        if self.count <= 0 or self.tokens <= 0:
            raise InputError(f"system prompts need count > 0 and tokens > 0, got {self.count}, {self.tokens}")
        if not 0 <= self.share <= 1:
            raise InputError(f"system prompt share must be in [0, 1], got {self.share}")
        if self.zipf < 0:
            raise InputError(f"system prompt zipf exponent must be >= 0, got {self.zipf}")

    def weights(self) -> np.ndarray:
        w = 1.0 / np.arange(1, self.count + 1, dtype=np.float64) ** self.zipf
        return w / w.sum()


@dataclass(frozen=True)
class Sessions:
    """Multi-turn conversations: each request joins one of ``concurrent`` open sessions at random.

    A session lasts a geometric number of turns with mean ``mean_turns`` (>= 1). Follow-up turns add
    a user message drawn from ``user_tokens`` to the previous prompt and answer; a session ends early
    when its next prompt would exceed ``max_input`` tokens.

    With ``think_s`` the arrival process starts *sessions* instead (``concurrent`` is not used): each
    later turn arrives an exponential think time of mean ``think_s`` after the previous one, so session
    mode's think times (the trace's gaps) have that mean.
    """

    mean_turns: float
    concurrent: int = 32
    user_tokens: LengthDistribution = field(default_factory=lambda: Uniform(64, 1024))
    max_input: int = 131072
    think_s: float | None = None

    def __post_init__(self) -> None:
        if not self.mean_turns >= 1:
            raise InputError(f"sessions need mean turns >= 1, got {self.mean_turns}")
        if self.concurrent <= 0 or self.max_input <= 0:
            raise InputError(
                f"sessions need concurrent > 0 and max > 0, got {self.concurrent}, {self.max_input}"
            )
        if self.think_s is not None and not (self.think_s >= 0 and np.isfinite(self.think_s)):
            raise InputError(f"sessions need think >= 0 seconds, got {self.think_s}")


@dataclass(frozen=True)
class SynthSpec:
    """Everything that determines a synthetic trace (with the seed)."""

    requests: int
    lengths: LengthDistribution
    arrivals: ArrivalProcess
    outputs: LengthDistribution = field(default_factory=lambda: Fixed(1024))
    system_prompts: SystemPrompts | None = None
    sessions: Sessions | None = None
    block_tokens: int = DEFAULT_BLOCK_TOKENS

    def __post_init__(self) -> None:
        if self.requests <= 0:
            raise InputError(f"a synthetic trace needs at least one request, got {self.requests}")
        if self.block_tokens <= 0:
            raise InputError(f"block size must be positive, got {self.block_tokens}")


def synthesize(spec: SynthSpec, seed: int) -> Trace:
    """A deterministic synthetic trace: the same ``spec`` and ``seed`` always give the same trace."""
    g_arrival, g_length, g_output, g_prompt, g_session = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)
    )
    n = spec.requests
    arrival = spec.arrivals.times(n, g_arrival)
    inputs = spec.lengths.sample(n, g_length)
    outputs = spec.outputs.sample(n, g_output)
    prompt_of = _choose_prompts(spec.system_prompts, n, g_prompt)  # -1: no system prompt
    source = f"synth(seed={seed}, {spec})"
    common = dict(arrival_s=arrival, output_tokens=outputs, block_tokens=spec.block_tokens, source=source)
    if spec.sessions is None:
        values, offsets = _independent_blocks(inputs, prompt_of, spec.system_prompts, spec.block_tokens)
        return Trace(input_tokens=inputs, hash_values=values, hash_offsets=offsets, **common)
    if spec.sessions.think_s is not None:
        return _timed_sessions(spec, arrival, inputs, outputs, prompt_of, g_session, source)
    inputs, values, offsets, session_id, turn = _session_blocks(
        spec.sessions, inputs, outputs, prompt_of, spec.system_prompts, spec.block_tokens, g_session
    )
    return Trace(
        input_tokens=inputs,
        hash_values=values,
        hash_offsets=offsets,
        session_id=session_id,
        turn=turn,
        **common,
    )


def _choose_prompts(prompts: SystemPrompts | None, n: int, rng: np.random.Generator) -> np.ndarray:
    if prompts is None:
        return np.full(n, -1, dtype=np.int64)
    which = rng.choice(prompts.count, size=n, p=prompts.weights())
    return np.where(rng.random(n) < prompts.share, which, -1)


def _prompt_blocks(prompts: SystemPrompts | None, block: int) -> int:
    """Full blocks in one system prompt; prompt j owns ids [j * this, (j + 1) * this)."""
    return 0 if prompts is None else prompts.tokens // block


def _independent_blocks(
    inputs: np.ndarray, prompt_of: np.ndarray, prompts: SystemPrompts | None, block: int
) -> tuple[np.ndarray, np.ndarray]:
    """CSR block ids when requests share at most a system prompt (vectorised)."""
    per_prompt = _prompt_blocks(prompts, block)
    counts = -(-inputs // block)
    offsets = offsets_from_lengths(counts)
    row = np.repeat(np.arange(len(inputs)), counts)
    pos = np.arange(offsets[-1]) - offsets[row]
    shared_n = np.where(prompt_of >= 0, np.minimum(per_prompt, inputs // block), 0)
    shared = pos < shared_n[row]
    values = np.empty(offsets[-1], dtype=np.int64)
    values[shared] = prompt_of[row[shared]] * per_prompt + pos[shared]
    first_fresh = (prompts.count if prompts else 0) * per_prompt
    values[~shared] = first_fresh + np.arange(int((~shared).sum()))
    return values, offsets


@dataclass(slots=True)
class _OpenSession:
    id: int
    turns_left: int
    turn: int = -1
    last_input: int = 0
    last_output: int = 0
    blocks: list[int] = field(default_factory=list)


def _session_blocks(
    sessions: Sessions,
    first_inputs: np.ndarray,
    outputs: np.ndarray,
    prompt_of: np.ndarray,
    prompts: SystemPrompts | None,
    block: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Inputs, CSR block ids, session ids and turns when requests belong to growing multi-turn sessions."""
    n = len(first_inputs)
    per_prompt = _prompt_blocks(prompts, block)
    next_id = (prompts.count if prompts else 0) * per_prompt
    slot_of = rng.integers(sessions.concurrent, size=n)
    turns = rng.geometric(1.0 / sessions.mean_turns, size=n)  # index = session number (<= n sessions)
    user = sessions.user_tokens.sample(n, rng)
    slots: list[_OpenSession | None] = [None] * sessions.concurrent
    inputs = np.empty(n, dtype=np.int64)
    session_id = np.empty(n, dtype=np.int64)
    turn = np.empty(n, dtype=np.int64)
    ids: list[list[int]] = []
    started = 0
    for i in range(n):
        s = slots[slot_of[i]]
        grown = s.last_input + s.last_output + int(user[i]) if s is not None and s.turns_left > 0 else None
        if grown is not None and grown <= sessions.max_input:
            length, prefix = grown, s.blocks[: s.last_input // block]
        else:  # start a new session in this slot
            s = slots[slot_of[i]] = _OpenSession(started, int(turns[started]))
            started += 1
            length, prefix = int(first_inputs[i]), []
            if prompt_of[i] >= 0:
                first = int(prompt_of[i]) * per_prompt
                prefix = list(range(first, first + min(per_prompt, length // block)))
        fresh = -(-length // block) - len(prefix)
        s.blocks = prefix + list(range(next_id, next_id + fresh))
        next_id += fresh
        s.turns_left -= 1
        s.turn += 1
        s.last_input, s.last_output = length, int(outputs[i])
        inputs[i], session_id[i], turn[i] = length, s.id, s.turn
        ids.append(s.blocks)
    values, offsets = offsets_from_lists(ids)
    return inputs, values, offsets, session_id, turn


def _timed_sessions(
    spec: SynthSpec,
    starts: np.ndarray,
    first_inputs: np.ndarray,
    outputs: np.ndarray,
    prompt_of: np.ndarray,
    rng: np.random.Generator,
    source: str,
) -> Trace:
    """Sessions that start at ``starts`` and whose turns follow each other after a think time; the
    first ``spec.requests`` turns in arrival order. Session k takes row k's first length and prompt."""
    sessions, block, n = spec.sessions, spec.block_tokens, spec.requests
    assert sessions is not None and sessions.think_s is not None
    per_prompt = _prompt_blocks(spec.system_prompts, block)
    next_id = (spec.system_prompts.count if spec.system_prompts else 0) * per_prompt
    turns = rng.geometric(1.0 / sessions.mean_turns, size=n)
    rows: list[tuple[float, int, int, int, int, list[int]]] = []  # time, session, turn, input, output, ids
    for k in range(n):
        # every later session starts after n turns have arrived: stop (checked now and then)
        if k % 1024 == 0 and len(rows) >= n and np.partition([r[0] for r in rows], n - 1)[n - 1] < starts[k]:
            break
        length, prefix = int(first_inputs[k]), []
        if prompt_of[k] >= 0:
            first = int(prompt_of[k]) * per_prompt
            prefix = list(range(first, first + min(per_prompt, length // block)))
        at, before, answer, ids = float(starts[k]), 0, 0, prefix
        think = rng.exponential(sessions.think_s, size=int(turns[k]))
        user = sessions.user_tokens.sample(int(turns[k]), rng)
        for t in range(int(turns[k])):
            if t:  # the previous prompt + its answer + a new user message, after a think time
                at += float(think[t])
                length = before + answer + int(user[t])
                if length > sessions.max_input:
                    break
                prefix = ids[: before // block]
            ids = prefix + list(range(next_id, next_id + -(-length // block) - len(prefix)))
            next_id += len(ids) - len(prefix)
            before, answer = length, int(outputs[len(rows) % n])
            rows.append((at, k, t, length, answer, ids))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    rows = rows[:n]
    values, offsets = offsets_from_lists([r[5] for r in rows])
    column = lambda i, dtype: np.array([r[i] for r in rows], dtype=dtype)  # noqa: E731
    return Trace(
        arrival_s=column(0, np.float64), input_tokens=column(3, np.int64), output_tokens=column(4, np.int64),
        hash_values=values, hash_offsets=offsets, session_id=column(1, np.int64), turn=column(2, np.int64),
        block_tokens=block, source=source,
    )  # fmt: skip
