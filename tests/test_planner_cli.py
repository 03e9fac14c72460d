"""``prfaas-bench plan``: Table 6 through the command's JSON, sweeps to CSV, and bad input messages."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from harness.cli import main

CASE_STUDY = Path(__file__).resolve().parent.parent / "workloads" / "paper-case-study.toml"


def run(*args: str):
    return CliRunner().invoke(main, ["plan", *args])


def test_json_meets_every_table6_target():
    result = run(str(CASE_STUDY), "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    tops, ratios = out["topologies"], out["ratios"]
    p, h, n = tops["prfaas"], tops["homogeneous"], tops["naive"]
    assert p["threshold_tokens"] == pytest.approx(19_400, rel=0.10)
    assert (p["n_prfaas"], p["n_p"], p["n_d"]) == (4, 3, 5)
    assert (h["n_p"], h["n_d"]) == (9, 3)
    assert (n["n_prfaas"], n["n_d"]) == (4, 8)
    assert p["lambda_max"] == pytest.approx(3.24, rel=0.05)
    assert h["lambda_max"] == pytest.approx(2.11, rel=0.05)
    assert n["lambda_max"] == pytest.approx(2.45, rel=0.05)
    assert ratios["prfaas_vs_homogeneous"] == pytest.approx(1.54, abs=0.05)
    assert ratios["naive_vs_homogeneous"] == pytest.approx(1.16, abs=0.05)
    assert ratios["prfaas_vs_naive"] == pytest.approx(p["lambda_max"] / n["lambda_max"])
    assert p["offload_share"] == pytest.approx(0.496, abs=0.02)
    assert 10 < p["egress_gbps"] < 16
    assert h["egress_gbps"] == 0


def test_table_output_names_every_row():
    result = run(str(CASE_STUDY))
    assert result.exit_code == 0, result.output
    for label in ("N_prfaas / N_p / N_d", "4 / 3 / 5", "- / 9 / 3", "4 / - / 8", "Λ_max", "egress", "per $"):
        assert label in result.output


def test_bandwidth_sweep_csv_for_dense_model(tmp_path):
    csv = tmp_path / "bw.csv"
    result = run(
        str(CASE_STUDY),
        "--sweep",
        "bandwidth",
        "--bandwidths",
        "10,100,400",
        "--model",
        "minimax-m2.5",
        "--csv",
        str(csv),
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(csv)
    assert set(frame["model"]) == {"minimax-m2.5"}
    assert sorted(set(frame["bandwidth_gbps"])) == [10, 100, 400]
    assert len(frame) == 3 * 3
    assert "prfaas_breakeven_gbps" in result.output


@pytest.mark.parametrize("sweep", ["threshold", "split"])
def test_other_sweeps_as_json(sweep):
    result = run(
        str(CASE_STUDY),
        "--sweep",
        sweep,
        "--json",
        *(["--thresholds", "8000,19000,40000"] if sweep == "threshold" else []),
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    assert rows and all("lambda_max" in r for r in rows)
    if sweep == "threshold":
        assert [r["threshold_tokens"] for r in rows] == [8000, 19000, 40000]


def test_bandwidth_override_makes_prfaas_link_bound():
    result = run(str(CASE_STUDY), "--json", "--bandwidth-gbps", "5")
    out = json.loads(result.output)
    p = out["topologies"]["prfaas"]
    assert out["link_gbps"] == 5
    assert p["egress_gbps"] == pytest.approx(5, rel=0.01)
    assert p["lambda_max"] < 3.0


# ------------------------------------------------------------------------------------- bad input


@pytest.fixture
def scenario(tmp_path):
    """Write the case study with one textual substitution; return its path."""

    def make(old: str, new: str) -> Path:
        text = CASE_STUDY.read_text(encoding="utf-8")
        assert old in text
        path = tmp_path / "bad.toml"
        path.write_text(text.replace(old, new, 1), encoding="utf-8")
        return path

    return make


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "local_instances = 8   # PD-P",
            "local_instances = 0   # PD-P",
            r"\[topologies.prfaas\] local_instances: must be >= 1",
        ),
        (
            "remote_instances = 4  # PrfaaS",
            "remote_instances = 0  # PrfaaS",
            r"\[topologies.prfaas\] remote_instances: .*at least 1",
        ),
        ("min_tokens = 128", "min_tokens = 200000", r"\[workload\] min_tokens: must be below max_tokens"),
        ("bandwidth_gbps = 100", "bandwidth_gbps = -100", r"\[link\] bandwidth_gbps: must be > 0, got -100"),
        (
            'local = "H20"',
            'local = "A100"',
            r"\[hardware\] local: unknown hardware preset 'A100'; known: b200, h100, h20, h200",
        ),
        (
            'preset = "kimi-1t-hybrid"',
            'preset = "llama"',
            r"\[model\] preset: unknown model preset 'llama'; known: .*deepseek-v3",
        ),
        ("tpot_ms = 25", "tpot_ms = 0", r"\[slo\] tpot_ms: must be > 0"),
        ("tpot_ms = 25", "tpot_ms = 1", r"cannot decode even one"),
        ("gpus_per_instance = 8", "gpus_per_instance = 2", r"does not fit 2xH20"),
        (
            'kind = "lognormal"',
            'kind = "zipf"',
            r"\[workload\] kind: must be one of lognormal, fixed, uniform, trace",
        ),
        ("sigma = 1.00", "sigma = -1.0", r"\[workload\] sigma: must be > 0"),
        (
            'kind = "homogeneous"\n',
            'kind = "homogeneous"\nn_p = 9\nn_d = 4\n',
            r"n_p \+ n_d must equal local_instances \(9 \+ 4 != 12\)",
        ),
        (  # regression: the split search over no splits ended in a max() traceback
            "local_instances = 12  # all 96 H20",
            "local_instances = 1",
            r"\[topologies.homogeneous\] local_instances: .*at least 2 \(prefill \+ decode\), got 1",
        ),
        (
            'kind = "naive"\n',
            'kind = "naive"\nthreshold_tokens = 1000\n',
            r"\[topologies.naive\] threshold_tokens: only a prfaas",
        ),
    ],
)
def test_bad_scenario_is_one_clear_line(scenario, old, new, message):
    result = run(str(scenario(old, new)), "--json")
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert re.search(message, result.output), result.output


def test_bad_flags_are_rejected():
    assert "--bandwidth-gbps must be > 0" in run(str(CASE_STUDY), "--bandwidth-gbps", "-1").output
    out = run(str(CASE_STUDY), "--sweep", "bandwidth", "--bandwidths", "10,fast")
    assert out.exit_code == 2 and "--bandwidths: expected comma-separated numbers" in out.output
    out = run(str(CASE_STUDY), "--model", "nope")
    assert out.exit_code == 2 and "unknown model preset 'nope'" in out.output
    out = run("missing.toml")
    assert out.exit_code == 2 and "missing.toml: no such scenario file" in out.output


def test_unknown_tables_are_refused_with_the_known_ones(scenario):
    """The whole file is one schema: a table nobody reads is a typo, not a future tool's."""
    path = scenario("[slo]", "[future_tool]\noption = 1\n\n[slo]")
    result = run(str(path), "--json")
    assert result.exit_code == 2
    assert result.output.startswith(
        f"error: {path}: [future_tool]: unknown table (known: name, description, model"
    )


def test_trace_workload(tmp_path):
    """A trace workload plans on the trace's own input lengths and mean output length (no prompt shares
    a prefix block with another, so what each prefills is its whole prompt)."""
    lines = [
        json.dumps(
            {
                "timestamp": i * 100,
                "input_length": n,
                "output_length": 500,
                "hash_ids": list(range(1000 * i, 1000 * i + -(-n // 512))),
            }
        )
        for i, n in enumerate([2_000, 5_000, 12_000, 30_000, 60_000, 90_000] * 20)
    ]
    trace = tmp_path / "t.jsonl"
    trace.write_text("\n".join(lines) + "\n")
    text = CASE_STUDY.read_text(encoding="utf-8")
    start, end = text.index("[workload]"), text.index("[slo]")
    path = tmp_path / "trace.toml"
    path.write_text(text[:start] + '[workload]\nkind = "trace"\ntrace = "t.jsonl"\n\n' + text[end:])
    out = json.loads(run(str(path), "--json").output)
    assert out["workload"]["output_tokens"] == 500
    assert out["workload"]["mean_input_tokens"] == pytest.approx(
        sum([2_000, 5_000, 12_000, 30_000, 60_000, 90_000]) / 6
    )
    t = out["topologies"]["prfaas"]["threshold_tokens"]
    share = out["topologies"]["prfaas"]["offload_share"]
    # The offloaded share is exactly the trace's fraction of requests longer than t.
    assert share == pytest.approx(sum(n > t for n in [2_000, 5_000, 12_000, 30_000, 60_000, 90_000]) / 6)


@pytest.mark.parametrize("sweep", [[], ["--sweep", "split"]])
def test_unwritable_csv_is_one_line(tmp_path, sweep):
    # Regression: an unwritable --csv path ended in a pandas FileNotFoundError traceback.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    target = blocker / "plan.csv"
    out = run(str(CASE_STUDY), *sweep, "--csv", str(target))
    assert out.exit_code == 2 and out.output.startswith(f"error: --csv {target}: cannot write")
    assert len(out.output.strip().splitlines()) == 1
