"""Server telemetry on the client's timeline: replay scrapes each server's /metrics during the run (real
HTTP: the fake server, the emulated clusters on loopback), stores the series beside the records on their
time axis, and the dashboard draws them under the client's latency."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from test_serve_api import _scenario
from threaded_server import ServerThread

from harness.analysis import analyze, load_bundle
from harness.analysis.dashboard import write_report
from harness.analysis.figures import server_timeline
from harness.analysis.telemetry import server_series
from harness.cli import main
from harness.emulation.clusters import EmulatedClusters
from harness.loadgen import Endpoint, ReplayConfig, replay
from harness.loadgen.fakeserver import FakeServer
from harness.loadgen.telemetry import DEFAULT_PATTERNS, NotPrometheus, parse_samples
from harness.records import read_meta, read_records
from harness.traces.frame import Trace

VLLM_TEXT = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 256.0
# HELP vllm:prefix_cache_hits_created Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_created gauge
vllm:prefix_cache_hits_created{engine="0",model_name="m"} 1.79e+09
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="m"} 99.0
"""


def test_parse_keeps_the_listed_families_with_their_labels():
    got = parse_samples(VLLM_TEXT, DEFAULT_PATTERNS)
    labels = json.dumps({"engine": "0", "model_name": "m"}, sort_keys=True)
    assert got == [
        ("vllm:num_requests_running", labels, 3.0),
        ("vllm:prefix_cache_hits_total", labels, 256.0),
    ]  # the creation time and the unlisted generation counter are left out
    assert parse_samples(VLLM_TEXT, ("vllm:generation_tokens",)) == [
        ("vllm:generation_tokens_total", labels, 99.0)
    ]
    assert len(parse_samples(VLLM_TEXT, ("*",))) == 3  # '*' keeps every sample but creation times
    assert parse_samples("other_metric 1\n", DEFAULT_PATTERNS) == []  # Prometheus, nothing listed


@pytest.mark.parametrize("text", ["<html><body>404 page</body></html>", "", '{"running": 3}'])
def test_a_response_that_is_not_prometheus_text_is_refused(text):
    with pytest.raises(NotPrometheus):
        parse_samples(text, DEFAULT_PATTERNS)


def _spaced_trace(n: int, gap_s: float) -> Trace:
    return Trace(
        arrival_s=np.arange(n) * gap_s,
        input_tokens=np.full(n, 32),
        output_tokens=np.full(n, 45),
        hash_values=np.arange(n, dtype=np.int64),
        hash_offsets=np.arange(n + 1, dtype=np.int64),
    )


def test_running_requests_follow_the_records_in_flight(tmp_path):
    """The fake server's running gauge is its in-flight count: at each scrape it equals the requests the
    records say were between send and end, wherever no send or end is near the scrape."""
    out = tmp_path / "run"
    with ServerThread(FakeServer(itl_s=0.05)) as srv:  # 45 tokens: 2.25 s per request, sends 0.5 s apart
        cfg = ReplayConfig(
            endpoints=(Endpoint(name="x", model="m", url=srv.url),), progress=False, scrape_interval_s=0.1
        )
        replay(_spaced_trace(8, 0.5), cfg, out, quiet=True)
    recs = read_records(out)
    series = server_series(pd.read_parquet(out / "server_metrics.parquet"))
    sent, end = recs["sent_s"].to_numpy(), recs["end_s"].to_numpy()
    events = np.concatenate([sent, end])
    checked = 0
    for t, running in zip(series["time_s"], series["running"], strict=True):
        if np.min(np.abs(events - t)) < 0.08:
            continue  # a send or an end too close to the scrape to say which side it fell
        assert running == np.sum((sent < t) & (end > t)), t
        checked += 1
    assert checked >= 3
    assert series["running"].max() >= 4  # four or five requests overlap mid-run
    last = series.iloc[-1]
    assert last["time_s"] > end.max() and last["running"] == 0 == last["waiting"]  # the scrape after the run
    meta = read_meta(out)
    assert meta["summaries"]["x"]["server_metrics"][srv.url]["warning"] is None


def test_a_server_without_metrics_is_one_warning_and_no_series(tmp_path, capsys):
    out = tmp_path / "run"
    with ServerThread(FakeServer(metrics=False)) as srv:
        cfg = ReplayConfig(endpoints=(Endpoint(name="x", model="m", url=srv.url),), progress=False)
        result = replay(_spaced_trace(3, 0.3), cfg, out, quiet=True)
    assert result.summaries["x"]["failed"] == 0
    scraped = read_meta(out)["summaries"]["x"]["server_metrics"][srv.url]
    assert scraped["scrapes"] == 0 and "HTTP 404" in scraped["warning"]
    assert capsys.readouterr().err.count("/metrics: HTTP 404") == 1
    assert not (out / "server_metrics.parquet").exists()


def test_scrape_interval_flag_and_scenario_key(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text(
        "".join(
            json.dumps({"timestamp": 100 * i, "input_length": 20, "output_length": 30, "hash_ids": [i]})
            + "\n"
            for i in range(3)
        )
    )
    with ServerThread(FakeServer(itl_s=0.02)) as srv:
        base = ["replay", "--endpoint", srv.url, "--model", "m", "--trace", str(trace), "--quiet"]
        off = CliRunner().invoke(main, [*base, "--scrape-interval", "0", "--out", str(tmp_path / "off")])
        assert off.exit_code == 0, off.output
        assert not (tmp_path / "off" / "server_metrics.jsonl").exists()
        bad = CliRunner().invoke(main, [*base, "--scrape-interval", "-1", "--out", str(tmp_path / "bad")])
        assert bad.exit_code == 2 and "--scrape-interval" in bad.output
        scenario = tmp_path / "s.toml"
        scenario.write_text(
            'name = "x"\n[replay]\nscrape_interval_s = 0.1\nscrape_metrics = ["vllm:num_requests_running"]\n'
        )
        res = CliRunner().invoke(main, [*base, "--scenario", str(scenario), "--out", str(tmp_path / "s")])
        assert res.exit_code == 0, res.output
    config = read_meta(tmp_path / "s")["config"]
    assert config["scrape_interval_s"] == 0.1 and config["scrape_metrics"] == ["vllm:num_requests_running"]
    kept = pd.read_parquet(tmp_path / "s" / "server_metrics.parquet")
    assert set(kept["metric"]) == {"vllm:num_requests_running"}
    # 0.1 s apart over a run of about 0.8 s: several scrapes, not one per 0.5 s
    assert kept["time_s"].nunique() >= 5
    scenario.write_text('name = "x"\n[replay]\nscrape_interval_s = -2\n')
    res = CliRunner().invoke(main, [*base, "--scenario", str(scenario), "--out", str(tmp_path / "s2")])
    assert res.exit_code == 2 and "scrape_interval_s" in res.output


# ---------------------------------------------------------------------------- the emulated clusters
@pytest.fixture(scope="module")
def clusters(tmp_path_factory):
    path = _scenario(tmp_path_factory.mktemp("telemetry"), "speedup = 20\nkv_rate_mbit = 800\n")
    with EmulatedClusters(path, netns=False) as c:
        yield c


def _shared_trace(n: int, gap_s: float) -> Trace:
    # Every request shares its first two 512-token blocks, and the first is those two blocks alone: the
    # model is a hybrid, whose hit must end where a linear state was saved (a prompt's last full block),
    # so the cache hits from the second request on.
    blocks = [np.array([0, 1], dtype=np.int64)] + [
        np.array([0, 1, 100 + i], dtype=np.int64) for i in range(1, n)
    ]
    return Trace(
        arrival_s=np.arange(n) * gap_s,
        input_tokens=np.array([512 * len(b) for b in blocks]),
        output_tokens=np.full(n, 1500),
        hash_values=np.concatenate(blocks),
        hash_offsets=np.concatenate(([0], np.cumsum([len(b) for b in blocks]))).astype(np.int64),
    )


def test_emulator_replay_has_vllm_series_on_the_records_time_axis(clusters, tmp_path):
    out = tmp_path / "emu"
    ep = Endpoint(name="homogeneous", model=clusters.model, url=clusters.urls["homogeneous"])
    cfg = ReplayConfig(
        endpoints=(ep,), progress=False, site_urls=tuple(clusters.host_urls.values()),
        scrape_interval_s=0.2, meta_extra={"time_scale": 20},
    )  # fmt: skip
    replay(_shared_trace(12, 0.15), cfg, out, quiet=True)
    raw = pd.read_parquet(out / "server_metrics.parquet")
    names = set(raw["metric"])
    assert {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
            "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"} <= names  # fmt: skip
    assert {json.loads(x)["topology"] for x in raw["labels"] if "topology" in json.loads(x)} == {
        "homogeneous",
        "prfaas",
        "naive",
    }  # every topology a site serves is exposed, each with its label
    recs = read_records(out)
    series = server_series(raw)
    assert set(series["topology"]) == {"homogeneous"}
    first, last = recs["first_token_s"].to_numpy(), recs["last_token_s"].to_numpy()
    decoding_checked = 0
    for _, row in series.iterrows():
        t = row["time_s"]
        decoding = np.sum((first < t - 0.05) & (last > t + 0.05))  # surely between first and last token
        if decoding:
            assert row["running"] >= 1 and row["kv_usage"] > 0, row
            decoding_checked += 1
    assert decoding_checked >= 2
    end = series.iloc[-1]
    assert end["time_s"] > last.max() and end["running"] == end["waiting"] == 0 and end["kv_usage"] == 0
    # The prefix-cache counters say what the records say: the run started from a reset cache, so its
    # hits are the cached tokens the responses reported, and its queries all the prompt tokens looked up.
    assert end["prefix_hits"] == recs["cached_tokens"].sum() > 0
    assert end["prefix_queries"] >= recs["prompt_tokens_server"].sum() - len(recs)

    # Read in model seconds like the records, and drawn under the client's TTFT in the dashboard.
    bundle = load_bundle([out])
    run = bundle.runs[0]
    assert run.server_metrics["time_s"].max() == pytest.approx(raw["time_s"].max() * 20)
    fig = server_timeline(bundle)
    rows = {t.yaxis for t in fig.data}
    assert rows == {"y", "y2", "y3"} and len([t for t in fig.data if t.showlegend]) == 1
    html = write_report(bundle, analyze(bundle, n_boot=50), tmp_path / "report.html").read_text()
    assert 'id="server-timeline"' in html
    # Renamed (analyze --name), the run keeps its own topology's samples under the new name.
    renamed = server_series(load_bundle([out], name="emu").runs[0].server_metrics)
    own = server_series(run.server_metrics)
    assert set(renamed["topology"]) == {"emu"}
    assert renamed["running"].tolist() == own["running"].tolist()


def test_server_series_adds_servers_averages_kv_and_keeps_the_replayed_topology():
    def row(server, metric, value, **labels):
        return {"time_s": 1.0, "topology": "prfaas", "server": server, "metric": metric,
                "labels": json.dumps(labels, sort_keys=True), "value": value}  # fmt: skip

    raw = pd.DataFrame([
        # a PD pair behind one endpoint: vLLM prefill and decode servers
        row("p", "vllm:num_requests_running", 2.0, engine="0"), row("d", "vllm:num_requests_running", 3.0, engine="0"),
        row("p", "vllm:kv_cache_usage_perc", 0.2, engine="0"), row("d", "vllm:kv_cache_usage_perc", 0.4, engine="0"),
        row("d", "sglang:num_queue_reqs", 4.0),  # another engine's name for the same quantity
        # an emulated site serving two topologies: the other one's samples are not this run's
        row("s", "vllm:num_requests_waiting", 1.0, topology="prfaas", site="local"),
        row("s", "vllm:num_requests_waiting", 7.0, topology="naive", site="local"),
        row("s", "vllm:generation_tokens_total", 99.0),  # kept by --scrape-metric, no quantity
    ])  # fmt: skip
    (got,) = server_series(raw).to_dict("records")
    assert got == {
        "topology": "prfaas",
        "time_s": 1.0,
        "running": 5.0,
        "waiting": 5.0,
        "kv_usage": pytest.approx(0.3),
    }
