"""The requests ``simulate`` runs: a trace (cut, re-timed, fitted to the model's context) or synthetic
requests drawn from the scenario's ``[workload]``."""

from __future__ import annotations

import math

import numpy as np

from harness.errors import ScenarioError
from harness.serving.config import SimSetup
from harness.traces.arrivals import Poisson
from harness.traces.context import ContextFit, ContextPolicy, fit_context
from harness.traces.frame import Trace


def synthetic_trace(setup: SimSetup, n: int, rate_rps: float, seed: int) -> Trace:
    """``n`` requests with the scenario's length distribution and output length, Poisson at ``rate_rps``.

    No prefix blocks: synthetic prompts share nothing, so caches never hit.
    """
    rng = np.random.default_rng(seed)
    wl = setup.deployment.workload
    inputs = wl.lengths.sample(n, rng).astype(np.int64)
    arrivals = Poisson(rate_rps).times(n, rng)
    return Trace(
        arrival_s=arrivals,
        input_tokens=inputs,
        output_tokens=np.full(n, wl.output_tokens, dtype=np.int64),
        hash_values=np.zeros(0, dtype=np.int64),
        hash_offsets=np.zeros(n + 1, dtype=np.int64),
        source=f"synthetic {wl.kind} Poisson({rate_rps:g}/s) seed={seed}",
    )


def retime(trace: Trace, rate_rps: float, seed: int) -> Trace:
    """The same requests in the same order, with Poisson arrivals at ``rate_rps``."""
    return trace.replace(arrival_s=Poisson(rate_rps).times(len(trace), np.random.default_rng(seed)))


# A Λ_max probe's arrivals span at least this many TTFT bounds (docs/simulate.md, "Probe size"): a queue
# that grows by a share ε of the offered rate adds about ε × span seconds of waiting, so over such a span
# any ε above 1 / (2 × 0.8 × 40) ≈ 1.6% adds more than half the bound and fails the trend test.
PROBE_SPAN_TTFT_BOUNDS = 40


def probe_span_s(ttft_bound_s: float | None) -> float | None:
    """The shortest arrival span of a Λ_max probe: ``PROBE_SPAN_TTFT_BOUNDS`` TTFT bounds (None: no bound)."""
    return None if ttft_bound_s is None else PROBE_SPAN_TTFT_BOUNDS * ttft_bound_s


def cycle_rows(trace: Trace, n: int) -> Trace:
    """The trace's first ``n`` rows, taken again from the top as often as needed when it is shorter.

    Each new pass is a new set of conversations: its prefix block ids are shifted past every id of the
    trace, so a pass shares prefixes within itself as the trace does, never with an earlier pass.
    """
    rows = np.arange(n) % len(trace)
    out = trace.take(rows)
    if n <= len(trace) or len(out.hash_values) == 0:
        return out
    lengths = np.diff(out.hash_offsets)
    passes = np.repeat(np.arange(n) // len(trace), lengths)
    stride = int(trace.hash_values.max()) - int(trace.hash_values.min()) + 1
    return out.replace(hash_values=out.hash_values + passes * stride)


def exact_rate(trace: Trace, rate_rps: float) -> Trace:
    """The arrivals scaled so that their span is exactly ``(n − 1) / rate_rps``: Poisson arrivals given
    their count and span (a Λ_max probe offers the rate it is judged at, not a Poisson draw ±1/√n)."""
    start = trace.arrival_s[0]
    scale = (len(trace) - 1) / rate_rps / (trace.arrival_s[-1] - start)
    return trace.replace(arrival_s=start + (trace.arrival_s - start) * scale)


def scenario_rate(setup: SimSetup) -> float | None:
    """``[workload] rate_rps`` when it is a positive number."""
    workload = setup.scenario.config.workload
    return workload.rate_rps if workload else None


def build_workload(
    setup: SimSetup,
    *,
    trace: Trace | None,
    rate: float | None,
    seed: int,
    requests: int | None = None,
    duration_s: float | None = None,
    context: ContextPolicy = "refuse",
    min_span_s: float | None = None,
) -> tuple[Trace, ContextFit]:
    """The requests of one run: ``trace`` cut to ``requests``/``duration_s`` and re-timed at ``rate``
    (None keeps its timestamps), or synthetic at ``rate`` when ``trace`` is None; and how they were
    fitted to the model's context (``harness.traces.context``).

    ``min_span_s`` (a Λ_max probe, with a ``rate``): at least ``min_span_s × rate`` requests, so that
    the arrivals span ``min_span_s`` seconds in expectation; a trace too short is cycled (``cycle_rows``).
    """
    by_span = math.ceil(min_span_s * rate) if min_span_s is not None and rate is not None else 0
    if trace is None:
        if rate is None:
            raise ScenarioError("a synthetic workload needs --rate, --rate-sweep or [workload] rate_rps")
        n = requests or setup.spec.requests
        if duration_s is not None:
            by_time = int(duration_s * rate)
            n = max(1, by_time) if requests is None else min(n, by_time + 1)
        out = synthetic_trace(setup, max(n, by_span), rate, seed)
    else:
        out = trace
        if duration_s is not None:
            out = out.take(out.arrival_s - out.arrival_s[0] <= duration_s)
        n = max(len(out) if requests is None else min(requests, len(out)), by_span)
        if n != len(out) and len(out):
            out = cycle_rows(out, n)  # the first n rows, the trace taken again when it is shorter
        if rate is not None:
            out = retime(out, rate, seed)
    if len(out) == 0:
        raise ScenarioError("the workload has no requests (check --requests/--duration)")
    if by_span and len(out) > 1:
        out = exact_rate(out, rate)
    # A synthetic distribution reaching the context limit (the paper's goes to 128K) is clipped (and
    # recorded); a trace follows the command's rule (refuse, --clip, --drop).
    policy = context if trace is not None else "clip"
    return fit_context(out, setup.deployment.model.context_length, policy, where=out.source or None)
