"""Link faults during a run (workloads/link-fault.toml): simulate through a rate cut and a cut link,
what its records and the dashboard's timelines show, and the same fault replayed over a shaped link."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import net_prefix as P

from harness.analysis import load_bundle
from harness.analysis.figures import latency_over_time, link_utilisation
from harness.records import read_meta, read_records
from harness.scenario import load_scenario
from harness.serving.config import prepare
from harness.serving.run import SimulateRequest, simulate

REPO = Path(__file__).resolve().parent.parent
LINK_FAULT = REPO / "workloads" / "link-fault.toml"
# The scenario's events (model seconds after the first request): KV direction at 5% over [10, 25),
# the link down both ways over [30, 35); 5 ms one way; 100 Gbit/s.
CUT, DOWN, DELAY_S, CUT_GBPS = (10.0, 25.0), (30.0, 35.0), 0.005, 5.0


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    setup = prepare(load_scenario(LINK_FAULT))
    out = tmp_path_factory.mktemp("sim")
    simulate(setup, SimulateRequest(out_dir=out))
    (run,) = out.iterdir()
    calm = tmp_path_factory.mktemp("calm")  # the same requests with no events
    simulate(replace(setup, stack=replace(setup.stack, link_events=())), SimulateRequest(out_dir=calm))
    (calm_run,) = calm.iterdir()
    return run, read_records(run), read_records(calm_run)


def _relative(df: pd.DataFrame) -> pd.DataFrame:
    """Times after the run clock's zero (the first request's scheduled send)."""
    zero = df["scheduled_s"].min()
    cols = ["scheduled_s", "prefill_start_s", "kv_transfer_start_s", "kv_transfer_end_s", "first_token_s"]
    return df.assign(**{c: df[c] - zero for c in cols}, ttft=df["first_token_s"] - df["scheduled_s"])


def check_straddle(df: pd.DataFrame, down: dict[str, tuple[float, float]], *, slack_s: float) -> None:
    """What crosses the link waits for it: a KV transfer under way when the link goes down ends after it
    returns, and a prompt sent to the remote site while it is down starts its prefill after that.
    ``down``: each direction's (down, up) times after the run's zero, as applied; ``slack_s``: how much
    earlier a real network's readings may put it (clocks of different processes; 0 in simulate)."""
    remote = _relative(df[(df["route"] == "remote") & (df["status"] == "ok")])
    kv_down, kv_up = down["remote->local"]
    prompt_down, prompt_up = down["local->remote"]
    margin = DELAY_S + slack_s  # a last byte already on the wire still lands
    crossing = remote[
        (remote["kv_transfer_start_s"] < kv_down) & (remote["kv_transfer_end_s"] > kv_down + margin)
    ]
    arriving = remote[remote["scheduled_s"].between(prompt_down + margin, prompt_up - margin)]
    assert len(crossing) + len(arriving) >= 2, "the run must put work across the cut"
    assert (crossing["kv_transfer_end_s"] >= kv_up + DELAY_S - slack_s).all(), crossing
    assert (arriving["prefill_start_s"] >= prompt_up + DELAY_S - slack_s).all(), arriving
    # TTFT rises: remote requests sent while the link is down wait for it, unlike those before any event.
    before = remote[remote["scheduled_s"] < CUT[0]]["ttft"].median()
    assert arriving["ttft"].median() > before + 0.5 * (DOWN[1] - DOWN[0])


def _down_as_planned() -> dict[str, tuple[float, float]]:
    return {"remote->local": DOWN, "local->remote": DOWN}


def _down_as_applied(changes: list[dict]) -> dict[str, tuple[float, float]]:
    """Each direction's (down, up) times from a replay's meta.json ``link_events.applied`` entries."""
    out = {}
    for direction in ("remote->local", "local->remote"):
        times = [(c["t_s"], "DOWN" in c["spec"]) for c in changes if c["direction"] == direction]
        start = next(i for i, (_, is_down) in enumerate(times) if is_down)
        out[direction] = (times[start][0], times[start + 1][0])
    return out


def _lost_share(changes: list[dict]) -> float:
    """The largest share of a planned state that a late change cost, from meta.json's applied entries in
    the scenario's planned order (rate cut 10–25 s, then the cut 30–35 s both ways)."""
    planned = [10, 25, 30, 30, 35, 35]
    lost = 0.0
    for i, (t, c) in enumerate(zip(planned, changes, strict=True)):
        later = [
            p
            for p, d in zip(planned[i + 1 :], changes[i + 1 :], strict=True)
            if d["direction"] == c["direction"]
        ]
        if later:
            lost = max(lost, (c["t_s"] - t) / (later[0] - t))
    return lost


def test_simulate_shows_the_fault_in_the_transfers_that_cross_it(simulated):
    _, records, _ = simulated
    prfaas = records[records["topology"] == "prfaas"]
    check_straddle(prfaas, _down_as_planned(), slack_s=0.0)
    # A transfer wholly inside the rate cut moves at most the cut rate (5 of 100 Gbit/s).
    rel = _relative(prfaas[prfaas["route"] == "remote"])
    inside = rel[(rel["kv_transfer_start_s"] >= CUT[0]) & (rel["kv_transfer_end_s"] <= CUT[1])]
    assert len(inside) >= 1
    seconds = inside["kv_transfer_end_s"] - inside["kv_transfer_start_s"] - DELAY_S
    assert (inside["kv_bytes"] * 8 / seconds <= CUT_GBPS * 1e9 * (1 + 1e-9)).all()


def test_the_fault_touches_only_what_crosses_the_link(simulated):
    _, records, calm = simulated

    def by_id(df, topology):
        return df[df["topology"] == topology].set_index("request_id").sort_index()

    home, home_calm = by_id(records, "homogeneous"), by_id(calm, "homogeneous")
    cols = ["first_token_s", "last_token_s", "prefill_start_s"]
    pd.testing.assert_frame_equal(home[cols], home_calm[cols])  # never crosses the link
    prfaas, prfaas_calm = by_id(records, "prfaas"), by_id(calm, "prfaas")
    assert (prfaas["first_token_s"] > prfaas_calm["first_token_s"] + 1).sum() >= 5
    # Before the first event the two runs are the same run.
    early = prfaas_calm["first_token_s"] < prfaas_calm["scheduled_s"].min() + CUT[0]
    assert early.sum() >= 5
    pd.testing.assert_series_equal(prfaas["first_token_s"][early], prfaas_calm["first_token_s"][early])


def test_meta_lists_the_events_and_the_timelines_mark_them(simulated):
    run, records, _ = simulated
    meta = read_meta(run)["link_events"]
    assert meta["zero"] == "first-request"
    assert [(e["start_s"], e["end_s"], e["change"]) for e in meta["events"]] == [
        (10.0, 25.0, "rate ×0.05"),
        (30.0, 35.0, "down"),
    ]
    states = [(s["t_s"], s["src"], s["bandwidth_gbps"], s["up"]) for s in meta["applied"]]
    assert states == [
        (10.0, "remote", pytest.approx(5.0), True),
        (25.0, "remote", pytest.approx(100.0), True),
        (30.0, "local", 100.0, False),
        (30.0, "remote", 100.0, False),
        (35.0, "local", 100.0, True),
        (35.0, "remote", 100.0, True),
    ]
    zero = records["scheduled_s"].min()
    bundle = load_bundle([run])
    for fig in (latency_over_time(bundle), link_utilisation(bundle)):
        shapes = fig.to_plotly_json()["layout"]["shapes"]
        rects = sorted((s["x0"], s["x1"]) for s in shapes if s["type"] == "rect")
        assert rects == [
            (pytest.approx(zero + 10, abs=1e-3), pytest.approx(zero + 25, abs=1e-3)),
            (pytest.approx(zero + 30, abs=1e-3), pytest.approx(zero + 35, abs=1e-3)),
        ]
        labels = [a["text"] for a in fig.to_plotly_json()["layout"]["annotations"]]
        assert "remote->local rate ×0.05" in labels and "local->remote/remote->local down" in labels


def test_a_run_that_could_not_apply_its_events_is_not_marked(simulated, tmp_path):
    run, _, _ = simulated
    import json
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["link_events"]["applied"] = None  # e.g. serve's loopback fallback
    (copy / "meta.json").write_text(json.dumps(meta))
    fig = latency_over_time(load_bundle([copy]))
    assert not fig.to_plotly_json()["layout"].get("shapes")
    assert np.isfinite(read_records(copy)["scheduled_s"]).all()


# ---------------------------------------------------------------------------------------------- over a shaped link
def _small(tmp_path: Path) -> Path:
    """The link-fault scenario with a bench small enough for a test (60 requests, speed-up 10)."""
    text = LINK_FAULT.read_text().split("[bench]")[0]
    path = tmp_path / "link-fault-small.toml"
    path.write_text(
        text + "[bench]\nspeedup = 10\nreplay_rate_rps = 1.6\nreplay_requests = 60\ncapacity_requests = 200\n"
    )
    return path


@pytest.mark.root
@pytest.mark.slow
def test_bench_replays_the_fault_over_the_shaped_link_as_simulate_does(root, tmp_path):
    import json
    import os

    from click.testing import CliRunner

    from harness.cli import main

    args = ["--out", str(tmp_path / "out"), "--quiet", "--prefix", P("fl"), "--no-ladder"]
    res = CliRunner().invoke(main, ["bench", str(_small(tmp_path)), *args])
    assert res.exit_code == 0, res.output
    (out,) = (tmp_path / "out").iterdir()
    replayed = read_records(out / "replay")
    scale = read_meta(out / "replay")["time_scale"]
    replayed[[c for c in replayed.columns if c.endswith("_s") and replayed[c].dtype.kind == "f"]] *= scale
    simulated = read_records(out / "simulate")
    meta = read_meta(out / "replay")["link_events"]
    check_straddle(simulated[simulated["topology"] == "prfaas"], _down_as_planned(), slack_s=0.0)
    # A change that lands late shortens the state it begins (CI once applied the 5 s cut 5.15 s late: it
    # lasted 0.15 s): the verdict says so beyond 10% of it, and then the run is not the planned
    # fault. Otherwise the replay is judged against the link as it really changed, with 0.05 model s for
    # clock readings across processes.
    verdict = read_meta(out / "replay")["validity"]["by_topology"]["prfaas"]
    lost = _lost_share(meta["applied"]["prfaas"])
    if "link change" in verdict:
        assert lost > 0.1, verdict
    else:
        assert lost <= 0.1 + 1e-6, (verdict, meta["applied"]["prfaas"])
        applied = _down_as_applied(meta["applied"]["prfaas"])
        check_straddle(replayed[replayed["topology"] == "prfaas"], applied, slack_s=0.05)

    # Each topology met the fault from its own zero, every change in its planned order and never before
    # its planned time (how late depends on the machine's load: meta.json records it).
    assert meta["zero"] == "arm" and sorted(meta["applied"]) == ["homogeneous", "prfaas"]
    for changes in meta["applied"].values():
        planned = [10, 25, 30, 30, 35, 35]
        kv, prompt = "remote->local", "local->remote"
        assert [c["direction"] for c in changes] == [kv, kv, prompt, kv, prompt, kv]
        assert all(p <= c["t_s"] for p, c in zip(planned, changes, strict=True)), changes
    # The dashboard marks the events on the timelines of both runs, each from its own zero.
    zeros = sorted({records["scheduled_s"].min() for records in (simulated, replayed)})
    fig = latency_over_time(load_bundle([out]))
    rects = sorted((s["x0"], s["x1"]) for s in fig.to_plotly_json()["layout"]["shapes"])
    expected = sorted((round(z + a, 3), round(z + b, 3)) for z in zeros for a, b in (CUT, DOWN))
    assert rects == expected
    assert (out / "report.html").stat().st_size > 1_000_000
    assert json.loads((out / "simulate" / "meta.json").read_text())["link_events"]["events"] == meta["events"]
    leftover = (
        [n for n in os.listdir("/run/netns") if n.startswith(P("fl"))] if Path("/run/netns").is_dir() else []
    )
    assert leftover == []


@pytest.mark.root
def test_serve_starts_the_events_at_the_first_request(root, tmp_path):
    import json
    import time
    import urllib.request

    from harness.emulation.clusters import EmulatedClusters

    with EmulatedClusters(_small(tmp_path), speedup=10, topologies=["prfaas"], prefix=P("ff")) as c:
        assert c.link_events()["applied"] == {}  # serving, but the run clock has not started
        body = {"model": c.model, "prompt": "w " * 500, "max_tokens": 2}
        req = urllib.request.Request(
            c.urls["prfaas"] + "/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        sent = time.monotonic()
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.status == 200
        deadline = sent + 120  # a safety net against a hang, far beyond any machine's lag
        while not c.link_events()["applied"].get("serve"):  # the rate cut: 10 model s after the zero
            c.check()
            assert time.monotonic() < deadline, "the first request never started the link events"
            time.sleep(0.05)
        seen = time.monotonic()
        first = c.link_events()["applied"]["serve"][0]
    assert first["direction"] == "remote->local" and first["spec"].startswith("40Mbit")
    assert first["t_s"] >= 10.0
    assert seen - sent >= 10.0 / 10  # the zero was not before the request was sent


def test_serve_on_loopback_says_it_cannot_apply_the_events(tmp_path):
    from harness.emulation.clusters import EmulatedClusters

    with EmulatedClusters(_small(tmp_path), speedup=10, topologies=["prfaas"], netns=False) as c:
        assert c.backend == "loopback"
        (warning,) = c.warnings
        assert "[[network.events]] are not applied: the loopback fallback" in warning
        meta = c.link_events()
        c.arm_events()  # nothing to change: a no-op, not an error
    assert meta["applied"] is None and len(meta["events"]) == 2
