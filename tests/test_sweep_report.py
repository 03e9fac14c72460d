"""``prfaas-bench report SWEEP_DIR``: heatmaps of Λ_max and of the PrfaaS gain over two of a sweep's
axes, each cell the mean over the other axes of the points that finished, failures counted."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner
from test_sweep import write_spec

from harness.analysis.sweepmaps import heatmap, sweep_axes
from harness.cli import main

# DeepSeek-V3 plans on 8xH20 and does not fit 8xH100: one row of the map is all failures.
SPEC = (
    'run = ["plan"]\n[grid]\n"model.preset" = ["deepseek-v3"]\n"link.bandwidth_gbps" = [100, 5]\n'
    '"hardware.local" = ["H20", "H100"]\nseed = [0, 1]\n'
)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    spec = write_spec(tmp, SPEC)
    result = CliRunner().invoke(main, ["sweep", str(spec), "--out", str(tmp / "out"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    return tmp / "out"


def test_a_cell_is_the_mean_of_its_points_and_counts_the_failures(swept):
    frame = pd.read_parquet(swept / "sweep.parquet")
    assert sweep_axes(frame) == ["link.bandwidth_gbps", "hardware.local", "seed"]  # the model is fixed
    hm = heatmap(frame, "link.bandwidth_gbps", "hardware.local", "plan.prfaas_vs_homogeneous")
    assert hm.xs == [5, 100] and hm.ys == ["H20", "H100"]  # numbers by size, names as first met
    assert hm.count == [[2, 2], [0, 0]] and hm.failed == [[0, 0], [2, 2]]
    assert hm.z[1] == [None, None]
    for j, gbps in enumerate(hm.xs):
        rows = frame[(frame["link.bandwidth_gbps"] == gbps) & (frame["hardware.local"] == "H20")]
        assert hm.z[0][j] == pytest.approx(rows["plan.prfaas_vs_homogeneous"].mean())
    assert hm.z[0][0] < hm.z[0][1]  # less link, less gain


def test_report_of_a_sweep_directory_draws_both_maps(swept, tmp_path):
    page = tmp_path / "sweep.html"
    result = CliRunner().invoke(main, ["report", str(swept), "-o", str(page)])
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert "Λ_max of PrfaaS (req/s)" in text and "PrfaaS gain over homogeneous (Λ_max ratio)" in text
    assert "8 points, 4 failed; axes: link.bandwidth_gbps (2), hardware.local (2), seed (2)" in text
    assert "(n=2)" in text and "2 failed" in text  # on the cells
    bad = CliRunner().invoke(main, ["report", str(swept), "-o", str(page), "--axes", "seed,nope"])
    assert bad.exit_code == 2 and bad.stderr.startswith("error: no column 'nope' in the sweep")
    assert bad.stderr.count("\n") == 1


def test_breakeven_per_model_is_the_planners_within_the_grid(tmp_path):
    from test_sweep import PAPER

    from harness.analysis.sweepmaps import BANDWIDTH, breakeven
    from harness.model.deployment import deployment_from_scenario, with_overrides
    from harness.model.study import bandwidth_breakpoints
    from harness.scenario import load_scenario

    # Grid points either side of each model's break-even (README: 4.3 and 94 Gbps)
    body = (
        'run = ["plan"]\n[grid]\n"model.preset" = ["kimi-1t-hybrid", "minimax-m2.5"]\n'
        f'"{BANDWIDTH}" = [4, 4.5, 90, 100]\n'
    )
    result = CliRunner().invoke(
        main, ["sweep", str(write_spec(tmp_path, body)), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(tmp_path / "o" / "sweep.parquet")
    found = breakeven(heatmap(frame, BANDWIDTH, "model.preset", "plan.prfaas_vs_homogeneous"))
    deployment = deployment_from_scenario(load_scenario(PAPER))
    for model, (lo, hi) in (("kimi-1t-hybrid", (4, 4.5)), ("minimax-m2.5", (90, 100))):
        exact = bandwidth_breakpoints(with_overrides(deployment, model=model))["prfaas_breakeven_gbps"]
        assert lo < exact < hi  # the grid brackets the planner's own break-even
        assert found[model].bound == "between" and lo < found[model].gbps < hi
        assert found[model].gbps == pytest.approx(exact, rel=0.02)  # Λ_max is near linear in the link here
    page = tmp_path / "sweep.html"
    assert CliRunner().invoke(main, ["report", str(tmp_path / "o"), "-o", str(page)]).exit_code == 0
    assert "Break-even link bandwidth" in page.read_text()


def test_the_pareto_front_keeps_the_points_nothing_beats_on_both():
    from harness.analysis.sweepmaps import pareto, sweep_figures

    # requests per dollar = throughput × 3600 / cost per hour: 1, 3, 2, 0.5 (and 1.5 at twice the cost)
    frame = pd.DataFrame(
        {
            "key": list("abcdef"), "point": range(6), "link.bandwidth_gbps": [1, 2, 3, 4, 5, 6],
            "model.preset": ["m"] * 3 + ["n"] * 3, "status": ["ok"] * 5 + ["failed"],
            "plan.prfaas.cost_per_hour": [3600, 3600, 3600, 3600, 7200, None],
            "plan.prfaas.lambda_max": [1.0] * 5 + [None],
            "simulate.prfaas.ttft_p90_s": [1.0, 2.0, 3.0, 0.5, 2.5, None],
            "simulate.prfaas.throughput_rps": [1.0, 3.0, 2.0, 0.5, 3.0, None],
        }
    )  # fmt: skip
    points = pareto(frame).set_index("point")
    assert list(points.index) == [0, 1, 2, 3, 4]  # the failed point has no figures
    assert points["requests_per_dollar"].tolist() == pytest.approx([1, 3, 2, 0.5, 1.5])
    assert sorted(points.index[points["front"]]) == [0, 1, 3]  # 2 and 4 are beaten by 1 on both
    anchors = [a for a, _ in sweep_figures(frame, ["link.bandwidth_gbps", "model.preset"])]
    assert anchors == ["sweep-0", "sweep-pareto"]  # Λ_max from plan; no gain column; the front
