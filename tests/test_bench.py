"""`bench`, the main job: its options, the units it compares in, and one quick run end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import net_prefix as P
from synthetic_runs import SyntheticTopology, write_synthetic_run

from harness.analysis import analyze, load_bundle
from harness.cli import main
from harness.errors import ScenarioError
from harness.records import RequestRecord, RunWriter
from harness.scenario import Scenario

REPO = Path(__file__).resolve().parent.parent
CASE_STUDY = REPO / "workloads" / "paper-case-study.toml"


def _scenario(tmp_path: Path, bench_table: str) -> Scenario:
    from harness.scenario import load_scenario

    path = tmp_path / "s.toml"
    path.write_text(CASE_STUDY.read_text().split("[bench]")[0] + bench_table)
    return load_scenario(path)


def test_bench_spec_reads_its_table_and_the_quick_variant(tmp_path):
    sc = _scenario(tmp_path, "[bench]\nreplay_requests = 100\n[bench.quick]\nreplay_requests = 7\n")
    assert sc.config.bench.resolve(quick=False).replay_requests == 100
    assert sc.config.bench.resolve(quick=True).replay_requests == 7
    # No [bench.quick]: the quick run shrinks on its own.
    sc = _scenario(tmp_path, "[bench]\nreplay_requests = 100\n")
    assert sc.config.bench.resolve(quick=True).replay_requests < 100
    # The capacity ladder: rungs sorted; --quick runs none unless [bench.quick] names its rungs.
    sc = _scenario(tmp_path, "[bench]\nladder_shares = [1.15, 0.85, 1.0]\n")
    assert sc.config.bench.resolve(quick=False).ladder_shares == (0.85, 1.0, 1.15)
    assert sc.config.bench.resolve(quick=True).ladder_shares == ()
    sc = _scenario(tmp_path, "[bench]\n[bench.quick]\nladder_shares = [0.9, 1.2]\nladder_span_s = 60\n")
    quick = sc.config.bench.resolve(quick=True)
    assert (quick.ladder_shares, quick.ladder_span_s) == ((0.9, 1.2), 60.0)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[bench]\nreplay_request = 5\n", "[bench] replay_request: unknown key (known: replay_rate_rps"),
        ("[bench]\nreplay_requests = 0\n", "[bench] replay_requests: must be >= 1, got 0"),
        ("[bench]\nspeedup = -2\n", "[bench] speedup: must be >= 0.01, got -2"),
        ("[bench]\n[bench.quick]\nseed = -1\n", "[bench.quick] seed: must be >= 0, got -1"),
        ("[bench]\nladder_shares = [1, 0]\n", "[bench] ladder_shares[1]: must be > 0, got 0"),
        ("[bench]\nladder_shares = 0.5\n", "[bench] ladder_shares: must be a list, got 0.5"),
        ("[bench]\nladder_span_s = -1\n", "[bench] ladder_span_s: must be > 0, got -1"),
    ],
)
def test_bad_bench_table_names_the_table(tmp_path, table, message):
    with pytest.raises(ScenarioError) as err:
        _scenario(tmp_path, table)
    assert message in str(err.value)


def test_replay_against_a_sped_up_emulator_reads_in_model_seconds(tmp_path):
    # 10 requests 1 s apart (wall), TTFT 0.5 s, 4 tokens 0.1 s apart, against an emulator 4x faster.
    run = tmp_path / "replay"
    with RunWriter(run, {"source": "replay", "time_scale": 4.0}) as w:
        for i in range(10):
            w.write(RequestRecord(
                run_id="r", topology="t", request_id=str(i), trace_row=i, scheduled_s=float(i),
                sent_s=float(i), first_token_s=i + 0.5, last_token_s=i + 0.8, itl_s=[0.1] * 3,
                output_tokens_received=4, prefill_start_s=i + 0.1, prefill_end_s=i + 0.4, kv_bytes=1000,
                source="replay",
            ))  # fmt: skip
    t = analyze(load_bundle([run]))["topologies"]["t"]
    assert t["ttft_p50_s"] == pytest.approx(2.0)  # 0.5 wall s x 4
    assert t["tpot_p50_s"] == pytest.approx(0.4)
    assert t["itl_p50_s"] == pytest.approx(0.4)
    assert t["ttft_prefill_p50_s"] == pytest.approx(1.2)
    assert t["throughput_rps"] == pytest.approx(10 / (9.8 * 4))
    assert t["kv_bytes_total"] == 10_000  # the emulator reports modelled bytes: unscaled


def test_a_lambda_max_search_never_shadows_the_paired_run(tmp_path):
    # Two simulate runs of the same topologies: a Λ_max search (each at its own rate) and a paired run.
    fast, slow = SyntheticTopology(prefill_s=0.5), SyntheticTopology(prefill_s=3.0)
    write_synthetic_run(
        tmp_path / "a-capacity", {"homogeneous": slow, "prfaas": slow}, meta={"find_max_rate": True}
    )
    write_synthetic_run(tmp_path / "b-paired", {"homogeneous": slow, "prfaas": fast})
    result = analyze(load_bundle([tmp_path]))
    assert set(result["comparison"]) == {"simulate", "simulate at Λ_max"}
    paired = result["comparison"]["simulate"]["rows"]["prfaas"]["ttft_p50_s"]["value"]
    assert paired < 0.6  # the paired run's faster prefill, not the search's equal one
    capacity = result["comparison"]["simulate at Λ_max"]["rows"]["prfaas"]["ttft_p50_s"]["value"]
    assert capacity == pytest.approx(1.0, abs=0.15)


@pytest.mark.root
def test_quick_bench_end_to_end(root, tmp_path):
    """The README's main job, small: every stage runs, the report is written, plan/simulate/replay agree."""
    scenario = tmp_path / "bench.toml"
    scenario.write_text(
        CASE_STUDY.read_text().split("[bench]")[0]
        + "[bench]\nspeedup = 4\nreplay_requests = 30\ncapacity_requests = 300\n"
    )
    args = ["--out", str(tmp_path / "out"), "--quiet", "--prefix", P("bt"), "--no-ladder"]  # its own test
    res = CliRunner().invoke(main, ["bench", str(scenario), *args])
    assert res.exit_code == 0, res.output
    (out,) = (tmp_path / "out").iterdir()
    assert (out / "report.html").stat().st_size > 1_000_000  # plotly.js is inlined
    for f in ("plan.json", "plan_sweep_bandwidth.csv", "plan_sweep_threshold.csv", "plan_sweep_split.csv"):
        assert (out / f).is_file(), f
    assert f"report: {out / 'report.html'}" in res.output
    assert "plan (Λ_max): prfaas vs homogeneous 1.56×" in res.output  # the headline closes the output
    assert res.output.count("plan (Λ_max): ") == 1  # and is printed once, not also above the summary

    result = json.loads((out / "analysis.json").read_text())
    side = result["side_by_side"]
    for name in ("prfaas", "homogeneous", "naive"):
        sim, rep = side[name]["simulate"], side[name]["replay"]
        # The same router decides on the same requests in both: the same share goes remote.
        assert rep["offload_share"] == pytest.approx(sim["offload_share"])
        # Latencies agree when the replay could be trusted; otherwise bench must say it could not
        # (issue 12: never an invalid comparison presented as a finding).
        if result["validity"] == "valid":
            assert rep["ttft_p50_s"] == pytest.approx(sim["ttft_p50_s"], rel=0.25), name
        else:
            assert result["validity"].startswith("invalid: ")
            assert "replay (vs homogeneous): invalid: " in res.output
            assert "INVALID RUNS, not a finding" in res.output
    meta = json.loads((out / "replay" / "meta.json").read_text())
    assert meta["complete"] and meta["time_scale"] == 4 and meta["shaping_backend"] != "loopback"
    # Nothing left behind: the bench's namespaces are gone.
    leftover = (
        [n for n in os.listdir("/run/netns") if n.startswith(P("bt"))] if Path("/run/netns").is_dir() else []
    )
    assert leftover == []


@pytest.mark.parametrize(
    ("table", "message"),
    [
        # A bad [bench.quick] stopped only a --quick bench (and was blamed on [bench]).
        ("[bench]\n[bench.quick]\nspeedup = -1\n", "[bench.quick] speedup: must be >= 0.01, got -1"),
        ("[bench]\nquick = 5\n", "[bench.quick]: must be a table, got 5"),
        ("[bench]\nseed = 'x'\n", "[bench] seed: must be an integer, got 'x'"),
        # [network] is read only by stage 4: it used to fail after minutes of planning and simulation.
        ("[bench]\n[network]\nsites = 'local'\n", "[network]"),
    ],
)
def test_bench_cli_rejects_bad_tables_before_any_work(tmp_path, table, message):
    path = tmp_path / "s.toml"
    path.write_text(CASE_STUDY.read_text().split("[network]")[0] + table)
    out = tmp_path / "results"
    res = CliRunner().invoke(main, ["bench", str(path), "--out", str(out)])
    assert res.exit_code == 2 and message in res.output, res.output
    assert res.output.startswith("error: ") and len(res.output.strip().splitlines()) == 1
    assert not out.exists()


def test_bench_without_a_planned_topology_needs_a_rate(tmp_path):
    # Regression: with only colocated topologies the default rate was min() of no Λ_max, a traceback
    # after minutes of simulation.
    head, rest = CASE_STUDY.read_text().split("[topologies.prfaas]")
    path = tmp_path / "colo.toml"
    colo = '[topologies.colo]\nkind = "colocated"\nlocal_instances = 2\n\n'
    path.write_text(head + colo + rest[rest.index("[emulation]") :])
    out = tmp_path / "results"
    res = CliRunner().invoke(main, ["bench", str(path), "--quick", "--out", str(out)])
    assert res.exit_code == 2 and "[bench] replay_rate_rps: must be set" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and not out.exists()


def test_bench_cli_unusable_out_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = CliRunner().invoke(main, ["bench", str(CASE_STUDY), "--out", str(blocker / "sub")])
    assert res.exit_code == 2 and "cannot create the run directory" in res.stderr
    # The case study's knobs that bench overrides are warned about first; the error is one line.
    errors = [line for line in res.stderr.splitlines() if not line.startswith("warning: ")]
    assert len(errors) == 1 and str(blocker / "sub") in errors[0] and errors[0].startswith("error: ")


def test_two_benches_started_in_the_same_second_get_separate_run_directories(tmp_path):
    """The run directory is named by the second a bench starts: a second bench in that second gets
    ``-2`` instead of failing (or writing into the first one's directory)."""
    from harness.bench import _new_run_dir

    first = _new_run_dir(tmp_path, "bench-20261201-120000")
    (first / "records.jsonl").write_text("{}\n")
    second = _new_run_dir(tmp_path, "bench-20261201-120000")
    assert first != second and second.name == "bench-20261201-120000-2"
    assert first.is_dir() and second.is_dir() and not any(second.iterdir())
    assert (first / "records.jsonl").read_text() == "{}\n"
