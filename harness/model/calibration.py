"""The cost model against the PrfaaS paper's published figures: the calibration table ``plan
--calibration`` prints. The reference numbers are the paper's (Tables 3, 5 and 6 of arXiv 2604.15039)."""

from __future__ import annotations

import pandas as pd

from harness.model.cost import InstanceCost
from harness.model.presets import load_hardware, load_model

_MIB = 1024**2
# Table 5: the 1T hybrid on one 8xH200 instance: input tokens, T_prefill (s), S_kv (MiB).
TABLE5 = ((1024, 0.44, 190.8), (8192, 0.72, 308.9), (32768, 1.84, 701.3), (131072, 7.40, 2316.3))
# Prefill times Table 6 implies (Θ = N / T at the case study's E[L], l_long and l_short).
TABLE6_IMPLIED = (
    ("H200", 27_486, 4 / 2.45, "naive: 4 / Θ_prfaas 2.45 at E[L]"),
    ("H200", 45_046, 4 / 1.61, "PrfaaS: 4 / Θ_prfaas 1.61 at l_long"),
    ("H20", 10_224, 3 / 1.64, "PrfaaS: 3 / Θ_pd-p 1.64 at l_short"),
    ("H20", 27_486, 9 / 2.11, "homogeneous: 9 / Θ_pd-p 2.11 at E[L]"),
)
# Table 3: Φ_kv (Gbps) on 8xH200 at 1K/8K/32K/128K input tokens.
TABLE3 = {
    "minimax-m2.5": (4.94, 32.87, 59.93, 47.82),
    "qwen3-235b": (4.12, 22.42, 33.35, 21.50),
    "kimi-linear-48b": (1.19, 2.29, 3.87, 4.88),
}


def calibration_frame() -> pd.DataFrame:
    """One row per published figure: quantity, model, hardware, tokens, paper, ours, error (relative)."""
    rows = []
    hybrid = load_model("kimi-1t-hybrid")
    h200 = InstanceCost(hybrid, load_hardware("H200"))
    for tokens, t, s in TABLE5:
        rows.append(("T_prefill (s), Table 5", hybrid.name, "H200", tokens, t, h200.prefill_time_s(tokens)))
        rows.append(("S_kv (MiB), Table 5", hybrid.name, "H200", tokens, s, h200.kv_bytes(tokens) / _MIB))
    for hw, tokens, t, why in TABLE6_IMPLIED:
        ours = InstanceCost(hybrid, load_hardware(hw)).prefill_time_s(tokens)
        rows.append((f"T_prefill (s), Table 6 {why}", hybrid.name, hw, tokens, t, ours))
    h20 = InstanceCost(hybrid, load_hardware("H20"))
    rows.append(
        (
            "decode BS_max at 25 ms, Table 6",
            hybrid.name,
            "H20",
            27_998,
            20,
            h20.max_decode_batch(0.025, 27_998),
        )
    )
    for name, ref in TABLE3.items():
        cost = InstanceCost(load_model(name), load_hardware("H200"))
        for k, gbps in zip((1, 8, 32, 128), ref, strict=True):
            rows.append(("Φ_kv (Gbps), Table 3", name, "H200", k * 1024, gbps, cost.phi_kv_gbps(k * 1024)))
    frame = pd.DataFrame(rows, columns=["quantity", "model", "hardware", "tokens", "paper", "ours"])
    frame["error"] = frame["ours"] / frame["paper"] - 1
    return frame
