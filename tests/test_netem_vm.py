"""The netem backend on a real kernel. This machine's kernel has no netem, so the test boots Debian's
kernel (netem as a module) in a VM (``scripts/netem-vm.sh``: QEMU through virtme-ng, sharing this
checkout read-only) and runs inside it, as root and with CI=true (a skip there is a failure):

- ``tests/test_network_netns.py``: the namespace tests the relay passes on this machine, where the
  probe now picks netem: goodput, RTT, loss, live changes, link events, SIGTERM and cleanup;
- ``tests/netem_in_vm.py``: what only netem has (the probe's answer, jitter without reordering, the
  queue limit against the bandwidth-delay product, rates above 4 Gbit/s, offloads), and a short
  ``serve`` + ``replay`` that records netem as its backend.

The guest runs under TCG (software emulation) on the host's cores, so a timing check can fail when the
host's scheduler takes a vCPU away for milliseconds: the tests that fail are run once more in the same
guest, and the test passes only if they all pass then (the output names them). ``make test-netem-vm``
runs it, and ``.ci/run`` as a step of its own on an otherwise idle machine; in ``make test`` it is
opt-in (``PRFAAS_NETEM_VM=1``), because beside other work on two cores its timings are the host's.
``make netem-vm`` installs what it needs. Without it the test skips saying why, and under CI=true fails.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import REPO, need

pytestmark = pytest.mark.netem_vm
SCRIPT = REPO / "scripts" / "netem-vm.sh"
INNER = ("tests/test_network_netns.py", "tests/netem_in_vm.py")
VM_TIMEOUT_S = 900  # the whole run took 109-200 s here (boot included), beside others' work
RERUN = "netem-vm: running the failed tests again"


def test_the_network_tests_pass_with_netem_inside_a_vm(root):
    if os.environ.get("PRFAAS_NETEM_VM") != "1":
        pytest.skip("opt-in: PRFAAS_NETEM_VM=1 boots a netem-capable kernel in a VM (make test-netem-vm)")
    ready = subprocess.run(["bash", str(SCRIPT), "check"], capture_output=True, text=True, check=False)
    need(ready.returncode == 0, f"no netem VM here: {ready.stdout.strip()}")
    # -v: one line per test, so that a run the timeout ends still says which test it was in; the
    # cache (for --lf) goes to the guest's /tmp, the tree being read-only there
    run = "env CI=true .venv/bin/python -m pytest -v --color=no -o cache_dir=/tmp/pfb-pytest-cache"
    files = " ".join(INNER)
    inner = ["bash", "-c", f"{run} {files} || {{ echo '{RERUN}'; {run} --lf {files}; }}"]
    out = subprocess.run(
        ["bash", str(SCRIPT), "run", "-t", str(VM_TIMEOUT_S), "--", *inner],
        capture_output=True,
        text=True,
        check=False,
        timeout=VM_TIMEOUT_S + 60,
    )
    tail = (out.stdout[-6000:] + "\n" + out.stderr[-3000:]).strip()
    assert out.returncode == 0, tail
    summary = [ln for ln in out.stdout.splitlines() if " passed" in ln]
    assert summary and "failed" not in summary[-1] and "skipped" not in summary[-1], tail
    first, _, again = out.stdout.partition(RERUN)
    if again:  # said in the output; the run passed because every failed test passed the second time
        failed = sorted({ln.split()[1] for ln in first.splitlines() if ln.startswith(("FAILED ", "ERROR "))})
        print(f"passed on the second run in the guest: {failed}")
