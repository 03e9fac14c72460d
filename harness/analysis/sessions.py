"""Per-session figures of a session-mode run: turns, time to complete a session, TTFT by turn index.

A session's time runs from its first turn's scheduled send to its last turn's end, so it holds every
turn's latency and every think time between them. TTFT by turn shows what a growing conversation
costs (longer prompts) and what its prefix cache saves (the earlier turns' blocks).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from harness.analysis import metrics as m

TURNS_SHOWN = 8  # TTFT by turn for turns 0..7; later turns are pooled as "8+"


def _pct(values: np.ndarray, q: float) -> float | None:
    values = values[~np.isnan(values)]
    return float(np.percentile(values, q)) if len(values) else None


def session_figures(df: pd.DataFrame) -> dict[str, Any] | None:
    """``{"sessions", "turns_mean", "turns_max", "failed_sessions", "session_s_p50/p90/mean",
    "ttft_by_turn": {turn: {"requests", "p50_s", "p90_s"}}}``; None when no record has a session."""
    sid = m.col(df, "session_id")
    has = ~np.isnan(sid)
    if not has.any():
        return None
    s = df[has]
    frame = pd.DataFrame(
        {
            "session": sid[has],
            "start": m.col(s, "scheduled_s"),
            "end": m.request_end(s),
            "failed": ~m.ok_mask(s),
        }
    )
    per = frame.groupby("session").agg(
        turns=("start", "size"), start=("start", "min"), end=("end", "max"), failed=("failed", "any")
    )
    span = (per["end"] - per["start"]).to_numpy(dtype=float)
    turn = m.col(s, "turn")
    ttft = np.where(m.ok_mask(s), m.ttft(s), np.nan)
    by_turn: dict[str, dict[str, Any]] = {}
    for k in range(TURNS_SHOWN + 1):
        pick = turn == k if k < TURNS_SHOWN else turn >= k
        if pick.any():
            label = str(k) if k < TURNS_SHOWN else f"{k}+"
            by_turn[label] = {
                "requests": int(pick.sum()),
                "p50_s": _pct(ttft[pick], 50),
                "p90_s": _pct(ttft[pick], 90),
            }
    return {
        "sessions": len(per),
        "turns_mean": float(per["turns"].mean()),
        "turns_max": int(per["turns"].max()),
        "failed_sessions": int(per["failed"].sum()),
        "session_s_p50": _pct(span, 50),
        "session_s_p90": _pct(span, 90),
        "session_s_mean": float(np.nanmean(span)) if (~np.isnan(span)).any() else None,
        "ttft_by_turn": by_turn,
    }
