"""Pure ``Trace -> Trace`` transforms: time window, speed-up, target rate, length clipping, sampling.

Mean rate throughout is ``(n - 1) / span``: one over the mean inter-arrival gap, so a constant-rate
trace at R req/s reports exactly R.
"""

from __future__ import annotations

import math

import numpy as np

from harness.errors import InputError
from harness.traces.frame import Trace, offsets_from_lengths


def mean_rate(trace: Trace) -> float:
    """Requests per second, ``(n - 1) / span``; NaN for fewer than two requests or a zero span."""
    span = trace.duration_s
    return (len(trace) - 1) / span if len(trace) >= 2 and span > 0 else math.nan


def window(trace: Trace, start_s: float, duration_s: float) -> Trace:
    """Requests arriving in ``[start_s, start_s + duration_s)``, re-timed so ``start_s`` becomes 0."""
    if start_s < 0 or not duration_s > 0:
        raise InputError(
            f"window needs start >= 0 and duration > 0, got start={start_s} duration={duration_s}"
        )
    keep = (trace.arrival_s >= start_s) & (trace.arrival_s < start_s + duration_s)
    out = trace.take(keep)
    return out.replace(arrival_s=out.arrival_s - start_s)


def speedup(trace: Trace, factor: float) -> Trace:
    """Compress time by ``factor`` (2 = twice as fast: every gap halves)."""
    if not (factor > 0 and math.isfinite(factor)):
        raise InputError(f"speed-up factor must be a positive number, got {factor}")
    return trace.replace(arrival_s=trace.arrival_s / factor)


def rescale_rate(trace: Trace, rate_rps: float) -> Trace:
    """Scale time so the mean rate becomes ``rate_rps``; the burst pattern keeps its shape."""
    if not (rate_rps > 0 and math.isfinite(rate_rps)):
        raise InputError(f"target rate must be a positive number of requests/s, got {rate_rps}")
    current = mean_rate(trace)
    if math.isnan(current):
        raise InputError("cannot rescale the rate of a trace with fewer than two distinct arrival times")
    return speedup(trace, rate_rps / current)


def clip_lengths(trace: Trace, max_input: int | None, max_output: int | None = None) -> tuple[Trace, int]:
    """Cap input and/or output lengths (None: no cap); returns the new trace and how many requests changed.

    A clipped prompt keeps its beginning, so its block ids are cut to ``ceil(input / block_tokens)``
    of the original leading ids: prefix sharing among clipped requests is preserved.
    To fit a model with context C and outputs up to O, clip the input to C - O.
    """
    if any(limit is not None and limit <= 0 for limit in (max_input, max_output)):
        raise InputError(f"clip limits must be positive, got input={max_input} output={max_output}")
    inputs = trace.input_tokens if max_input is None else np.minimum(trace.input_tokens, max_input)
    outputs = trace.output_tokens if max_output is None else np.minimum(trace.output_tokens, max_output)
    changed = (inputs != trace.input_tokens) | (outputs != trace.output_tokens)
    lengths = np.diff(trace.hash_offsets)
    keep_n = np.minimum(lengths, -(-inputs // trace.block_tokens))
    position = np.arange(len(trace.hash_values)) - np.repeat(trace.hash_offsets[:-1], lengths)
    values = trace.hash_values[position < np.repeat(keep_n, lengths)]
    offsets = offsets_from_lengths(keep_n)
    out = trace.replace(input_tokens=inputs, output_tokens=outputs, hash_values=values, hash_offsets=offsets)
    return out, int(changed.sum())


def sample(trace: Trace, *, n: int | None = None, fraction: float | None = None, seed: int = 0) -> Trace:
    """A seeded random subset (``n`` requests or a ``fraction`` of them), kept in arrival order."""
    if (n is None) == (fraction is None):
        raise InputError("sample needs exactly one of a count or a fraction")
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise InputError(f"sample fraction must be in (0, 1], got {fraction}")
        n = round(fraction * len(trace))
    assert n is not None
    if not 0 < n <= len(trace):
        raise InputError(f"sample size must be between 1 and {len(trace)} (the trace size), got {n}")
    idx = np.random.default_rng(seed).choice(len(trace), size=n, replace=False)
    return trace.take(np.sort(idx))
