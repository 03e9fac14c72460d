"""bench's capacity ladder: Λ_max read off a few rungs judged as Λ_max probes, and the gain's interval.

The pure reading is checked on hand-built verdicts against hand-computed figures; one small bench run
(two topologies at half size, three rungs, speed-up 8) checks the properties of a ladder measured over
HTTP.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
from conftest import net_prefix as P

from harness.analysis.ladder import fit_ladder, gain
from harness.serving.stability import ProbeVerdict

REPO = Path(__file__).resolve().parent.parent
CASE_STUDY = REPO / "workloads" / "paper-case-study.toml"


def _v(
    rate: float, *, achieved: float | None = None, attainment: float = 1.0, slope: float = 0.0
) -> ProbeVerdict:
    """A probe verdict as judge_probe would give it: keep-up at 3%, trend bound 1 req/s, target 0.99."""
    achieved = rate if achieved is None else achieved
    if achieved < 0.97 * rate or slope > 1.0:
        reason = "unstable"
    elif attainment < 0.99:
        reason = "slo"
    else:
        reason = None
    return ProbeVerdict(
        rate_rps=rate, requests=100, window_start_s=0.0, window_end_s=100.0, offered_rps=rate,
        achieved_rps=achieved, attainment=attainment, queue_slope_rps=slope, queue_slope_bound_rps=1.0,
        passed=reason is None, reason=reason, detail="",
    )  # fmt: skip


def test_an_overloaded_rung_gives_lambda_max_by_the_searchs_overload_ceiling():
    fit = fit_ladder([_v(3.0, achieved=2.5), _v(1.0), _v(2.0)], target=0.99)
    assert (fit.low_rps, fit.high_rps, fit.first_failure, fit.monotone) == (2.0, 3.0, "keep_up", True)
    assert fit.lambda_max_rps == pytest.approx(2.5 / 0.97)  # completes 2.5/s: keeps up to 2.577/s


def test_slo_and_queue_trend_margins_are_interpolated_linearly_between_the_bracketing_rungs():
    # attainment 1.0 → 0.95 from 2 to 3 req/s crosses 0.99 a fifth of the way: 2.2 req/s.
    fit = fit_ladder([_v(2.0), _v(3.0, attainment=0.95)], target=0.99)
    assert (fit.lambda_max_rps, fit.first_failure) == (pytest.approx(2.2), "slo")
    # queue slope 0.5 → 3 (bound 1): margin 0.5 → −2 crosses 0 at 2 + 0.5/2.5 = 2.2; the SLO at 2.5 later.
    fit = fit_ladder([_v(2.0, slope=0.5), _v(3.0, slope=3.0, attainment=0.97)], target=0.99)
    assert (fit.lambda_max_rps, fit.first_failure) == (pytest.approx(2.2), "queue_trend")


def test_noisy_verdicts_take_the_step_that_contradicts_the_fewest_rungs():
    # A failure at 1 req/s below passes at 2: one contradiction either way; the bracketed step wins.
    fit = fit_ladder([_v(1.0, achieved=0.9), _v(2.0), _v(3.0, achieved=2.4)], target=0.99)
    assert (fit.low_rps, fit.high_rps, fit.monotone) == (2.0, 3.0, False)
    everything_passes = fit_ladder([_v(1.0), _v(2.0)], target=0.99)
    assert (everything_passes.lambda_max_rps, everything_passes.low_rps, everything_passes.high_rps) == (
        None, 2.0, None,
    )  # fmt: skip
    nothing_passes = fit_ladder([_v(1.0, achieved=0.5), _v(2.0, achieved=0.5)], target=0.99)
    assert (nothing_passes.low_rps, nothing_passes.high_rps, nothing_passes.bracketed) == (None, 1.0, False)


def test_the_gain_interval_is_every_ratio_the_two_brackets_allow():
    a = fit_ladder([_v(2.7), _v(3.15), _v(3.6, achieved=3.2)], target=0.99)
    b = fit_ladder([_v(1.6), _v(1.9), _v(2.2, achieved=1.95)], target=0.99)
    g = gain(a, b)
    assert g["value"] == pytest.approx((3.2 / 0.97) / (1.95 / 0.97))
    assert (g["ci_low"], g["ci_high"]) == (pytest.approx(3.15 / 2.2), pytest.approx(3.6 / 1.9))
    assert gain(a, fit_ladder([_v(1.6), _v(1.9)], target=0.99)) is None  # b not bracketed


def _ladder_scenario(tmp_path: Path) -> Path:
    """The case study at half size with two topologies, prompts capped at 32K, 256-token outputs and a
    20 s TTFT bound (a shorter search), at speed-up 8: a rung of 160 model seconds takes 20 s, and the
    emulator's load stays light enough for the lowest rung to keep up on a busy machine."""
    text = CASE_STUDY.read_text().split("[bench]")[0]
    text = re.sub(r"\n\[topologies\.naive\][^\[]*", "\n", text)
    for old, new in (
        ("max_tokens = 131072", "max_tokens = 32768"),
        ("output_tokens = 1024", "output_tokens = 256"),
        ("[slo]\n", "[slo]\nttft_s = 20\n"),
        ("local_instances = 8   # PD-P", "local_instances = 4   # PD-P"),
        ("remote_instances = 4  # PrfaaS", "remote_instances = 2  # PrfaaS"),
        ("local_instances = 12", "local_instances = 6"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "ladder.toml"
    path.write_text(
        text + "[bench]\nspeedup = 8\nreplay_requests = 20\ncapacity_requests = 200\n"
        "ladder_shares = [0.6, 1.0, 1.4]\nladder_span_s = 160\n"
    )
    return path


@pytest.mark.root
@pytest.mark.slow
def test_the_ladder_measured_over_http_brackets_lambda_max_and_the_gain(root, tmp_path):
    from harness.analysis.runs import load_run
    from harness.analysis.summary import Slo
    from harness.bench import run_bench
    from harness.serving.stability import judge_probe

    result = run_bench(
        _ladder_scenario(tmp_path), out_root=tmp_path / "out", say=lambda _: None, warn=lambda _: None,
        progress=False, prefix=P("lad"),
    )  # fmt: skip
    lad = json.loads((result.out_dir / "analysis.json").read_text())["capacity_ladder"]
    assert json.loads((result.out_dir / "capacity_ladder.json").read_text()) == lad  # what analyze re-reads
    target = lad["target"]
    slo = Slo(ttft_s=20.0, tpot_s=0.025, attainment=0.99)  # the scenario's [slo]
    assert target == slo.attainment
    fits = {}
    for name, entry in lad["sources"]["replay"].items():
        rungs = sorted(entry["rungs"], key=lambda r: r["rate_rps"])
        assert [r["share"] for r in rungs] == [0.6, 1.0, 1.4], name
        # The rungs are the runs on disk: each rung's own replay run, re-judged from its records.
        verdicts, measured = [], []
        for r in rungs:
            run = load_run(result.out_dir / "ladder" / f"{name}-x{r['share']:g}")
            assert run.meta["topologies"] == [name] and run.meta["ladder"]["rate_rps"] == r["rate_rps"]
            v = judge_probe(run.records, r["rate_rps"], slo)
            assert (v.passed, v.attainment, v.achieved_rps) == (
                r["passed"],
                r["attainment"],
                r["achieved_rps"],
            )
            verdicts.append(v)
            measured.append((r["attainment"], (run.meta.get("validity") or {}).get("verdict") == "valid"))
        # SLO attainment does not rise with the offered rate, beyond noise, over the rungs whose replay
        # is a measurement: beside two CPU hogs one rung's client fell behind its schedule (attainment
        # 0.875, 1.0, 0.35, the first rung saturated), and that rung's own verdict said so.
        att = [a for a, valid in measured if valid]
        assert all(b <= a + 0.05 for a, b in itertools.pairwise(att)), (name, measured)
        fit = fit_ladder(verdicts, target)
        fits[name] = fit
        assert fit.lambda_max_rps == entry["lambda_max_rps"] and fit.bracketed, (name, entry)
        # Λ_max lies between the rungs that bracket it: the one below passed, the one above failed.
        lo, hi = (next(r for r in rungs if r["rate_rps"] == x) for x in (fit.low_rps, fit.high_rps))
        assert lo["passed"] and not hi["passed"] and lo["rate_rps"] < hi["rate_rps"]
        assert lo["rate_rps"] <= fit.lambda_max_rps <= hi["rate_rps"]
        # Below Λ_max the deployment completes what it is offered.
        for r in rungs:
            if r["rate_rps"] < fit.lambda_max_rps and r["passed"]:
                assert r["achieved_rps"] / r["offered_rps"] == pytest.approx(1.0, abs=0.1), (name, r)
        assert any(r["rate_rps"] < fit.lambda_max_rps for r in rungs)  # the 0.6 rung at least
    # The gain and its interval come from prfaas's and homogeneous's own brackets.
    g = lad["gain"]["prfaas_vs_homogeneous"]["replay_ladder"]
    p, h = fits["prfaas"], fits["homogeneous"]
    assert g["value"] == pytest.approx(p.lambda_max_rps / h.lambda_max_rps)
    assert (g["ci_low"], g["ci_high"]) == (
        pytest.approx(p.low_rps / h.high_rps), pytest.approx(p.high_rps / h.low_rps),
    )  # fmt: skip
    assert g["ci_low"] <= g["value"] <= g["ci_high"]
    simulated = lad["lambda_max"]["prfaas"]["simulate"] / lad["lambda_max"]["homogeneous"]["simulate"]
    assert lad["gain"]["prfaas_vs_homogeneous"]["simulate"] == pytest.approx(simulated)
    # The headline says it once per topology, and the gain only when every replay rung was valid.
    assert sum(line.startswith("Λ_max prfaas (req/s): plan ") for line in result.headline) == 1
    (line,) = [x for x in result.headline if x.startswith("replay gain prfaas vs homogeneous: ")]
    if lad["validity"] == "valid":
        assert f"{g['value']:.2f}× [{g['ci_low']:.2f}–{g['ci_high']:.2f}]" in line
    else:
        assert lad["validity"].startswith("invalid: ") and "not a finding" in line
