"""simulate's figures are analyze's: ``simulate --json`` and ``analyze --json`` on the same run directory
give identical TTFT, TPOT, attainment and goodput, and both follow the README's definitions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.records import read_records

REPO = Path(__file__).resolve().parent.parent
PAPER = REPO / "workloads" / "paper-case-study.toml"
FIGURES = (
    "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tpot_p50_s", "tpot_p90_s", "tpot_p99_s",
    "slo_attainment", "goodput_rps", "throughput_rps", "requests", "failed",
)  # fmt: skip
TTFT_SLO_S = 4.0


def _invoke(*args: str) -> dict:
    res = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def _trace(path: Path) -> Path:
    """Mixed lengths, a third of them one-token answers (TPOT undefined), arriving fast enough to queue."""
    rng = np.random.default_rng(4)
    lines = []
    for i in range(90):
        out = (1, 1, 40, 200, 2, 600)[i % 6]
        lines.append(
            json.dumps(
                {"timestamp": i * 350, "input_length": int(rng.integers(2_000, 60_000)),
                 "output_length": out, "hash_ids": []}
            )
        )  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def _sim_runs(sim: dict) -> dict[str, dict]:
    runs = {}
    for name, entry in sim["topologies"].items():
        runs |= entry.get("runs") or {name: entry}
    return runs


@pytest.mark.parametrize(
    "args",
    [
        ["--trace", "TRACE", "--rate-sweep", "1.5,3", "--ttft-slo", str(TTFT_SLO_S)],
        ["--find-max-rate", "--topology", "naive", "--requests", "150"],
    ],
    ids=["trace-sweep", "find-max-rate"],
)
def test_simulate_json_equals_analyze_json_on_the_same_run(tmp_path, args):
    args = [str(_trace(tmp_path / "t.jsonl")) if a == "TRACE" else a for a in args]
    sim = _invoke("simulate", str(PAPER), *args, "--out", str(tmp_path), "--json")
    ana = _invoke("analyze", sim["run_dir"], "--json", "--bootstrap", "100")
    runs = _sim_runs(sim)
    assert set(runs) == set(ana["topologies"])
    for label, figures in runs.items():
        assert {k: figures[k] for k in FIGURES} == {k: ana["topologies"][label][k] for k in FIGURES}, label


def test_simulate_figures_follow_the_definitions(tmp_path):
    """TPOT leaves one-token answers out (undefined, not 0); attainment counts TTFT and TPOT bounds."""
    sim = _invoke(
        "simulate", str(PAPER), "--trace", str(_trace(tmp_path / "t.jsonl")), "--rate", "3",
        "--topology", "homogeneous", "--ttft-slo", str(TTFT_SLO_S), "--out", str(tmp_path), "--json",
    )  # fmt: skip
    figures = sim["topologies"]["homogeneous"]
    df = read_records(sim["run_dir"])
    n = df.output_tokens_received.to_numpy()
    ttft = (df.first_token_s - df.scheduled_s).to_numpy()
    multi = n >= 2
    tpot = (df.last_token_s - df.first_token_s).to_numpy()[multi] / (n[multi] - 1)
    assert (~multi).sum() == 30  # the premise: one-token answers are there
    assert figures["tpot_p50_s"] == pytest.approx(np.percentile(tpot, 50), rel=1e-12)
    assert figures["tpot_p50_s"] > 0
    tpot_ok = np.ones(len(df), dtype=bool)
    tpot_ok[multi] = tpot <= 0.025 * (1 + 1e-9)  # [slo] tpot_ms = 25
    good = (ttft <= TTFT_SLO_S) & tpot_ok
    assert 0 < good.sum() < len(df)  # the premise: the TTFT bound binds for some requests
    assert figures["slo_attainment"] == pytest.approx(good.mean(), rel=1e-12)
    span = df.last_token_s.max() - df.scheduled_s.min()
    assert figures["goodput_rps"] == pytest.approx(good.sum() / span, rel=1e-12)
