#!/usr/bin/env python3
"""Regenerate the committed regression baseline, results/baseline/analysis.json.

    .venv/bin/python scripts/update_baseline.py

Runs the quick deterministic simulation named in BASELINE_COMMAND, analyses it, and stores the
`analyze --json` result together with the command, so tests/test_compare_baseline.py (CI) can rerun
exactly that command and `compare` the fresh result against this one. Run it when a change to the
serving model is *meant* to move the numbers, and say so in the commit.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASELINE = REPO / "results" / "baseline" / "analysis.json"
# Virtual time and a fixed seed: the same code gives the same records on any machine (about 2 s).
BASELINE_COMMAND = [
    "simulate", "workloads/paper-case-study.toml", "--requests", "200", "--rate", "2", "--seed", "0",
]  # fmt: skip


def main() -> int:
    sys.path.insert(0, str(REPO))
    from harness.analysis import analyze, load_bundle

    with tempfile.TemporaryDirectory(prefix="prfaas-baseline-") as tmp:
        cmd = [sys.executable, "-m", "harness", *BASELINE_COMMAND, "--out", tmp]
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        result = analyze(load_bundle([tmp]), n_boot=200)
    for run in result["runs"]:
        run["path"] = "<temporary>"  # where it ran is noise in a committed file
    result["baseline_command"] = BASELINE_COMMAND
    BASELINE.parent.mkdir(parents=True, exist_ok=True)
    BASELINE.write_text(json.dumps(result, indent=1, sort_keys=True, allow_nan=False) + "\n")
    print(f"{BASELINE.relative_to(REPO)}: {', '.join(result['topologies'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
