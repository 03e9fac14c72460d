"""Test scaffolding for the interop tests: another tool's requests replayed by our own client, the
order-of-magnitude check between its figures and ours (never a timing bound: the machine is busy), and
our reading of a GuideLLM or AIPerf file held to the figures that tool wrote beside it."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from click.testing import CliRunner

from harness.analysis import metrics as m
from harness.analysis.runs import load_bundle
from harness.cli import main
from harness.interop import read_foreign
from harness.loadgen import Endpoint, LoadSpec, ReplayConfig, replay
from harness.traces.frame import Trace


def tpot_as_others_define(df) -> np.ndarray:
    """(last − first)/(n − 1) for every answer of two tokens or more, as vLLM's bench serve and GuideLLM
    compute it: 0 where every token came in one read, where our TPOT (``metrics.tpot``) is undefined."""
    n = m.col(df, "output_tokens_received")
    span = m.col(df, "last_token_s") - m.col(df, "first_token_s")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n >= 2, span / (n - 1), np.nan)


def replay_same_requests(
    url: str, release_s: Sequence[float], input_tokens: Sequence[int], output_tokens: Sequence[int], out: Path
) -> pd.DataFrame:
    """Our client sends the tool's requests (its lengths, at its release times) to ``url``; the records."""
    order = np.argsort(np.asarray(release_s, dtype=float), kind="stable")  # a trace is in arrival order
    start = np.asarray(release_s, dtype=float)[order]
    n = len(start)
    trace = Trace(
        arrival_s=start - start.min(), input_tokens=np.asarray(input_tokens)[order],
        output_tokens=np.asarray(output_tokens)[order], hash_values=np.zeros(0, dtype=np.int64),
        hash_offsets=np.zeros(n + 1, dtype=np.int64),
    )  # fmt: skip
    config = ReplayConfig(
        endpoints=(Endpoint(name="default", url=url, model="tiny-llama"),), load=LoadSpec(), progress=False
    )
    replay(trace, config, out, quiet=True)
    return load_bundle([out]).runs[0].records


def assert_same_magnitude(
    ours: pd.DataFrame,
    theirs: pd.DataFrame,
    checks: Sequence[tuple[Callable[[pd.DataFrame], np.ndarray], float]],
) -> None:
    """For each (metric, floor): both medians at least the server's set delay, and within 10× of each other."""
    for fn, floor in checks:
        a, b = float(np.nanmedian(fn(ours))), float(np.nanmedian(fn(theirs)))
        assert a >= floor and b >= floor and 0.1 < a / b < 10, (fn.__name__, a, b)


def beside_our_run(tmp_path: Path, theirs: Path, source: str) -> tuple[dict, dict]:
    """``analyze``, ``report`` and ``compare`` of a synthetic run of ours (30 requests at 2 req/s, TTFT in
    seconds) beside another tool's file: (the side-by-side rows of topology ``default``, the compare
    result with our run as the baseline)."""
    from synthetic_runs import SyntheticTopology, write_synthetic_run

    run = write_synthetic_run(tmp_path / "run", {"default": SyntheticTopology()}, n=30, source="replay")
    res = CliRunner().invoke(main, ["analyze", str(run), str(theirs), "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    side = result["side_by_side"]["default"]
    assert set(side) == {"replay", source}
    # Their file carries no verdict of ours: the analysis says so instead of passing it as judged.
    (verdict,) = [r["validity"] for r in result["runs"] if r["source"] == source]
    assert verdict.startswith("unknown: ") and source in verdict
    assert any(n.endswith(verdict) for n in result["notes"]) and result["validity"] == "unknown"
    out = tmp_path / "r.html"
    assert CliRunner().invoke(main, ["report", str(run), str(theirs), "-o", str(out)]).exit_code == 0
    assert source in out.read_text()
    res = CliRunner().invoke(main, ["compare", str(run), str(theirs), "--json", "--allow-invalid"])
    assert res.exit_code in (0, 1), res.output
    return side, json.loads(res.stdout)


def _guidellm_requests(path: Path) -> list[dict]:
    requests = json.loads(path.read_text())["benchmarks"][0]["requests"]
    return requests["successful"] + requests["errored"] + requests["incomplete"]


def matches_guidellms_own_figures(path: Path) -> None:
    """Per request: GuideLLM's TTFT (from its send), latency, ITL (which is our TPOT), token counts."""
    theirs = _guidellm_requests(path)
    meta, df = read_foreign(path)
    assert meta["source"] == "guidellm" and len(df) == len(theirs)
    ok = (df["status"] == "ok").to_numpy()
    assert ok.tolist() == [r["info"]["status"] == "completed" for r in theirs]
    t = [r for r, k in zip(theirs, ok, strict=True) if k]
    good = df[ok]
    from_send = (good["first_token_s"] - good["sent_s"]).to_numpy()
    np.testing.assert_allclose(from_send * 1e3, [r["time_to_first_token_ms"] for r in t], rtol=1e-6)
    np.testing.assert_allclose(good["end_s"] - good["sent_s"], [r["request_latency"] for r in t], rtol=1e-6)
    # GuideLLM's inter_token_latency_ms is (last − first)/(n − 1): our TPOT, but 0 for a one-read answer.
    np.testing.assert_allclose(
        tpot_as_others_define(good) * 1e3, [r["inter_token_latency_ms"] for r in t], rtol=1e-6
    )
    # Our TTFT counts from the targeted start: theirs plus GuideLLM's own dispatch delay, when its
    # targets are on the sends' clock (a day apart means another clock: then the send lag is missing).
    lag = np.array(
        [r["info"]["timings"]["request_start"] - r["info"]["timings"]["targeted_start"] for r in t]
    )
    expected = lag if (np.abs(lag) < 86_400).all() else np.full(len(t), np.nan)
    np.testing.assert_allclose(m.send_lag(good), expected, atol=1e-6)
    assert good["output_tokens_received"].tolist() == [r["output_tokens"] for r in t]
    assert df["prompt_tokens_trace"].tolist() == [r["prompt_tokens"] for r in theirs]
    # No per-token times in the file: ITL is missing, not zero.
    assert len(m.itl(good)) == 0 and good["itl_unresolved"].all()


def matches_aiperfs_own_figures(export: Path) -> None:
    """Our reading of AIPerf's ``profile_export.jsonl`` gives the aggregates AIPerf wrote beside it in
    ``profile_export_aiperf.json``: counts, TTFT and latency from the send (mean and percentiles; AIPerf
    interpolates linearly, as numpy does), its inter-token latency (our TPOT), its chunk gaps (our ITL, when
    every chunk held one token) and the server's token totals."""
    agg = json.loads((export.parent / "profile_export_aiperf.json").read_text())
    meta, df = read_foreign(export)
    assert meta["source"] == "aiperf"
    ok = df[df["status"] == "ok"]
    assert len(ok) == agg["request_count"]["avg"]
    assert len(df) - len(ok) == agg.get("error_request_count", {"avg": 0})["avg"]

    def same(ours_s: np.ndarray, theirs: dict) -> None:
        ms = np.asarray(ours_s, dtype=float) * 1e3
        assert len(ms) == theirs["count"]
        np.testing.assert_allclose(ms.mean(), theirs["avg"], rtol=1e-9)
        np.testing.assert_allclose(np.percentile(ms, [50, 90, 99]), [theirs[k] for k in ("p50", "p90", "p99")],
                                   rtol=1e-9)  # fmt: skip

    same(ok["first_token_s"] - ok["sent_s"], agg["time_to_first_token"])
    same(ok["last_token_s"] - ok["sent_s"], agg["request_latency"])
    same(tpot_as_others_define(ok), agg["inter_token_latency"])
    assert not ok["itl_unresolved"].any()  # the server sent one token a chunk
    same(m.itl(ok), agg["inter_chunk_latency"])
    assert int(ok["output_tokens_received"].sum()) == agg["total_usage_completion_tokens"]["avg"]
    assert int(ok["prompt_tokens_server"].sum()) == agg["total_usage_prompt_tokens"]["avg"]
