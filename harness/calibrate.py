"""``calibrate``: measure a live OpenAI-compatible engine and fit the cost model's calibration to it.

Two kinds of measurement, both driven by ``replay`` (so prompts, streaming, cache resets and records are
the load generator's own):

* **prefill**: isolated requests (one in flight), ``max_tokens`` 1, at several prompt lengths spanning
  the server's context, several repeats each, each sent at least ``PREFILL_IDLE_S`` after the one
  before it ended (``spaced_arrivals``): a request that an open-loop workload sends to a server with
  nothing in flight finds it idle, not just finished with another request, and on vLLM that costs a
  few ms more.
  The time to the request's end (its one token) is the prefill plus the fixed per-request cost (HTTP,
  tokenising, scheduling), which the fit separates as the intercept. Where the engine reports its own
  queue and prefill time (vLLM's ``request_queue_time_seconds`` and ``request_prefill_time_seconds``
  histograms on ``/metrics``; the emulated ``serve`` has them too), the mean of the client's times
  over those requests less the engine's is the time outside the engine, ``frontend_s``: the fit takes
  it out of the intercept, and the rest is ``prefill_overhead_s`` (``frontend_split``).
* **decode**: B requests at once, twice, with short and with long outputs (``ignore_eos``), for
  several B and two prompt lengths. The long run's extra span over the short one is that many extra
  steps at batch B: one step's time without per-token timestamps, which a busy server's frontend may
  deliver in bursts (vLLM on two shared cores does).

Every prompt has its own prefix block ids, so no request hits the prefix cache, and replay resets the
server's caches before each run. Each run keeps replay's validity verdict (``harness.validity``); the
calibration is valid only when every run is (``measurement_validity``). The fit itself is
``harness.model.fit`` (pure); this module is the edge.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import InputError
from harness.loadgen import Endpoint, LoadSpec, ReplayConfig, Timeouts, replay
from harness.loadgen.conditions import server_roots
from harness.loadgen.plainhttp import fetch_text
from harness.loadgen.telemetry import NotPrometheus, parse_samples
from harness.loadgen.tokenize import tokenize_endpoint
from harness.model.fit import CalibrationFit, Measurements, fit_calibration
from harness.model.presets import Hardware, ModelSpec
from harness.records import read_records
from harness.traces.frame import DEFAULT_BLOCK_TOKENS, Trace
from harness.validity import VALID

# Idle time before each measured prefill. vLLM (CPU build, 2026-12-02) answered a request sent within
# 20 ms of the previous one's end 1.5-4 ms sooner than one sent 50 ms or more after it (a 280-token
# prompt: 5.3 against 9.3 ms; its engine prefill 2.4 against 4.2, the rest in its API server and HTTP),
# and a closed loop measures only the first kind, while requests under light open-loop load are of the
# second: their TTFT exceeded simulate's by that much at every prompt length.
PREFILL_IDLE_S = 0.25
# How much longer than its probe a prefill may take before the next one is sent while it still runs.
PREFILL_SLACK = 2.0
# An engine's own time per request, as vLLM's histograms give it: queued, then prefilling (to the
# first token). The client's time less these is the frontend's (HTTP, tokenising, streaming).
ENGINE_QUEUE, ENGINE_PREFILL = "vllm:request_queue_time_seconds", "vllm:request_prefill_time_seconds"


@dataclass(frozen=True, kw_only=True)
class CalibrationPlan:
    """Which points to measure: prompt lengths × ``prefill_repeats`` for prefill; batch sizes × prompt
    lengths × ``decode_repeats`` for decode, each a pair of runs with the two output lengths of
    ``decode_tokens``. Every point is the median of its repeats: on shared cores a delay is one-sided,
    and one stalled request must not tilt the fit."""

    prefill_tokens: tuple[int, ...]
    prefill_repeats: int
    decode_repeats: int
    decode_batches: tuple[int, ...]
    decode_prompts: tuple[int, ...]
    decode_tokens: tuple[int, int]

    @classmethod
    def spanning(cls, max_prompt_tokens: int, *, quick: bool = False) -> CalibrationPlan:
        """Lengths spaced geometrically from 64 tokens to ``max_prompt_tokens``; ``quick`` measures fewer
        (6 lengths; batches 1/8/32; outputs of 16 and 400 tokens) than the full plan (10 lengths;
        batches 1/2/4/8/16/32; 16 and 784). Prefills are repeated 5 times, decode pairs 3 times."""
        if max_prompt_tokens < 256:
            raise InputError(f"--max-prompt-tokens must be at least 256, got {max_prompt_tokens}")
        count = 6 if quick else 10
        lengths = np.unique(np.geomspace(64, max_prompt_tokens, count).round().astype(int))
        return cls(
            prefill_tokens=tuple(int(n) for n in lengths),
            prefill_repeats=5,
            decode_repeats=3,
            decode_batches=(1, 8, 32) if quick else (1, 2, 4, 8, 16, 32),
            decode_prompts=(128, max(256, max_prompt_tokens // 8)),
            decode_tokens=(16, 400 if quick else 784),
        )


@dataclass(frozen=True, kw_only=True)
class Target:
    """The engine to calibrate and how to read its clock (``time_scale``: model seconds per wall second,
    the ``--speedup`` of an emulated ``serve``)."""

    url: str
    model: str
    tokenize_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    time_scale: float = 1.0


def probe_tokenize(url: str, model: str, api_key: str | None = None) -> int | None:
    """The server's ``max_model_len`` if ``url`` answers ``POST /tokenize`` (vLLM, SGLang) for ``model``,
    else None: then prompts are fitted by words and the fit uses the token counts the server reports."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    body = json.dumps({"model": model, "prompt": "a"}).encode()
    status, text = fetch_text(tokenize_endpoint(url), method="POST", body=body, headers=headers, timeout_s=10)
    if status != 200:
        return None
    try:
        answer = json.loads(text)
    except ValueError:
        return None
    limit = answer.get("max_model_len") if isinstance(answer, dict) else None
    return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else 0


def engine_seconds(url: str, api_key: str | None = None) -> tuple[float, int] | None:
    """(seconds, requests): the queue and prefill time the engine behind ``url`` reports on
    ``/metrics`` over its life, summed over label sets, and how many prefills they count; None when it
    does not answer or has no such histograms."""
    (root,) = server_roots([url])
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    status, text = fetch_text(root + "/metrics", headers=headers, timeout_s=10)
    if status != 200:
        return None
    try:
        samples = parse_samples(text, (ENGINE_QUEUE, ENGINE_PREFILL))
    except NotPrometheus:
        return None
    found = {name for name, _, _ in samples}
    if not {ENGINE_QUEUE + "_sum", ENGINE_PREFILL + "_sum", ENGINE_PREFILL + "_count"} <= found:
        return None
    seconds = sum(v for name, _, v in samples if name in (ENGINE_QUEUE + "_sum", ENGINE_PREFILL + "_sum"))
    return seconds, round(sum(v for name, _, v in samples if name == ENGINE_PREFILL + "_count"))


def _engine_seconds_after(
    url: str, api_key: str | None, before: tuple[float, int] | None, requests: int, *, wait_s: float = 2.0
) -> tuple[float, int] | None:
    """``engine_seconds`` once it counts the run's ``requests`` (vLLM records a request's times just
    after its last token leaves, so a scrape at once can miss the last one), for up to ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        after = engine_seconds(url, api_key)
        counted = (
            after is None or after[1] == requests or (before is not None and after[1] - before[1] == requests)
        )
        if counted or time.monotonic() >= deadline:
            return after
        time.sleep(0.1)


def frontend_split(
    client_s: np.ndarray,
    before: tuple[float, int] | None,
    after: tuple[float, int] | None,
    *,
    time_scale: float = 1.0,
) -> dict[str, Any]:
    """The mean time outside the engine of one run's requests (``client_s``: each one's wall seconds
    to its token), from the engine's totals read before and after it (``engine_seconds``), in model
    seconds (``time_scale``). The engine must have counted exactly the run's requests, in the
    difference or, for a server whose cache reset zeroes its counters (the emulated ``serve``), in
    the totals after; otherwise ``frontend_s`` is 0 and ``why`` says so."""
    n = len(client_s)
    if after is None:
        return {"frontend_s": 0.0, "why": "the engine reports no queue and prefill time on /metrics"}
    if before is not None and after[1] - before[1] == n:
        engine_s = after[0] - before[0]
    elif after[1] == n:
        engine_s = after[0]
    else:
        counted = after[1] - before[1] if before is not None else after[1]
        return {"frontend_s": 0.0, "why": f"the engine counted {counted} prefills over a run of {n}"}
    client_mean, engine_mean = float(np.mean(client_s)), engine_s / n
    return {
        "frontend_s": max(0.0, client_mean - engine_mean) * time_scale,
        "client_mean_s": client_mean,
        "engine_mean_s": engine_mean,
        "requests": n,
        "source": f"{ENGINE_QUEUE} + {ENGINE_PREFILL}",
    }


def spaced_arrivals(
    lengths: list[int],
    probe_s: Mapping[int, float],
    *,
    idle_s: float = PREFILL_IDLE_S,
    slack: float = PREFILL_SLACK,
) -> np.ndarray:
    """Arrival times (wall seconds) for isolated requests of ``lengths``, one after another: each is
    sent ``slack`` times its predecessor's probed time (``probe_s``: wall seconds by length) plus
    ``idle_s`` after the predecessor was sent, so it finds the server idle for about ``idle_s``."""
    gaps = [slack * probe_s[n] + idle_s for n in lengths[:-1]]
    return np.concatenate(([0.0], np.cumsum(gaps)))


def _trace(
    lengths: list[int], output_tokens: int, first_id: int, arrival_s: np.ndarray | None = None
) -> Trace:
    """Rows of the given prompt lengths, each with prefix block ids no other row (or run) shares,
    arriving at ``arrival_s`` (default: all at once)."""
    counts = [math.ceil(n / DEFAULT_BLOCK_TOKENS) for n in lengths]
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return Trace(
        arrival_s=np.zeros(len(lengths)) if arrival_s is None else np.asarray(arrival_s, dtype=float),
        input_tokens=np.asarray(lengths, dtype=np.int64),
        output_tokens=np.full(len(lengths), output_tokens, dtype=np.int64),
        hash_values=first_id + np.arange(offsets[-1], dtype=np.int64),
        hash_offsets=offsets,
        source="calibration",
    )


class _Runner:
    """Runs replays of calibration traces against the target, each into its own directory."""

    def __init__(self, target: Target, out: Path) -> None:
        self.target, self.out = target, out
        self.next_id = secrets.randbelow(2**40) * 1024  # block ids no earlier run of this server used
        self.runs = 0
        self.verdicts: dict[str, str] = {}  # run directory name -> replay's verdict of that run

    def run(
        self, lengths: list[int], output_tokens: int, concurrency: int, arrival_s: np.ndarray | None = None
    ) -> pd.DataFrame:
        """A closed loop of ``concurrency`` requests, or, given ``arrival_s``, the rows at those times."""
        trace = _trace(lengths, output_tokens, self.next_id, arrival_s)
        self.next_id += len(trace.hash_values)
        load = (
            LoadSpec(
                arrival="constant", rate_rps=math.inf, concurrency=concurrency, max_requests=len(lengths)
            )
            if arrival_s is None
            else LoadSpec(arrival="trace")
        )
        config = ReplayConfig(
            endpoints=(Endpoint(name="engine", model=self.target.model, url=self.target.url),),
            load=load,
            timeouts=Timeouts(first_token_s=600.0, total_s=1800.0),
            api_key_env=self.target.api_key_env,
            tokenize_url=self.target.tokenize_url,
            max_send_lag_s=10.0,  # a closed loop of few requests: send lag is not what is measured
            progress=False,
            meta_extra={"calibration": True},
        )
        self.runs += 1
        result = replay(trace, config, self.out / f"run{self.runs:02d}", quiet=True)
        self.verdicts[result.run_dir.name] = result.verdict
        records = read_records(result.run_dir)
        failed = records[records["status"] != "ok"]
        if len(failed):
            first = failed.iloc[0]
            raise InputError(
                f"calibration request failed against {self.target.url}: {first['error_class']}: "
                f"{first['error_message']}"
            )
        return records


def _prompt_tokens(rec: pd.Series) -> int:
    server = rec["prompt_tokens_server"]
    return int(server) if server is not None and not pd.isna(server) else int(rec["prompt_tokens_trace"])


def _span_s(records: pd.DataFrame) -> float:
    """From the first scheduled send to the last request's end (run clock)."""
    return float(records["end_s"].max() - records["scheduled_s"].min())


def decode_point(short: pd.DataFrame, long: pd.DataFrame, extra_tokens: int) -> tuple[int, int, float]:
    """(batch, context tokens, step seconds) from two runs of the same B prompts that differ only in
    output length: the longer run's extra span is ``extra_tokens`` steps at batch B (the prefills and
    the ramps at either end are the same in both), at the context the B sequences hold half-way
    through those steps. Needs no per-token timing, which a server may deliver in bursts."""
    batch = len(long)
    outputs = int(short["output_tokens_requested"].iloc[0]) + extra_tokens / 2
    context = int(sum(_prompt_tokens(r) for _, r in long.iterrows()) + batch * outputs)
    return batch, context, (_span_s(long) - _span_s(short)) / extra_tokens


def measure(
    target: Target, plan: CalibrationPlan, out: Path, *, echo=print
) -> tuple[Measurements, dict[str, str], dict[str, Any]]:
    """Run the plan against the target: the measurements in model seconds, each run's verdict (run
    directory name -> replay's ``valid`` / ``invalid: …``) and how the prefills' time outside the
    engine was found (``frontend_split``)."""
    runner = _Runner(target, out)
    scale = target.time_scale
    lengths = [n for _ in range(plan.prefill_repeats) for n in plan.prefill_tokens]  # interleaved
    echo(
        f"prefill: {len(lengths)} isolated requests, {len(plan.prefill_tokens)} lengths up to {max(lengths)} tokens"
        f", each at least {PREFILL_IDLE_S:g} s after the last ended"
    )
    # A closed-loop probe of each length once sizes the spacing; only the spaced requests are fitted.
    probe = runner.run(list(plan.prefill_tokens), 1, 1).sort_values("trace_row")
    probe_s = dict(
        zip(plan.prefill_tokens, (probe["end_s"] - probe["scheduled_s"]).astype(float), strict=True)
    )
    api_key = os.environ.get(target.api_key_env) or None
    before = engine_seconds(target.url, api_key)
    rec = runner.run(lengths, 1, 1, spaced_arrivals(lengths, probe_s))
    tokens = np.array([_prompt_tokens(r) for _, r in rec.iterrows()])
    # max_tokens 1: the request's end is its one token (the first token's text may be empty or held back)
    wall = (rec["end_s"] - rec["scheduled_s"]).to_numpy(dtype=float)
    split = frontend_split(
        wall, before, _engine_seconds_after(target.url, api_key, before, len(wall)), time_scale=scale
    )
    seconds = wall * scale
    prefill_tokens = np.unique(tokens)
    prefill_s = np.array([np.median(seconds[tokens == n]) for n in prefill_tokens])
    points = []
    short, long = plan.decode_tokens
    for p in plan.decode_prompts:
        for b in plan.decode_batches:
            echo(
                f"decode: {b} at once, {p}-token prompts, {short} and {long} tokens each, {plan.decode_repeats} times"
            )
            runs = [
                decode_point(runner.run([p] * b, short, b), runner.run([p] * b, long, b), long - short)
                for _ in range(plan.decode_repeats)
            ]
            points.append((runs[0][0], runs[0][1], float(np.median([r[2] for r in runs]))))
    batch, context, step = (np.array(v) for v in zip(*points, strict=True))
    measured = Measurements(
        prefill_tokens=prefill_tokens,
        prefill_s=prefill_s,
        decode_batch=batch.astype(int),
        decode_context=context.astype(int),
        decode_step_s=step.astype(float) * scale,
        frontend_s=split["frontend_s"],
    )
    return measured, runner.verdicts, split


def measurement_validity(runs: Mapping[str, str]) -> dict[str, Any]:
    """One verdict over every measurement run (``runs``: run name -> replay's verdict text): valid only
    when every run is; else every reason of every run that is not, each prefixed by its run's name (a
    run without a verdict counts as invalid: nothing says its times can be trusted). Every reason is one
    line (whitespace collapsed): it is printed, and written as a TOML comment."""
    reasons = [
        re.sub(r"\s+", " ", f"{name}: {reason}").strip()
        for name, text in runs.items()
        if text != VALID
        for reason in (
            text.removeprefix("invalid: ").split("; ")
            if text.startswith("invalid: ")
            else [f"no validity verdict ({text})"]
        )
    ]
    if not runs:
        reasons = ["no measurement runs"]
    text = "invalid: " + "; ".join(_grouped(reasons)) if reasons else VALID
    return {"verdict": text, "valid": not reasons, "reasons": reasons, "runs": dict(runs)}


def _grouped(reasons: list[str]) -> list[str]:
    """The reasons for one line: those that differ only in their figures (the same check failing in
    many runs of a busy machine) as the first of them and how many more runs said the same; the full
    list stays in ``reasons``."""
    groups: dict[str, list[str]] = {}
    for reason in reasons:
        groups.setdefault(re.sub(r"^[^:]*: |[0-9][0-9.]*", "#", reason), []).append(reason)
    return [
        first + (f" (and {len(rest)} more run{'s' if len(rest) > 1 else ''} like it)" if rest else "")
        for first, *rest in groups.values()
    ]


def calibrate(
    target: Target,
    model: ModelSpec,
    nominal: Hardware,
    gpus: int,
    plan: CalibrationPlan,
    out: Path,
    *,
    echo=print,
) -> tuple[CalibrationFit, dict[str, Any], dict[str, Any]]:
    """Measure the target and fit ``nominal``'s calibration for ``gpus`` × it serving ``model``; with
    the fit, the measurement's validity (``measurement_validity``) and the frontend's split
    (``frontend_split``)."""
    m, verdicts, split = measure(target, plan, out, echo=echo)
    try:
        return fit_calibration(model, nominal, gpus, m), measurement_validity(verdicts), split
    except ValueError as exc:
        raise InputError(f"calibration of {target.url}: {exc}") from None


def preset_toml(fit: CalibrationFit, *, header: str, validity: Mapping[str, Any]) -> str:
    """The fitted hardware preset in the format of ``harness/presets/hardware`` (``load_hardware`` reads it).
    Its ``[calibration]`` opens with the measurement's verdict as comments (the loader knows no such
    field), one line per reason, so whoever reads the figures reads whether to trust them first."""
    hw, cal = fit.hardware, fit.hardware.calibration
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += [
        f"name = {json.dumps(hw.name)}",
        f"description = {json.dumps(hw.description)}",
        *(
            f"{k} = {getattr(hw, k)!r}"
            for k in ("bf16_tflops", "fp8_tflops", "hbm_tbps", "hbm_gb", "price_per_gpu_hour")
        ),
        "",
        "[calibration]",
        f"# measurement: {'valid' if validity['valid'] else 'INVALID, the figures below are not a clean result:'}",
        *(f"#   {reason}" for reason in validity["reasons"]),
    ]
    for name in ("prefill_overhead_s", "gemm_efficiency", "attention_efficiency", "decode_overhead_s",
                 "decode_efficiency", "hbm_efficiency", "memory_utilization", "frontend_s"):  # fmt: skip
        note = "  # held at its bound" if name in fit.at_bound else ""
        lines.append(f"{name} = {float(getattr(cal, name)):.6g}{note}")
    return "\n".join(lines) + "\n"


def fit_report(
    fit: CalibrationFit,
    *,
    model: str,
    gpus: int,
    target: Target,
    plan: CalibrationPlan,
    validity: Mapping[str, Any],
    frontend: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What goes in the JSON beside the preset: the fitted parameters, the plan, every residual, the
    measurement's validity (``measurement_validity``) and how the frontend's time was found
    (``frontend_split``; none given: not measured)."""
    cal = fit.hardware.calibration
    return {
        "endpoint": target.url,
        "served_model": target.model,
        "model_preset": model,
        "gpus_per_instance": gpus,
        "time_scale": target.time_scale,
        "plan": {k: getattr(plan, k) for k in plan.__dataclass_fields__},
        "calibration": {k: getattr(cal, k) for k in cal.__dataclass_fields__},
        "at_bound": list(fit.at_bound),
        "residuals": fit.residuals(),
        "validity": dict(validity),
        "frontend": dict(frontend) if frontend is not None else {"frontend_s": 0.0, "why": "not measured"},
    }
