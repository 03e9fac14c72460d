"""CI's regression check: a fresh quick simulation against the committed baseline, within 5%.

The baseline stores the command that produced it (scripts/update_baseline.py); this test reruns it.
A failure prints the Markdown report: either a regression, or an intended model change that needs
`scripts/update_baseline.py` and a commit saying why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from click.testing import CliRunner

from harness.cli import main

REPO = Path(__file__).resolve().parent.parent
BASELINE = REPO / "results" / "baseline" / "analysis.json"


def test_quick_simulation_matches_committed_baseline(tmp_path, monkeypatch):
    baseline = json.loads(BASELINE.read_text())
    assert set(baseline["topologies"]) == {"homogeneous", "naive", "prfaas"}
    monkeypatch.chdir(REPO)  # the command names the scenario relative to the repository
    runner = CliRunner()
    sim = runner.invoke(main, [*baseline["baseline_command"], "--out", str(tmp_path)])
    assert sim.exit_code == 0, sim.output
    cmp = runner.invoke(main, ["compare", os.fspath(BASELINE), str(tmp_path), "--max-regression", "5%"])
    assert cmp.exit_code == 0, cmp.output
    assert "PASS" in cmp.output
