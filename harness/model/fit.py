"""Fit a hardware preset's ``[calibration]`` to measured prefill and decode-step times: pure arithmetic.

The cost model (``harness.model.cost``) is linear in its two fixed overheads and in the reciprocals of
its four efficiencies::

    T_prefill(n)    = o_prefill + L(n) / e_gemm + A(n) / e_attention
    T_step(B, C)    = o_decode + M(B, C) / e_hbm + D(B) / e_decode + A'(C) / e_attention

where L, A, M, D and A' are the terms at 100% of peak FLOP/s and HBM bandwidth
(``InstanceCost.prefill_work_s`` and ``decode_work_s``). So a single bounded linear least squares over
both sets of points gives all six at once: overheads >= 0 and efficiencies in (0, 1] (reciprocals >= 1).
Each row is divided by its measured time, so every point counts by its relative error, as the shipped
presets were fitted. An efficiency held at 1 by its bound means the measured term is no larger than the
stated peak allows (or too small to see): the preset's nominal peak, not the fit, then sets that term.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from harness.model.cost import InstanceCost
from harness.model.presets import Hardware, ModelSpec

PARAMS = (
    "prefill_overhead_s",
    "decode_overhead_s",
    "gemm_efficiency",
    "attention_efficiency",
    "decode_efficiency",
    "hbm_efficiency",
)
_OVERHEADS = 2  # the first two parameters are seconds; the rest enter as reciprocals of efficiencies
_LOWER = np.array([0.0, 0.0, 1.0, 1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Measurements:
    """What calibration measured, in the modelled deployment's seconds.

    prefill_tokens / prefill_s         one isolated prefill each (prompt tokens, seconds)
    decode_batch / decode_context / decode_step_s
                                       one decode point each: sequences in the batch, the context
                                       tokens they hold in total, seconds per step (median of repeats)
    frontend_s                         of each prefill point, the mean time outside the engine (the
                                       client's time less the engine's own queue and prefill time);
                                       0 when the engine does not report them
    """

    prefill_tokens: np.ndarray
    prefill_s: np.ndarray
    decode_batch: np.ndarray
    decode_context: np.ndarray
    decode_step_s: np.ndarray
    frontend_s: float = 0.0


@dataclass(frozen=True)
class CalibrationFit:
    """The fitted calibration, the preset it makes, and what it predicts at every measured point."""

    hardware: Hardware
    at_bound: tuple[str, ...]  # parameters held by their bound (overhead 0 or efficiency 1)
    measured: Measurements
    prefill_predicted_s: np.ndarray
    decode_predicted_s: np.ndarray

    def residuals(self) -> dict[str, object]:
        """Per point and in summary: relative error (predicted / measured − 1) of prefill and decode."""
        m = self.measured
        pre = self.prefill_predicted_s / m.prefill_s - 1.0
        dec = self.decode_predicted_s / m.decode_step_s - 1.0
        return {
            "prefill": [
                {"tokens": int(n), "measured_s": float(y), "predicted_s": float(p), "error": float(e)}
                for n, y, p, e in zip(
                    m.prefill_tokens, m.prefill_s, self.prefill_predicted_s, pre, strict=True
                )
            ],
            "decode": [
                {
                    "batch": int(b),
                    "context_tokens": int(c),
                    "measured_s": float(y),
                    "predicted_s": float(p),
                    "error": float(e),
                }
                for b, c, y, p, e in zip(
                    m.decode_batch,
                    m.decode_context,
                    m.decode_step_s,
                    self.decode_predicted_s,
                    dec,
                    strict=True,
                )
            ],
            "summary": {
                "prefill": _summary(pre),
                "decode": _summary(dec),
            },
        }


def _summary(err: np.ndarray) -> dict[str, float | int]:
    return {
        "points": len(err),
        "rms_error": float(np.sqrt(np.mean(err**2))),
        "max_abs_error": float(np.max(np.abs(err))),
    }


def design(model: ModelSpec, hardware: Hardware, gpus: int, m: Measurements) -> tuple[np.ndarray, np.ndarray]:
    """The least-squares system ``X θ ≈ y`` in the order of ``PARAMS`` (efficiencies as reciprocals),
    from the cost model's own terms: one row per prefill point, then one per decode point."""
    cost = InstanceCost(model, hardware, gpus)
    rows = []
    for n in m.prefill_tokens:
        linear, attention = cost.prefill_work_s(float(n), float(n) * float(n) / 2.0)
        rows.append((1.0, 0.0, linear, attention, 0.0, 0.0))
    for b, c in zip(m.decode_batch, m.decode_context, strict=True):
        streamed, compute, attention = cost.decode_work_s(int(b), int(c))
        rows.append((0.0, 1.0, 0.0, attention, compute, streamed))
    x = np.array(rows, dtype=float).reshape(-1, len(PARAMS))
    return x, np.concatenate([m.prefill_s, m.decode_step_s]).astype(float)


def fit_calibration(model: ModelSpec, nominal: Hardware, gpus: int, m: Measurements) -> CalibrationFit:
    """Fit ``nominal``'s calibration (its peak figures and memory_utilization kept) to ``m``.

    The prefill intercept is the per-request time of an isolated request outside its FLOPs; the part
    ``m.frontend_s`` measured outside the engine (at most the whole intercept) becomes the calibration's
    ``frontend_s``, the rest ``prefill_overhead_s``. The split moves no prediction of an isolated
    request, only what a request keeps others waiting for.

    Raises ValueError when there are too few points to fit: at least three prefill lengths and three
    decode windows at two or more batch sizes."""
    if len(np.unique(m.prefill_tokens)) < 3:
        raise ValueError("calibration needs prefill times at three or more prompt lengths")
    if len(m.decode_step_s) < 3 or len(np.unique(m.decode_batch)) < 2:
        raise ValueError("calibration needs decode steps at two or more batch sizes (three windows at least)")
    if np.any(m.prefill_s <= 0) or np.any(m.decode_step_s <= 0):
        raise ValueError("measured times must be positive")
    x, y = design(model, nominal, gpus, m)
    # Relative least squares; θ = lower + z with z >= 0 (non-negative least squares on the rest).
    w = 1.0 / y
    xw, rest = x * w[:, None], (y - x @ _LOWER) * w
    scale = np.linalg.norm(xw, axis=0)
    scale[scale == 0] = 1.0  # a term the model does not have (e.g. no attention FLOPs): stays at its bound
    z = nnls(xw / scale, rest) / scale
    theta = _LOWER + z
    values = dict(zip(PARAMS, theta, strict=True))
    for name in PARAMS[_OVERHEADS:]:
        values[name] = 1.0 / values[name]
    at_bound = tuple(name for name, zi in zip(PARAMS, z, strict=True) if zi <= 0.0)
    values["frontend_s"] = min(max(m.frontend_s, 0.0), values["prefill_overhead_s"])
    values["prefill_overhead_s"] -= values["frontend_s"]
    calibration = replace(
        nominal.calibration, **{k: float(v) for k, v in values.items()}
    )  # memory_utilization stays the nominal preset's
    hardware = replace(nominal, calibration=calibration)
    cost = InstanceCost(model, hardware, gpus)
    return CalibrationFit(
        hardware=hardware,
        at_bound=at_bound,
        measured=m,
        prefill_predicted_s=np.array([cost.prefill_time_s(int(n)) for n in m.prefill_tokens])
        + calibration.frontend_s,
        decode_predicted_s=np.array(
            [
                cost.decode_step_s(int(b), int(c))
                for b, c in zip(m.decode_batch, m.decode_context, strict=True)
            ]
        ),
    )


def nnls(a: np.ndarray, b: np.ndarray, *, max_iter: int = 200) -> np.ndarray:
    """argmin ||a x − b|| subject to x >= 0 (Lawson–Hanson active set; small dense problems)."""
    n = a.shape[1]
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    tol = 1e-12 * max(1.0, float(np.abs(a).max()) * float(np.abs(b).max()))
    for _ in range(max_iter):
        grad = a.T @ (b - a @ x)
        if passive.all() or grad[~passive].max(initial=-np.inf) <= tol:
            break
        passive[np.argmax(np.where(passive, -np.inf, grad))] = True
        while True:
            s = np.zeros(n)
            s[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if s[passive].min() > 0:
                x = s
                break
            blocked = passive & (s <= 0)
            step = np.min(x[blocked] / (x[blocked] - s[blocked]))
            x = x + step * (s - x)
            passive &= x > tol
            x[~passive] = 0.0
    return x
