"""`compare`: a 3% regression passes a 5% bound, a 10% one fails with exit 1; directions are right."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from synthetic_runs import SyntheticTopology, synthetic_records

from harness.analysis.regression import check_regression, parse_bound
from harness.cli import main
from harness.records import RunWriter

TIME_FIELDS = ("scheduled_s", "sent_s", "first_byte_s", "first_token_s", "last_token_s", "prefill_start_s",
               "prefill_end_s", "kv_transfer_start_s", "kv_transfer_end_s")  # fmt: skip


def _run(path: Path, slowdown: float = 1.0, topologies=("homogeneous", "prfaas")) -> Path:
    """A run whose every timestamp is ``slowdown`` × the reference one: latencies scale by it exactly,
    throughput by 1/slowdown."""
    with RunWriter(path, {"run_id": path.name, "source": "simulate"}) as w:
        for k, name in enumerate(topologies):
            for r in synthetic_records(path.name, name, SyntheticTopology(rate_rps=2.0 + k), 120, seed=k):
                changes = {f: getattr(r, f) * slowdown for f in TIME_FIELDS if getattr(r, f) is not None}
                w.write(replace(r, itl_s=[x * slowdown for x in r.itl_s], **changes))
    return path


def _compare(*args: str):
    return CliRunner().invoke(main, ["compare", *args])


def test_three_percent_passes_ten_percent_fails(tmp_path):
    base = _run(tmp_path / "base")
    ok = _compare(str(base), str(_run(tmp_path / "slow3", 1.03)), "--max-regression", "5%")
    assert ok.exit_code == 0, ok.output
    assert "PASS" in ok.output
    bad = _compare(str(base), str(_run(tmp_path / "slow10", 1.10)), "--max-regression", "5%", "--json")
    assert bad.exit_code == 1, bad.output
    report = json.loads(bad.output)
    assert report["passed"] is False
    worst = {(c["topology"], c["metric"]): c for c in report["checks"]}
    # Every latency percentile is exactly 10% worse; throughput is 1 − 1/1.1 = 9.09% lower.
    assert worst[("prfaas", "ttft_p90_s")]["worse_by"] == pytest.approx(0.10)
    assert worst[("prfaas", "throughput_rps")]["worse_by"] == pytest.approx(1 - 1 / 1.1)
    assert worst[("prfaas", "throughput_rps")]["regressed"]


def test_improvement_is_not_a_regression(tmp_path):
    res = _compare(str(_run(tmp_path / "base")), str(_run(tmp_path / "fast", 0.8)), "--max-regression", "5%")
    assert res.exit_code == 0, res.output


def test_missing_topology_fails_and_markdown_is_written(tmp_path):
    md = tmp_path / "comment.md"
    res = _compare(str(_run(tmp_path / "base")), str(_run(tmp_path / "cur", topologies=("prfaas",))),
                   "--markdown", str(md))  # fmt: skip
    assert res.exit_code == 1
    text = md.read_text()
    assert "FAIL" in text and "missing topologies: homogeneous" in text
    assert "| prfaas | throughput_rps |" in text


def test_saved_analyze_json_is_accepted(tmp_path):
    base = _run(tmp_path / "base")
    saved = tmp_path / "base.json"
    out = CliRunner().invoke(main, ["analyze", str(base), "--json"])
    saved.write_text(out.output)
    assert _compare(str(saved), str(_run(tmp_path / "same")), "--max-regression", "1%").exit_code == 0


def _strict_json(text: str):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_json_output_is_standard_json_for_a_change_from_zero(tmp_path):
    # Regression: a metric rising from 0 has worse_by = inf, which --json printed as `Infinity`.
    base, cur = tmp_path / "base.json", tmp_path / "cur.json"
    base.write_text(json.dumps(_result(e2e_p50_s=0.0)))
    cur.write_text(json.dumps(_result(e2e_p50_s=0.1)))
    res = _compare(str(base), str(cur), "--json")
    assert res.exit_code == 1, res.output
    check = next(c for c in _strict_json(res.output)["checks"] if c["metric"] == "e2e_p50_s")
    assert check["worse_by"] is None and check["regressed"] is True


def _result(**metrics):
    return {"topologies": {"t": {"requests": 100, "failed": 0, **metrics}}}


@pytest.mark.parametrize(
    ("metric", "before", "after", "regressed"),
    [
        ("throughput_rps", 10.0, 11.0, False), ("throughput_rps", 10.0, 9.0, True),
        ("goodput_rps", 10.0, 9.6, False), ("ttft_p90_s", 2.0, 1.0, False), ("ttft_p90_s", 2.0, 2.2, True),
        ("tpot_p99_s", 0.025, 0.0262, False), ("e2e_p50_s", 0.0, 0.1, True), ("e2e_p50_s", 10.0, 10.5, False),
    ],
)  # fmt: skip
def test_metric_directions(metric, before, after, regressed):
    report = check_regression(_result(**{metric: before}), _result(**{metric: after}), 0.05)
    assert [c.regressed for c in report.checks if c.metric == metric] == [regressed]


def test_failed_share_is_compared_in_points():
    base = {"topologies": {"t": {"requests": 100, "failed": 0}}}
    three = {"topologies": {"t": {"requests": 100, "failed": 3}}}
    six = {"topologies": {"t": {"requests": 100, "failed": 6}}}
    assert not check_regression(base, three, 0.05).failed
    assert check_regression(base, six, 0.05).failed


def test_bound_parsing_and_bad_input(tmp_path):
    assert parse_bound("5%") == pytest.approx(0.05)
    assert parse_bound("0.05") == pytest.approx(0.05)
    res = _compare(str(tmp_path), str(tmp_path), "--max-regression", "five")
    assert res.exit_code == 2 and "max-regression" in res.output
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    res = _compare(str(junk), str(junk))
    assert res.exit_code == 2 and "junk.json" in res.output


def test_unwritable_markdown_is_one_line(tmp_path):
    # Regression: --markdown under a regular file ended in a FileNotFoundError traceback.
    a, b = _run(tmp_path / "a"), _run(tmp_path / "b")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = _compare(str(a), str(b), "--markdown", str(blocker / "check.md"))
    assert res.exit_code == 2 and f"{blocker / 'check.md'}: cannot write" in res.output
    assert "Traceback" not in res.output and blocker.read_text() == "x"
