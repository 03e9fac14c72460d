"""``analyze --export llm-d``: llm-d's benchmark report v0.2.1, validated against the JSON Schema llm-d
publishes (tests/data/llmd_benchmark_report_v0_2_1.schema.json, from llm-d/llm-d-benchmark; see
tests/data/README.md), and its figures against our own analysis of the same records."""

from __future__ import annotations

import json

import jsonschema
import pytest
from click.testing import CliRunner
from conftest import DATA
from synthetic_runs import SyntheticTopology, write_synthetic_run

from harness.cli import main

SCHEMA = json.loads((DATA / "llmd_benchmark_report_v0_2_1.schema.json").read_text())
VLLM_FILE = DATA / "vllm_bench_serve_fake_server.json"
# The unit categories llm-d's pydantic model enforces beyond the JSON Schema (schema_v0_2.py check_units).
UNITS = {
    ("latency", "time_to_first_token"): {"ms", "s"},
    ("latency", "request_latency"): {"ms", "s"},
    ("latency", "time_per_output_token"): {"ms/token", "s/token"},
    ("latency", "inter_token_latency"): {"ms/token", "s/token"},
    ("latency", "normalized_time_per_output_token"): {"ms/token", "s/token"},
    ("requests", "input_length"): {"count", "pixels"},
    ("requests", "output_length"): {"count", "pixels"},
    ("throughput", "input_token_rate"): {"tokens/s"},
    ("throughput", "output_token_rate"): {"tokens/s"},
    ("throughput", "total_token_rate"): {"tokens/s"},
    ("throughput", "request_rate"): {"queries/s"},
}


def _export(tmp_path, *runs: str) -> tuple[list[dict], dict]:
    out = tmp_path / "llmd"
    res = CliRunner().invoke(
        main, ["analyze", *runs, "--json", "--export", "llm-d", "--export-dir", str(out)]
    )
    assert res.exit_code == 0, res.output
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.llm-d.json"))], json.loads(res.stdout)


def _validate(report: dict) -> None:
    jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker()).validate(report)
    aggregate = report["results"]["request_performance"]["aggregate"]
    for (group, name), allowed in UNITS.items():
        if name in aggregate[group]:
            assert aggregate[group][name]["units"] in allowed, (group, name)


def test_every_topology_of_a_run_validates_and_carries_our_figures(tmp_path):
    topos = {"homogeneous": SyntheticTopology(fail_share=0.05), "prfaas": SyntheticTopology(remote_share=0.5)}
    meta = {
        "config": {"load": {"arrival": "poisson", "rate_rps": 2.0}},
        "started_at": 1.7e9,
        "finished_at": 1.7e9 + 120,
    }
    run = write_synthetic_run(tmp_path / "run", topos, n=80, source="replay", meta=meta)
    reports, analysis = _export(tmp_path, str(run))
    assert [r["version"] for r in reports] == ["0.2.1", "0.2.1"]
    for report in reports:
        _validate(report)
        topology = report["run"]["uid"].rsplit("/", 1)[1]
        ours = analysis["topologies"][topology]
        agg = report["results"]["request_performance"]["aggregate"]
        assert agg["requests"]["total"] == ours["requests"] and agg["requests"]["failures"] == ours["failed"]
        assert agg["latency"]["time_to_first_token"]["p50"] == pytest.approx(ours["ttft_p50_s"], rel=1e-12)
        assert agg["latency"]["time_to_first_token"]["p99"] == pytest.approx(ours["ttft_p99_s"], rel=1e-12)
        assert agg["latency"]["time_per_output_token"]["p90"] == pytest.approx(ours["tpot_p90_s"], rel=1e-12)
        assert agg["latency"]["inter_token_latency"]["max"] == pytest.approx(ours["itl_max_s"], rel=1e-12)
        assert agg["throughput"]["request_rate"]["mean"] == pytest.approx(ours["throughput_rps"], rel=1e-12)
        assert agg["throughput"]["output_token_rate"]["mean"] == pytest.approx(ours["output_tps"], rel=1e-12)
        assert report["scenario"]["load"]["standardized"]["rate_qps"] == 2.0
        assert report["run"]["time"]["duration"].startswith("PT")


def test_a_foreign_run_validates_and_a_run_with_no_success_leaves_latencies_out(tmp_path):
    dead = write_synthetic_run(tmp_path / "dead", {"default": SyntheticTopology(fail_share=1.0)}, n=10)
    reports, _ = _export(tmp_path, str(VLLM_FILE), str(dead))
    for report in reports:
        _validate(report)
    by_total = {r["results"]["request_performance"]["aggregate"]["requests"]["total"]: r for r in reports}
    dead_agg = by_total[10]["results"]["request_performance"]["aggregate"]
    # Nothing succeeded: no latency to report. Missing, never a zero.
    assert dead_agg["latency"] == {} and dead_agg["requests"]["failures"] == 10
    assert "time_to_first_token" in by_total[20]["results"]["request_performance"]["aggregate"]["latency"]
    # vLLM's file does not say what output length was asked for: left out, not 0.
    assert "output_seq_len" not in by_total[20]["scenario"]["load"]["standardized"]


def test_the_schema_would_catch_a_wrong_report():
    # The validator is not vacuous: the published schema refuses what llm-d's model refuses.
    with pytest.raises(jsonschema.ValidationError):
        _validate({"version": "0.2.1", "run": {"uid": "x"}, "results": {"request_performance": {"bogus": 1}}})
    with pytest.raises(jsonschema.ValidationError):
        _validate({"version": "0.2.1", "run": {}, "results": {}})
