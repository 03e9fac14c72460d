"""``prfaas-bench sweep``: the sweep file checked whole, point keys, one Parquet row per point written
as it finishes, a failed point recorded, and a killed sweep resumed without redoing a point.

Ray's side (the same rows on Ray as on the local pool) is in ``test_sweep_ray.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.errors import ScenarioError
from harness.model.deployment import deployment_from_scenario
from harness.model.study import plan_deployment
from harness.scenario import load_scenario
from harness.sweep import journal, load_sweep, read_rows
from harness.sweep.spec import apply_overrides

REPO = Path(__file__).resolve().parent.parent
PAPER = REPO / "workloads" / "paper-case-study.toml"


def write_spec(tmp_path: Path, body: str, name: str = "sweep.toml") -> Path:
    path = tmp_path / name
    path.write_text(f'scenario = "{PAPER}"\n{body}')
    return path


def sweep_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """The real command in its own process (a pool of its own, signals of its own)."""
    return subprocess.run(
        [sys.executable, "-m", "harness", "sweep", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


# ---------------------------------------------------------------------------------------------- the file


@pytest.mark.parametrize(
    ("body", "where", "problem"),
    [
        ('run = ["plan"]\n[grid]\n"link.bandwdth_gbps" = [10]\n', "[grid] link.bandwdth_gbps", "unknown key"),
        ('run = ["plan"]\n[grid]\n"link.bandwidth_gbps" = [10, -1]\n', "[grid] link.bandwidth_gbps",
         "= -1: [link] bandwidth_gbps: must be > 0, got -1"),
        ('run = ["plan"]\n[grid]\n"model.preset" = ["no-such-model"]\n', "[grid] model.preset", "no-such-model"),
        ('run = ["plan"]\n[grid]\n"topologies.prfas.threshold_tokens" = [8192]\n',
         "[grid] topologies.prfas.threshold_tokens", "no table 'prfas'"),
        ('run = ["simulate"]\n[grid]\nrate = [1.0, 0]\n', "[grid] rate", "must be > 0, got 0"),
        ('run = ["simulate"]\n[grid]\nrate = [1.0]\nseed = [-1]\n', "[grid] seed", "must be >= 0"),
        ('run = ["plan", "replay"]\n', "run[1]", "must be one of plan, simulate, max-rate"),
        ('run = ["plan"]\nrepeat = 2\n', "repeat", "unknown key"),
        ('run = ["simulate"]\n[grid]\nseed = [0, 1]\n', "point 0 (seed=0)", "simulate needs a rate"),
        ('run = ["plan"]\ntopologies = ["prfaas", "hetero"]\n', "topologies", "unknown topology 'hetero'"),
        ('run = ["plan"]\n[grid]\nseed = [0]\n[[cases]]\nseed = 1\n', "[cases[0]] seed", "also a [grid] axis"),
        ('run = ["simulate"]\n[grid]\nrate = [1.0]\n"topologies.prfaas.n_p" = [3, 0]\n',
         "[grid] topologies.prfaas.n_p", "at least one local prefill instance"),
    ],
)  # fmt: skip
def test_a_bad_sweep_file_is_one_line_naming_the_key(tmp_path, body, where, problem):
    spec = write_spec(tmp_path, body)
    result = CliRunner().invoke(main, ["sweep", str(spec), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {spec}: {where}"), result.stderr
    assert problem in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was written


def test_overrides_reach_nested_tables_and_list_items():
    raw = load_scenario(PAPER).raw
    out = apply_overrides(
        raw,
        [("link.bandwidth_gbps", 25), ("network.links.0.rate_mbit", 400), ("slo.ttft_s", 9.0),
         ("replay.model", "m")],
    )  # fmt: skip
    assert out["link"]["bandwidth_gbps"] == 25 and raw["link"]["bandwidth_gbps"] == 100  # a copy
    assert out["network"]["links"][0]["rate_mbit"] == 400
    assert out["slo"] == {"tpot_ms": 25, "ttft_s": 9.0}
    assert out["replay"] == {"model": "m"}  # a missing top-level table is added
    with pytest.raises(ScenarioError, match="not an index of a list of 1"):
        apply_overrides(raw, [("network.links.1.rate_mbit", 400)])


def test_points_are_the_grid_times_the_cases_with_stable_distinct_keys(tmp_path):
    body = (
        'run = ["plan"]\n[grid]\n"link.bandwidth_gbps" = [10, 100]\nseed = [0, 1, 2]\n'
        '[[cases]]\n"model.preset" = "kimi-1t-hybrid"\n[[cases]]\n"model.preset" = "minimax-m2.5"\n'
    )
    sweep = load_sweep(write_spec(tmp_path, body))
    assert len(sweep.points) == 2 * 3 * 2
    assert len({p.key for p in sweep.points}) == 12
    first = sweep.points[0]
    assert dict(first.overrides) == {"link.bandwidth_gbps": 10, "model.preset": "kimi-1t-hybrid"}
    assert (first.seed, first.rate) == (0, None)
    # The key names the point's content: the axes written in another order give the same keys.
    swapped = (
        'run = ["plan"]\n[grid]\nseed = [0, 1, 2]\n"link.bandwidth_gbps" = [10, 100]\n'
        '[[cases]]\n"model.preset" = "kimi-1t-hybrid"\n[[cases]]\n"model.preset" = "minimax-m2.5"\n'
    )
    again = load_sweep(write_spec(tmp_path, swapped, "swapped.toml"))
    assert {p.key for p in again.points} == {p.key for p in sweep.points}


# ---------------------------------------------------------------------------------------------- running


def test_plan_rows_are_the_planners_own_figures(tmp_path):
    spec = write_spec(tmp_path, 'run = ["plan"]\n[grid]\n"link.bandwidth_gbps" = [5, 100]\n')
    result = CliRunner().invoke(main, ["sweep", str(spec), "--out", str(tmp_path / "out"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(tmp_path / "out" / "sweep.parquet")
    assert list(rows["link.bandwidth_gbps"]) == [5, 100] and set(rows["status"]) == {"ok"}
    at_100 = rows.iloc[1]
    # Table 6 at 100 Gbps (asserted against the paper in test_planner.py), through a sweep row
    assert at_100["plan.prfaas.lambda_max"] == pytest.approx(3.24, rel=0.05)
    assert at_100["plan.homogeneous.lambda_max"] == pytest.approx(2.11, rel=0.05)
    assert at_100["plan.prfaas_vs_homogeneous"] == pytest.approx(
        at_100["plan.prfaas.lambda_max"] / at_100["plan.homogeneous.lambda_max"]
    )
    # 5 Gbps is just above the hybrid model's break-even (4.3 Gbps, README): a gain, but a small one
    assert 1.0 < rows.iloc[0]["plan.prfaas_vs_homogeneous"] < at_100["plan.prfaas_vs_homogeneous"]
    report = plan_deployment(deployment_from_scenario(load_scenario(PAPER)))
    assert at_100["plan.prfaas.lambda_max"] == report.topologies["prfaas"].result.lambda_max


def test_a_failing_point_is_a_row_and_the_sweep_goes_on(tmp_path):
    # Each value builds alone, but DeepSeek-V3's 671 GB of weights do not fit 8xH100: that combination
    # fails when it runs.
    body = (
        'run = ["plan"]\n[grid]\n"model.preset" = ["kimi-1t-hybrid", "deepseek-v3"]\n'
        '"hardware.local" = ["H20", "H100"]\n'
    )
    spec = write_spec(tmp_path, body)
    result = CliRunner().invoke(main, ["sweep", str(spec), "--out", str(tmp_path / "out"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(tmp_path / "out" / "sweep.parquet").set_index(["model.preset", "hardware.local"])
    failed = rows[rows["status"] == "failed"]
    assert list(failed.index) == [("deepseek-v3", "H100")]
    assert "does not fit 8xH100" in failed["error"].iloc[0] and "\n" not in failed["error"].iloc[0]
    assert failed["plan.prfaas.lambda_max"].isna().all()
    assert rows.loc[("deepseek-v3", "H20"), "plan.prfaas.lambda_max"] > 0  # the others ran to the end
    assert "4 run now (1 failed)" in result.output
    # A re-run skips it (a failure is a result) unless asked to retry
    again = CliRunner().invoke(main, ["sweep", str(spec), "--out", str(tmp_path / "out")])
    assert "0 run now (0 failed), 4 done before" in again.output
    retried = CliRunner().invoke(main, ["sweep", str(spec), "--out", str(tmp_path / "out"), "--retry-failed"])
    assert "1 run now (1 failed), 3 done before" in retried.output


@pytest.mark.slow
def test_max_rate_rows_are_simulates_own_search_and_gain(tmp_path):
    # One point: plan and the steady-state Λ_max search of two topologies (about a minute of one core).
    body = 'run = ["plan", "max-rate"]\ntopologies = ["prfaas", "homogeneous"]\n[grid]\nseed = [0]\n'
    spec = write_spec(tmp_path, body)
    result = CliRunner().invoke(main, ["sweep", str(spec), "--out", str(tmp_path / "out"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    row = pd.read_parquet(tmp_path / "out" / "sweep.parquet").iloc[0]
    assert row["status"] == "ok"
    # simulate --find-max-rate on the case study finds 3.15 and 1.93 req/s (README, docs/simulate.md)
    assert row["max_rate.prfaas.lambda_max"] == pytest.approx(3.15, abs=0.01)
    assert row["max_rate.homogeneous.lambda_max"] == pytest.approx(1.93, abs=0.01)
    assert row["max_rate.prfaas_vs_homogeneous"] == pytest.approx(
        row["max_rate.prfaas.lambda_max"] / row["max_rate.homogeneous.lambda_max"]
    )
    assert row["max_rate.prfaas.bracketed"] and row["max_rate.prfaas.probe_count"] > 2
    assert row["max_rate.prfaas.planner_lambda_max"] == row["plan.prfaas.lambda_max"]
    # only the chosen topologies, and the ratios between them only
    assert not [c for c in row.index if "naive" in c]


SLOW_SPEC = (
    'run = ["simulate"]\n[grid]\n"simulate.requests" = [150]\nrate = [1.0, 1.5, 2.0]\nseed = [0, 1, 2, 3]\n'
)


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (a pool's forkserver and its workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_a_killed_sweep_resumes_without_redoing_a_point(tmp_path, sig):
    spec, out = write_spec(tmp_path, SLOW_SPEC), tmp_path / "out"
    cmd = [sys.executable, "-m", "harness", "sweep", str(spec), "--out", str(out), "--workers", "1"]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a background shell ignores it
    )
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and len(list((out / "points").glob("*.ok.parquet"))) < 3:
            assert time.monotonic() < deadline, "no three points finished in 300 s"
            time.sleep(0.05)
        workers = _descendants(proc.pid)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", err
    else:
        assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 30  # the pool goes with the sweep, SIGKILL included
    while _alive(workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(workers), f"pool processes outlived the sweep: {_alive(workers)}"
    done_before = set(read_rows(out)["key"])
    assert 3 <= len(done_before) < 12
    if sig == signal.SIGINT:  # the table is rewritten on the way out, with every finished row
        assert set(pd.read_parquet(out / "sweep.parquet")["key"]) == done_before

    resumed = sweep_cli(str(spec), "--out", str(out), "--workers", "1")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{12 - len(done_before)} run now (0 failed), {len(done_before)} done before" in resumed.stdout
    assert "12/12 points" in resumed.stderr.splitlines()[-1]
    rows = pd.read_parquet(out / "sweep.parquet")
    assert len(rows) == 12 and rows["key"].is_unique and list(rows["point"]) == list(range(12))
    entries = journal(out)
    for key in rows["key"]:
        dispatched = sum(e["event"] == "dispatched" and e["key"] == key for e in entries)
        finished = sum(e["event"] == "finished" and e["key"] == key for e in entries)
        assert finished == 1, key
        if key in done_before:  # a point done before the kill was never started again
            assert dispatched == 1, key


def test_the_local_pool_imports_no_ray(tmp_path):
    spec = write_spec(tmp_path, 'run = ["plan"]\n')
    code = (
        "import sys\nfrom harness.cli import main\n"
        f"try:\n    main(['sweep', {str(spec)!r}, '--out', {str(tmp_path / 'out')!r}, '--workers', '1'])\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_executor_ray_without_ray_installed_is_one_line(tmp_path):
    # Ray may well be installed here: hide it the way a missing package looks to Python.
    spec = write_spec(tmp_path, 'run = ["plan"]\n')
    code = (
        "import sys\nsys.modules['ray'] = None\nfrom harness.cli import main\n"
        f"main(['sweep', {str(spec)!r}, '--out', {str(tmp_path / 'out')!r}, '--executor', 'ray'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr == "error: --executor ray needs Ray, which is not installed: pip install -e '.[ray]'\n"
    assert not (tmp_path / "out").exists()


def test_ray_address_without_executor_ray_is_refused(tmp_path):
    spec = write_spec(tmp_path, 'run = ["plan"]\n')
    result = CliRunner().invoke(main, ["sweep", str(spec), "--ray-address", "auto"])
    assert result.exit_code == 2 and result.stderr == "error: --ray-address needs --executor ray\n"


def _pool_workers(pid: int) -> list[int]:
    """The sweep's pool processes (spawned interpreters), not multiprocessing's resource tracker."""
    found = []
    for child in _alive(_descendants(pid)):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            found.append(child)
    return found


def _running_second_point(out: Path) -> bool:
    events = [e["event"] for e in journal(out)]
    return events.count("finished") == 1 and events.count("dispatched") == 2


@pytest.mark.slow
def test_a_worker_killed_under_a_point_fails_that_point_only(tmp_path):
    spec, out = write_spec(tmp_path, SLOW_SPEC), tmp_path / "out"
    cmd = [sys.executable, "-m", "harness", "sweep", str(spec), "--out", str(out), "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and not _running_second_point(out):
            assert time.monotonic() < deadline, "no second point started in 300 s"
            time.sleep(0.05)
        (worker,) = _pool_workers(proc.pid)  # running the second point
        os.kill(worker, signal.SIGKILL)  # the fault: out of memory, a crash in native code
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "12 run now (1 failed)" in stdout
    rows = pd.read_parquet(out / "sweep.parquet")
    failed = rows[rows["status"] == "failed"]
    assert len(failed) == 1 and failed["error"].iloc[0].startswith("worker process died")
    assert (rows["status"] == "ok").sum() == 11  # a new pool ran the rest
    again = sweep_cli(str(spec), "--out", str(out), "--workers", "1", "--retry-failed")
    assert again.returncode == 0 and "1 run now (0 failed), 11 done before" in again.stdout
    assert set(pd.read_parquet(out / "sweep.parquet")["status"]) == {"ok"}


def test_the_example_sweep_is_valid_and_as_large_as_it_says():
    sweep = load_sweep(REPO / "workloads" / "sweep-bandwidth.toml")
    assert len(sweep.points) == 2 * 15 * 5 * 3 == 450  # the count its header and the README give
    assert sweep.points[0].runs == ("plan", "max-rate") and sweep.points[0].topologies == (
        "prfaas",
        "homogeneous",
    )


def test_a_second_sweep_into_the_same_directory_is_refused(tmp_path):
    from harness.network.locks import FileLock

    spec, out = write_spec(tmp_path, 'run = ["plan"]\n'), tmp_path / "out"
    out.mkdir()
    held = FileLock(out / ".lock")  # what a running sweep holds
    assert held.acquire(blocking=False)
    try:
        result = CliRunner().invoke(main, ["sweep", str(spec), "--out", str(out)])
    finally:
        held.release()
    assert result.exit_code == 2
    assert (
        result.stderr == f"error: {out}: another sweep is writing here; wait for it, or give another --out\n"
    )
    assert not list((out / "points").glob("*"))  # nothing ran
