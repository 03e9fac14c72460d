"""Every command validates the whole scenario before it does any work: bad values are one line naming
file, table and key, exit code 2, no traceback; knobs a command overrides are warned about."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.scenario import load_scenario

REPO = Path(__file__).resolve().parent.parent
CASE_STUDY = REPO / "workloads" / "paper-case-study.toml"

BAD = [  # (old text of the case study, new text, the message after "FILE: ")
    ("[slo]", "[bogus]\nx = 1\n\n[slo]", "[bogus]: unknown table (known: name, description, model, hardware"),
    (
        "tpot_ms = 25",
        "bogus_key = 1\ntpot_ms = 25",
        "[slo] bogus_key: unknown key (known: tpot_ms, ttft_s, attainment)",
    ),
    ("rate_mbit = 800\n", "rate_mbit = -800\n", "[network.links[0]] rate_mbit: must be >= 0.001, got -800"),
    ("speedup = 10 ", "speedup = 0 ", "[emulation] speedup: must be >= 0.01, got 0"),
    (
        "local_instances = 12 ",
        "local_instances = 100000000 ",
        "[topologies.homogeneous] local_instances: must be <= 1024, got 100000000",
    ),
    ("requests = 2000 ", "requests = 10000000 ", "[simulate] requests: must be <= 1000000, got 10000000"),
    ("replay_requests = 240", "replay_requests = 0", "[bench] replay_requests: must be >= 1, got 0"),
    (
        "[bench]",
        '[[network.events]]\nat_s = -5\nlink = ["local", "remote"]\ndown = true\n\n[bench]',
        "[network.events[0]] at_s: must be >= 0, got -5",
    ),
    (
        "[bench]",
        '[[network.events]]\nat_s = 5\nlink = ["local", "mars"]\ndown = true\n\n[bench]',
        "[network.events[0]] link: unknown site 'mars'; sites are local, remote",
    ),
    (
        'sites = ["local", "remote"]\n',
        'sites = ["local", "remote", "client"]\n[[network.events]]\nat_s = 5\nlink = ["local", "client"]\n'
        "down = true\n",
        "[network.events[0]] link: no link between local and client",
    ),
    (
        'kind = "naive"',
        'kind = "naive"\nn_prfaas = 9',
        "[topologies.naive] n_prfaas: exceeds remote_instances (9 > 4)",
    ),
    (
        "rate_mbit = 800\n",
        "",
        "[network.links[0]] rate_mbit: missing (serve scales KV bytes by the rate from",
    ),
]

COMMANDS = {  # each must refuse before it plans, simulates, builds a network or starts a process
    "plan": ["plan", "{path}"],
    "simulate": ["simulate", "{path}", "--requests", "5", "--out", "{out}"],
    "serve": ["serve", "{path}", "--no-netns"],
    "bench": ["bench", "{path}", "--no-netns", "--out", "{out}"],
    "net up": ["net", "up", "{path}", "--dry-run"],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(("old", "new", "message"), BAD, ids=[m.split(":")[0] for *_, m in BAD])
def test_bad_scenario_is_refused_by_every_command_in_one_line(tmp_path, command, old, new, message):
    text = CASE_STUDY.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "bad.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    out = tmp_path / "out"
    args = [a.format(path=path, out=out) for a in COMMANDS[command]]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {path}: {message}"), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not out.exists()


def test_the_case_study_warns_about_what_serve_and_bench_override():
    sc = load_scenario(CASE_STUDY)
    # [link] 5 ms one way at speed-up 4 is 1.25 ms on the emulated link, not the table's 0.5.
    delay = f"{CASE_STUDY}: [network.links[0]] delay_ms = 0.5 is replaced by [link] delay_ms / speedup = 5 / 4 = 1.25"
    assert sc.warnings("serve", speedup=4) == [f"{delay} under serve"]
    assert sc.warnings("serve", speedup=10) == []  # 5 / 10 = 0.5: what the table says
    speedup = f"{CASE_STUDY}: [bench] speedup = 4 overrides [emulation] speedup = 10 (which only serve uses)"
    assert sc.warnings("bench") == [speedup, f"{delay} under bench"]
    requests = f"{CASE_STUDY}: [simulate] requests = 2000 is ignored: bench probes with [bench.quick] capacity_requests = 1000"
    assert sc.warnings("bench", quick=True) == [speedup, requests, f"{delay} under bench"]
    assert sc.warnings("plan") == [] and sc.warnings("simulate") == []


def test_simulate_warns_on_stderr_and_in_meta_json(tmp_path):
    text = CASE_STUDY.read_text(encoding="utf-8").replace("tpot_ms = 25", "tpot_ms = 25\nttft_s = 10")
    path = tmp_path / "s.toml"
    path.write_text(text + '\n[[network.events]]\nat_s = 1\nlink = ["local", "remote"]\nloss_pct = 1\n')
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "simulate",
            str(path),
            "--rate",
            "1",
            "--requests",
            "5",
            "--topology",
            "homogeneous",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    expected = [
        f"{path}: [simulate] ttft_slo_s = 30 is ignored: [slo] ttft_s = 10 is the TTFT bound",
        f"{path}: [network.events[0]] loss_pct is not simulated: the fluid link models rate, delay and down",
    ]
    assert result.stderr.splitlines() == [f"warning: {w}" for w in expected]
    (meta,) = out.glob("*/meta.json")
    assert json.loads(meta.read_text())["config_warnings"] == expected
