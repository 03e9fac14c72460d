"""``prfaas-bench calibrate``: fit the cost model to a live engine (see docs/calibration.md)."""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import click

from harness.calibrate import CalibrationPlan, Target, calibrate, fit_report, preset_toml, probe_tokenize
from harness.cli._options import FiniteFloatRange, api_key_env_option, time_scale_option
from harness.errors import InputError
from harness.loadgen import Endpoint, Timeouts
from harness.loadgen.client import check_endpoint
from harness.model.presets import Calibration, Hardware, load_hardware, load_model


def _nominal(like, peak_tflops, hbm_tbps, hbm_gb, name) -> Hardware:
    """The hardware whose peak figures the fit measures efficiencies against."""
    if like is not None:
        try:
            hw = load_hardware(like)
        except InputError as exc:
            raise InputError(f"--like: {exc}") from None
    elif peak_tflops is None or hbm_tbps is None or hbm_gb is None:
        raise InputError(
            "give the hardware's peak figures: --like PRESET, or --peak-tflops, --hbm-tbps and --hbm-gb"
        )
    else:
        ones = dict.fromkeys(
            ("gemm_efficiency", "attention_efficiency", "decode_efficiency", "hbm_efficiency"), 1.0
        )
        cal = Calibration(prefill_overhead_s=0.0, decode_overhead_s=0.0, memory_utilization=0.9, **ones)
        hw = Hardware(name=name, bf16_tflops=peak_tflops, fp8_tflops=2 * peak_tflops, hbm_tbps=hbm_tbps,
                      hbm_gb=hbm_gb, price_per_gpu_hour=0.0, calibration=cal)  # fmt: skip
    overrides = {"bf16_tflops": peak_tflops, "hbm_tbps": hbm_tbps, "hbm_gb": hbm_gb}
    return replace(hw, name=name, **{k: v for k, v in overrides.items() if v is not None})


def _check_out(out: Path) -> None:
    """Refuse, before minutes of measuring, an ``--out`` the preset could not be written to: its
    nearest existing ancestor must be a directory a file can be created in (missing directories below
    it are made at the end). Tried, not judged from permission bits, which root ignores."""
    ancestor = out.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"--out {out}: {ancestor} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as exc:
        raise InputError(f"--out {out}: cannot write in {ancestor} ({exc.strerror or exc})") from None


def _echo(line: str) -> None:
    click.echo(line, err=True)


@click.command("calibrate")
@click.option("--endpoint", "url", required=True, help="The engine's base URL (an OpenAI-compatible server).")
@click.option("--model", "served", required=True, help="The served model name requests carry.")
@click.option("--model-preset", required=True, help="The model's architecture: a preset name or a TOML path.")
@click.option(
    "--like", help="Hardware preset whose peak figures, price and memory_utilization to start from."
)
@click.option("--peak-tflops", type=FiniteFloatRange(min=0, min_open=True), help="Dense BF16 peak per GPU.")
@click.option(
    "--hbm-tbps", type=FiniteFloatRange(min=0, min_open=True), help="Memory bandwidth per GPU (TB/s)."
)
@click.option("--hbm-gb", type=FiniteFloatRange(min=0, min_open=True), help="Memory per GPU (GB).")
@click.option("--gpus", type=click.IntRange(1, 1024), default=1, show_default=True, help="GPUs per instance.")
@click.option("--name", default="calibrated", show_default=True, help="The preset's name.")
@click.option(
    "--max-prompt-tokens",
    type=click.IntRange(256, 10_000_000),
    help="Longest prompt measured. Default: half the server's max_model_len (from /tokenize), at most "
    "32768; 8192 when the server does not say.",
)
@click.option(
    "--quick",
    is_flag=True,
    help="Fewer points: 6 prompt lengths, batches 1/8/32, outputs of 16 and 400 tokens.",
)
@click.option(
    "--tokenize-url",
    help="Fit prompts to exact token counts with this server's POST /tokenize (default: the endpoint, "
    "when it answers /tokenize).",
)
@time_scale_option
@api_key_env_option
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="The preset TOML to write; the fit and its residuals go beside it (.fit.json), the runs in NAME.runs/.",
)
def command(url, served, model_preset, like, peak_tflops, hbm_tbps, hbm_gb, gpus, name, max_prompt_tokens, quick,
            tokenize_url, time_scale, api_key_env, out_path) -> None:  # fmt: skip
    """Measure a live engine's prefill and decode-step times and fit a hardware preset to them.

    Prefill: isolated requests with max_tokens 1 at prompt lengths from 64 tokens to
    --max-prompt-tokens, 5 repeats each. Decode: 1 to 32 requests at once, run twice with short and long
    outputs (ignore_eos); the extra span is that many steps at that batch and context. Every prompt is
    unique (no prefix-cache hits) and the server's caches are reset before each run. The fit uses the
    cost model's own terms for the --model-preset on --gpus x the nominal hardware (--like, or the peak
    figures), and writes a preset a scenario's [hardware] local can name by path, its residuals beside
    it. Where the engine reports its own queue and prefill time on /metrics (vLLM), the rest of each
    prefill request's time is the frontend's (frontend_s), which delays a request without occupying
    the engine. The last line says whether the measurement can be trusted: valid only when every run's replay
    verdict is (also in the .fit.json and the preset's [calibration]). See docs/calibration.md.
    """
    try:
        model = load_model(model_preset)
    except InputError as exc:
        raise InputError(f"--model-preset: {exc}") from None
    nominal = _nominal(like, peak_tflops, hbm_tbps, hbm_gb, name)
    out = Path(out_path)
    _check_out(out)
    api_key = os.environ.get(api_key_env) or None
    endpoint = Endpoint(name="engine", model=served, url=url)
    check_endpoint(endpoint, api_key=api_key, timeouts=Timeouts())
    limit = probe_tokenize(tokenize_url or endpoint.url, served, api_key)
    if limit is not None and tokenize_url is None:
        tokenize_url = endpoint.url
        _echo(f"prompts: token-exact with {endpoint.url}/tokenize")
    if max_prompt_tokens is None:
        max_prompt_tokens = min(limit // 2, 32768) if limit else 8192
        if max_prompt_tokens < 256:
            raise InputError(
                f"the server's max_model_len {limit} (from /tokenize) allows prompts of {max_prompt_tokens} "
                "tokens by default; calibrate needs --max-prompt-tokens of at least 256"
            )
    elif limit and max_prompt_tokens >= limit:  # refused now, not as failed requests minutes later
        raise InputError(
            f"--max-prompt-tokens {max_prompt_tokens} is not below the server's max_model_len {limit}"
        )
    target = Target(
        url=endpoint.url,
        model=served,
        tokenize_url=tokenize_url,
        api_key_env=api_key_env,
        time_scale=time_scale,
    )
    plan = CalibrationPlan.spanning(max_prompt_tokens, quick=quick)
    fit, validity, frontend = calibrate(
        target, model, nominal, gpus, plan, out.with_suffix(".runs"), echo=_echo
    )
    header = (
        f"Calibrated by prfaas-bench calibrate against {endpoint.url} (model {served}) for {gpus} x this\n"
        f"hardware serving the {model.name} preset. Fit and residuals: {out.with_suffix('.fit.json').name}\n"
        f"Command: {shlex.join(['prfaas-bench', *sys.argv[1:]])}"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(preset_toml(fit, header=header, validity=validity))
    report = fit_report(
        fit, model=model_preset, gpus=gpus, target=target, plan=plan, validity=validity, frontend=frontend
    )
    out.with_suffix(".fit.json").write_text(json.dumps(report, indent=2) + "\n")
    print_report(report, out)


def print_report(report: dict, out: Path) -> None:
    """Every point with its prediction and error, the summary, the fitted figures, where the preset
    went, and last, in replay's words, whether the measurement behind it can be trusted: ``calibration:
    valid`` or ``calibration: invalid: <reasons>`` (a finding with a flag: exit 0 either way)."""
    res = report["residuals"]
    click.echo("prefill (tokens, measured s, predicted s, error):")
    for p in res["prefill"]:
        click.echo(f"  {p['tokens']:>8d} {p['measured_s']:10.4f} {p['predicted_s']:10.4f} {p['error']:+7.1%}")
    click.echo("decode step (batch, context tokens, measured ms, predicted ms, error):")
    for p in res["decode"]:
        click.echo(
            f"  {p['batch']:>4d} {p['context_tokens']:>8d} {p['measured_s'] * 1e3:9.3f} "
            f"{p['predicted_s'] * 1e3:9.3f} {p['error']:+7.1%}"
        )
    for kind in ("prefill", "decode"):
        s = res["summary"][kind]
        click.echo(
            f"{kind}: {s['points']} points, rms error {s['rms_error']:.1%}, max {s['max_abs_error']:.1%}"
        )
    cal = report["calibration"]
    bound = set(report["at_bound"])
    click.echo(
        "fitted: "
        + ", ".join(
            f"{k} {v:.4g}{' (bound)' if k in bound else ''}"
            for k, v in cal.items()
            if k != "memory_utilization"
        )
    )
    split = report.get("frontend") or {}
    if "engine_mean_s" in split:
        click.echo(
            f"frontend: {split['frontend_s'] * 1e3:.2f} ms of each request outside the engine (the prefill"
            f" requests' mean {split['client_mean_s'] * 1e3:.2f} ms, the engine's own queue + prefill"
            f" {split['engine_mean_s'] * 1e3:.2f} ms; wall), taken from the prefill intercept"
        )
    else:
        click.echo(f"frontend: not split from the prefill intercept ({split.get('why', 'not measured')})")
    validity = report["validity"]
    flag = "" if validity["valid"] else "; its measurement is INVALID (below), not a clean result"
    click.echo(f"preset: {out}  (fit: {out.with_suffix('.fit.json')}){flag}")
    click.echo(f"calibration: {validity['verdict']}")
