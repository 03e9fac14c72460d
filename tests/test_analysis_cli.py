"""`analyze` and `report` on run directories written through RunWriter."""

from __future__ import annotations

import csv
import json
import re

import pandas as pd
import pytest
from click.testing import CliRunner
from synthetic_runs import SyntheticTopology, write_synthetic_plan, write_synthetic_run

from harness.analysis.runs import tidy_timeseries
from harness.analysis.tables import headline
from harness.cli import main
from harness.records import RequestRecord, RunWriter

# Issues 4 and 6 fix these per-topology keys of `analyze --json`.
REQUIRED = {
    "requests", "failed", "throughput_rps", "goodput_rps", "ttft_p50_s", "ttft_p90_s", "tpot_p50_s",
    "e2e_p50_s", "send_lag_p99_s", "ttft_queue_p50_s", "ttft_prefill_p50_s", "ttft_transfer_p50_s",
    "kv_bytes_total", "offload_share",
}  # fmt: skip


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def _one_endpoint_run(path, topology="default"):
    # What replay writes against one endpoint: 10 requests 1 s apart, TTFT 0.5 s, 4 tokens 0.1 s apart.
    with RunWriter(path, {"source": "replay"}) as w:
        for i in range(10):
            w.write(RequestRecord(
                run_id="r", topology=topology, request_id=str(i), trace_row=i, scheduled_s=float(i),
                sent_s=i + 0.001 * i, first_token_s=i + 0.5, last_token_s=i + 0.8, itl_s=[0.1] * 3,
                output_tokens_received=4, source="replay",
            ))  # fmt: skip
    return path


def test_single_endpoint_json_by_hand(tmp_path):
    res = _invoke("analyze", str(_one_endpoint_run(tmp_path / "r")), "--json", "--ttft-slo", "0.6")
    assert res.exit_code == 0, res.output
    t = json.loads(res.output)["topologies"]["default"]
    assert set(t) >= REQUIRED
    assert t["requests"] == 10 and t["failed"] == 0
    assert t["throughput_rps"] == pytest.approx(10 / 9.8)  # last token at 9.8, first scheduled at 0
    assert t["goodput_rps"] == pytest.approx(10 / 9.8)
    assert t["ttft_p50_s"] == pytest.approx(0.5) and t["tpot_p50_s"] == pytest.approx(0.1)
    assert t["e2e_p50_s"] == pytest.approx(0.8)
    # Lags 0, 1, ..., 9 ms; p99 sits at rank 0.99 × 9 = 8.91 (linear interpolation): 8.91 ms.
    assert t["send_lag_p99_s"] == pytest.approx(0.00891)
    assert t["ttft_queue_p50_s"] is None and t["offload_share"] is None  # not reported: null, not 0


def test_tight_slo_cuts_goodput(tmp_path):
    res = _invoke("analyze", str(_one_endpoint_run(tmp_path / "r")), "--json", "--ttft-slo", "0.4")
    t = json.loads(res.output)["topologies"]["default"]
    assert t["goodput_rps"] == 0.0 and t["throughput_rps"] > 0


def test_name_renames_and_csv(tmp_path):
    out = tmp_path / "a.csv"
    res = _invoke("analyze", str(_one_endpoint_run(tmp_path / "r")), "--name", "prfaas", "--csv", str(out))
    assert res.exit_code == 0, res.output
    assert "prfaas" in res.output
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["key"] for r in rows] == ["prfaas"] and float(rows[0]["ttft_p50_s"]) == pytest.approx(0.5)


def test_comparison_and_side_by_side(tmp_path):
    topos = {"homogeneous": SyntheticTopology(rate_rps=2.0), "prfaas": SyntheticTopology(rate_rps=3.0)}
    write_synthetic_run(tmp_path / "b" / "sim", topos, n=100)
    write_synthetic_run(tmp_path / "b" / "rep", topos, n=100, source="replay", seed=1)
    write_synthetic_plan(tmp_path / "b")
    res = _invoke("analyze", str(tmp_path / "b"), "--json", "--bootstrap", "200")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    # Same topology name from two sources: keys are qualified by source.
    assert set(out["topologies"]) == {
        "simulate/homogeneous",
        "simulate/prfaas",
        "replay/homogeneous",
        "replay/prfaas",
    }
    for source in ("simulate", "replay"):
        rows = out["comparison"][source]["rows"]
        assert out["comparison"][source]["baseline"] == "homogeneous"
        assert rows["homogeneous"]["throughput_rps"]["value"] == pytest.approx(1.0)
        thr = rows["prfaas"]["throughput_rps"]
        assert thr["low"] < thr["value"] < thr["high"] and thr["value"] > 1.2
    assert set(out["side_by_side"]["prfaas"]) == {"plan", "simulate", "replay"}
    assert out["side_by_side"]["prfaas"]["plan"]["lambda_max_rps"] == 3.24
    lines = headline(out)
    assert lines[0] == "plan (Λ_max): prfaas vs homogeneous 1.54×"
    thr = out["comparison"]["replay"]["rows"]["prfaas"]["throughput_rps"]
    assert f"prfaas throughput {thr['value']:.2f}× [{thr['low']:.2f}–{thr['high']:.2f}]" in lines[-1]
    assert [line.split(" ")[0] for line in lines[1:]] == ["simulate", "replay"]


def test_warmup_rows_are_excluded(tmp_path):
    with RunWriter(tmp_path / "r", {}) as w:
        for i, phase in enumerate(["warmup", "measure", "measure", "cooldown"]):
            w.write(RequestRecord(run_id="r", topology="t", request_id=str(i), trace_row=i, scheduled_s=float(i),
                                  first_token_s=i + 0.2, last_token_s=i + 0.3, phase=phase))  # fmt: skip
    t = json.loads(_invoke("analyze", str(tmp_path / "r"), "--json").output)["topologies"]["t"]
    assert t["requests"] == 2 and t["excluded"] == 2
    assert t["throughput_rps"] == pytest.approx(2 / (2.3 - 1.0))


def test_bad_input_is_one_line_exit_2(tmp_path):
    res = _invoke("analyze", str(tmp_path / "nope"))
    assert res.exit_code == 2 and "nope" in res.output and "Traceback" not in res.output
    run = write_synthetic_run(tmp_path / "multi", {"a": SyntheticTopology(), "b": SyntheticTopology()}, n=5)
    res = _invoke("analyze", str(run), "--name", "x")
    assert res.exit_code == 2 and "--name" in res.output
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "meta.json").write_text("{}")
    (tmp_path / "corrupt" / "records.jsonl").write_text('{"run_id": 1}\nnot json\n{}\n')
    res = _invoke("analyze", str(tmp_path / "corrupt"))
    assert res.exit_code == 2 and "records.jsonl" in res.output


def test_bad_field_meta_and_parquet_name_the_place(tmp_path):
    bad = tmp_path / "field"
    bad.mkdir()
    (bad / "meta.json").write_text("{}")
    good = RequestRecord(run_id="r", topology="t", request_id="a", trace_row=0, scheduled_s=0.0).to_dict()
    (bad / "records.jsonl").write_text(
        json.dumps(good) + "\n" + json.dumps({**good, "kv_bytes": "many"}) + "\n"
    )
    res = _invoke("analyze", str(bad))
    assert res.exit_code == 2 and "records.jsonl:2: field 'kv_bytes'" in res.output
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "meta.json").write_text("{oops")
    res = _invoke("analyze", str(tmp_path / "meta"))
    assert res.exit_code == 2 and "meta.json is not valid JSON" in res.output
    (tmp_path / "pq").mkdir()
    (tmp_path / "pq" / "meta.json").write_text("{}")
    (tmp_path / "pq" / "records.parquet").write_text("not parquet")
    res = _invoke("analyze", str(tmp_path / "pq"))
    assert res.exit_code == 2 and "records.parquet" in res.output and "Traceback" not in res.output


def test_report_writes_self_contained_page(tmp_path):
    run = write_synthetic_run(tmp_path / "r", {"homogeneous": SyntheticTopology()}, n=20)
    out = tmp_path / "x" / "report.html"
    res = _invoke("report", str(run), "-o", str(out))
    assert res.exit_code == 0, res.output
    page = out.read_text()
    assert not re.search(r"<script[^>]*\bsrc=", page)  # no script fetched from anywhere: works offline
    # issue 7's ten panels plus measured SLO attainment vs offered rate and the servers' telemetry
    assert "Plotly.newPlot" in page and page.count('class="figure"') == 12
    assert "synthetic-simulate-0" in page  # the header names the run


def test_long_timeseries_is_summed_per_site():
    # The simulator's long form: one row per (time, instance or link, metric).
    long = pd.DataFrame(
        {
            "topology": "prfaas", "t_s": 1.0,
            "entity": ["local-p0", "local-p1", "remote-p0", "remote->local", "local-a", "local-b"],
            "metric": ["prefill_queue"] * 3 + ["link_utilisation", "cache_hit_rate", "cache_hit_rate"],
            "value": [2.0, 3.0, 1.0, 0.5, 0.2, 0.4],
        }
    )  # fmt: skip
    wide = tidy_timeseries(long, "ignored").iloc[0]
    assert wide["time_s"] == 1.0 and wide["topology"] == "prfaas"
    assert wide["prefill_queue local"] == 5.0 and wide["prefill_queue remote"] == 1.0  # queues add up
    assert wide["link_utilisation remote->local"] == 0.5
    assert wide["cache_hit_rate local"] == pytest.approx(0.3)  # rates average
    assert tidy_timeseries(pd.DataFrame({"x": [1.0]}), "t") is None


def test_rate_sweep_gives_measured_lambda_max_and_per_rate_comparison(tmp_path):
    # Per rate: homogeneous misses a 3 s TTFT bound once queueing builds (queue_s grows), prfaas does not.
    topos = {}
    for rate, queue in ((1.0, 0.1), (2.0, 0.5), (3.0, 4.0)):
        topos[f"homogeneous@{rate:g}rps"] = SyntheticTopology(rate_rps=rate, queue_s=queue, jitter=0)
        topos[f"prfaas@{rate:g}rps"] = SyntheticTopology(rate_rps=rate, queue_s=0.1, jitter=0)
    run = write_synthetic_run(
        tmp_path / "sweep", topos, n=40, meta={"slo": {"ttft_s": 3.0, "attainment": 0.99}}
    )
    out = json.loads(_invoke("analyze", str(run), "--json", "--bootstrap", "100").output)
    # TTFT = queue + prefill 1.5 + transfer 0.2 + first token 0.025: 2.225 s at 2 req/s, 5.725 s at 3.
    assert out["lambda_max"]["simulate"]["homogeneous"]["lambda_max_rps"] == 2.0
    assert out["lambda_max"]["simulate"]["prfaas"]["lambda_max_rps"] == 3.0
    assert set(out["comparison"]) == {"simulate@1rps", "simulate@2rps", "simulate@3rps"}
    assert out["comparison"]["simulate@3rps"]["rows"]["prfaas"]["goodput_rps"]["value"] is None  # 0 baseline
    assert out["side_by_side"]["prfaas"]["simulate"] == {"lambda_max_rps": 3.0}


def test_saturated_incomplete_runs_and_warnings_are_reported(tmp_path):
    with pytest.raises(KeyboardInterrupt), RunWriter(tmp_path / "r", {"client_saturated": True}) as w:
        for i in range(3):
            w.write(RequestRecord(run_id="r", topology="t", request_id=str(i), trace_row=i, scheduled_s=float(i),
                                  first_token_s=i + 0.1, last_token_s=i + 0.2,
                                  warning="usage_mismatch:prompt=1030/1024" if i else None))  # fmt: skip
        raise KeyboardInterrupt
    out = json.loads(_invoke("analyze", str(tmp_path / "r"), "--json").output)
    assert out["topologies"]["t"]["warnings"] == 2 and out["topologies"]["t"]["requests"] == 3
    assert out["runs"][0]["complete"] is False and out["runs"][0]["client_saturated"] is True
    assert any("fell behind its schedule" in n for n in out["notes"])
    assert any("incomplete run (interrupted)" in n for n in out["notes"])


def test_json_of_the_wrong_shape_is_one_line_naming_the_place(tmp_path):
    # Regression: a meta.json or records.jsonl line that is valid JSON but not an object, and a
    # plan.json that is a list, ended in AttributeError tracebacks.
    run = _one_endpoint_run(tmp_path / "r")
    (run / "records.parquet").unlink()
    with open(run / "records.jsonl", "a", encoding="utf-8") as fh:
        fh.write("[1, 2]\n")
    res = _invoke("analyze", str(run))
    assert res.exit_code == 2 and "records.jsonl: line 11: a record must be a JSON object" in res.output
    (run / "meta.json").write_text("[1, 2]")
    res = _invoke("analyze", str(run))
    assert res.exit_code == 2 and "meta.json must be a JSON object, got list" in res.output
    good = _one_endpoint_run(tmp_path / "g")
    (good / "plan.json").write_text("[1]")
    res = _invoke("analyze", str(good), "--json")
    assert res.exit_code == 0 and "Traceback" not in res.output
    assert json.loads(res.output)["topologies"]["default"]["requests"] == 10


def test_unwritable_csv_and_report_are_one_line(tmp_path):
    # Regression: analyze --csv and report -o under a regular file ended in tracebacks.
    run = _one_endpoint_run(tmp_path / "r")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for args in (["analyze", str(run), "--csv"], ["report", str(run), "-o"]):
        target = blocker / "out"
        res = _invoke(*args, str(target))
        assert res.exit_code == 2 and res.output.startswith(f"error: {target}: cannot write"), res.output
        assert len(res.output.strip().splitlines()) == 1
