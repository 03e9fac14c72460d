"""``calibrate``: measure a live OpenAI-compatible engine and fit the cost model's calibration to it.

Two kinds of measurement, both driven by ``replay`` (so prompts, streaming, cache resets and records are
the load generator's own):

* **prefill**: isolated requests (closed loop, one in flight), ``max_tokens`` 1, at several prompt
  lengths spanning the server's context, several repeats each. Time to the first token is the prefill
  plus the fixed per-request cost (HTTP, tokenising, scheduling), which the fit separates as the
  intercept ``prefill_overhead_s``.
* **decode**: B requests at once with long outputs (``ignore_eos``), for several B and two prompt
  lengths. Once every one of them has its first token and before any ends, each step holds exactly B
  sequences: the median gap between tokens in that window is one step at batch B, at the context the
  B sequences hold at its midpoint.

Every prompt has its own prefix block ids, so no request hits the prefix cache, and replay resets the
server's caches before each run. The fit itself is ``harness.model.fit`` (pure); this module is the edge.
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import InputError
from harness.loadgen import Endpoint, LoadSpec, ReplayConfig, Timeouts, replay
from harness.model.fit import CalibrationFit, Measurements, fit_calibration
from harness.model.presets import Hardware, ModelSpec
from harness.records import read_records
from harness.traces.frame import DEFAULT_BLOCK_TOKENS, Trace

MIN_WINDOW_STEPS = 4  # fewer steady steps than this and a decode window says nothing


@dataclass(frozen=True, kw_only=True)
class CalibrationPlan:
    """Which points to measure: prompt lengths × repeats for prefill; batch sizes × prompt lengths,
    each with ``decode_output_tokens`` tokens, for decode."""

    prefill_tokens: tuple[int, ...]
    repeats: int
    decode_batches: tuple[int, ...]
    decode_prompts: tuple[int, ...]
    decode_output_tokens: int

    @classmethod
    def spanning(cls, max_prompt_tokens: int, *, quick: bool = False) -> CalibrationPlan:
        """Lengths spaced geometrically from 64 tokens to ``max_prompt_tokens``; ``quick`` measures fewer
        (5 lengths × 2, batches 1/4/8, 48 output tokens) than the full plan (8 × 3, 1/2/4/8/16, 128)."""
        if max_prompt_tokens < 256:
            raise InputError(f"--max-prompt-tokens must be at least 256, got {max_prompt_tokens}")
        count = 5 if quick else 8
        lengths = np.unique(np.geomspace(64, max_prompt_tokens, count).round().astype(int))
        return cls(
            prefill_tokens=tuple(int(n) for n in lengths),
            repeats=2 if quick else 3,
            decode_batches=(1, 4, 8) if quick else (1, 2, 4, 8, 16),
            decode_prompts=(128, max(256, max_prompt_tokens // 8)),
            decode_output_tokens=48 if quick else 128,
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


def _trace(lengths: list[int], output_tokens: int, first_id: int) -> Trace:
    """Rows of the given prompt lengths, each with prefix block ids no other row (or run) shares."""
    counts = [math.ceil(n / DEFAULT_BLOCK_TOKENS) for n in lengths]
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return Trace(
        arrival_s=np.zeros(len(lengths)),
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

    def run(self, lengths: list[int], output_tokens: int, concurrency: int) -> pd.DataFrame:
        trace = _trace(lengths, output_tokens, self.next_id)
        self.next_id += len(trace.hash_values)
        config = ReplayConfig(
            endpoints=(Endpoint(name="engine", model=self.target.model, url=self.target.url),),
            load=LoadSpec(
                arrival="constant", rate_rps=math.inf, concurrency=concurrency, max_requests=len(lengths)
            ),
            timeouts=Timeouts(first_token_s=600.0, total_s=1800.0),
            api_key_env=self.target.api_key_env,
            tokenize_url=self.target.tokenize_url,
            max_send_lag_s=10.0,  # a closed loop of few requests: send lag is not what is measured
            progress=False,
            meta_extra={"calibration": True},
        )
        self.runs += 1
        result = replay(trace, config, self.out / f"run{self.runs:02d}", quiet=True)
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


def decode_window(records: pd.DataFrame) -> tuple[int, int, float] | None:
    """(batch, context tokens, step seconds) of the steady window of one decode run, in its own clock:
    from the last first token to the first last token, every sequence decodes. None if that window
    holds fewer than ``MIN_WINDOW_STEPS`` steps."""
    times = [
        float(r["first_token_s"]) + np.concatenate(([0.0], np.cumsum(np.asarray(r["itl_s"], dtype=float))))
        for _, r in records.iterrows()
    ]
    start, end = max(t[0] for t in times), min(t[-1] for t in times)
    gaps = np.concatenate([np.diff(t[(t >= start) & (t <= end)]) for t in times])
    if len(gaps) < MIN_WINDOW_STEPS * len(times):
        return None
    mid = (start + end) / 2.0
    context = sum(
        _prompt_tokens(r) + int(np.searchsorted(t, mid, side="right"))
        for (_, r), t in zip(records.iterrows(), times, strict=True)
    )
    return len(times), context, float(np.median(gaps))


def measure(
    target: Target, plan: CalibrationPlan, out: Path, *, echo=print
) -> tuple[Measurements, dict[str, Any]]:
    """Run the plan against the target; the measurements in model seconds and what was skipped."""
    runner = _Runner(target, out)
    scale = target.time_scale
    lengths = [n for n in plan.prefill_tokens for _ in range(plan.repeats)]
    echo(
        f"prefill: {len(lengths)} isolated requests, {len(plan.prefill_tokens)} lengths up to {max(lengths)} tokens"
    )
    rec = runner.run(lengths, 1, 1)
    prefill_tokens = np.array([_prompt_tokens(r) for _, r in rec.iterrows()])
    prefill_s = (rec["first_token_s"] - rec["scheduled_s"]).to_numpy(dtype=float) * scale
    batches, contexts, steps, skipped = [], [], [], []
    for p in plan.decode_prompts:
        for b in plan.decode_batches:
            echo(f"decode: {b} at once, {p}-token prompts, {plan.decode_output_tokens} tokens each")
            window = decode_window(runner.run([p] * b, plan.decode_output_tokens, b))
            if window is None:
                skipped.append({"batch": b, "prompt_tokens": p, "why": "no steady window"})
                continue
            batches.append(window[0])
            contexts.append(window[1])
            steps.append(window[2] * scale)
    m = Measurements(
        prefill_tokens=prefill_tokens,
        prefill_s=prefill_s,
        decode_batch=np.array(batches, dtype=int),
        decode_context=np.array(contexts, dtype=int),
        decode_step_s=np.array(steps, dtype=float),
    )
    return m, {"skipped": skipped, "runs": runner.runs}


def calibrate(
    target: Target,
    model: ModelSpec,
    nominal: Hardware,
    gpus: int,
    plan: CalibrationPlan,
    out: Path,
    *,
    echo=print,
) -> CalibrationFit:
    """Measure the target and fit ``nominal``'s calibration for ``gpus`` × it serving ``model``."""
    m, _ = measure(target, plan, out / "runs", echo=echo)
    try:
        return fit_calibration(model, nominal, gpus, m)
    except ValueError as exc:
        raise InputError(f"calibration of {target.url}: {exc}") from None


def preset_toml(fit: CalibrationFit, *, header: str) -> str:
    """The fitted hardware preset in the format of ``harness/presets/hardware`` (``load_hardware`` reads it)."""
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
    ]
    for name in ("prefill_overhead_s", "gemm_efficiency", "attention_efficiency", "decode_overhead_s",
                 "decode_efficiency", "hbm_efficiency", "memory_utilization"):  # fmt: skip
        note = "  # held at its bound" if name in fit.at_bound else ""
        lines.append(f"{name} = {float(getattr(cal, name)):.6g}{note}")
    return "\n".join(lines) + "\n"


def fit_report(
    fit: CalibrationFit, *, model: str, gpus: int, target: Target, plan: CalibrationPlan
) -> dict[str, Any]:
    """What goes in the JSON beside the preset: the fitted parameters, the plan and every residual."""
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
    }
