"""Does ``serve`` start every time on a host where another run builds and removes networks? (issue 12)

    sudo .venv/bin/python benchmarks/bench_serve_starts.py [--starts 20] [--hogs 0] [SCENARIO]

Starts ``prfaas-bench serve SCENARIO`` (namespaces, prefix ``pfbss-``) N times in a row. Each start
must print its URLs, answer ``/health`` on them, and stop cleanly on SIGTERM (exit 143, nothing on
stderr, its namespaces gone). Meanwhile a second process runs ``net up workloads/two-site.toml`` /
``net down`` in a loop with its own prefix (``pfbsc-``), and ``--hogs`` CPU hogs may run beside
both. Prints one line per start (time to healthy, outcome), the churn loop's cycles and failures,
and the namespaces left on the host afterwards. Exit 1 if any start failed or anything was left.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "harness"]
SERVE_PREFIX, CHURN_PREFIX = "pfbss-", "pfbsc-"


def namespaces() -> list[str]:
    netns = Path("/run/netns")
    return sorted(p.name for p in netns.iterdir()) if netns.is_dir() else []


def one_start(scenario: str) -> tuple[bool, float, str]:
    """(ok, seconds until /health answered, what went wrong)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [*CLI, "serve", scenario, "--netns", "--prefix", SERVE_PREFIX],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    healthy, why = None, ""
    try:
        for line in proc.stdout:
            if line.startswith("metrics: "):
                base = line.split()[1].removesuffix("/metrics")
                with urllib.request.urlopen(base + "/health", timeout=30) as resp:
                    if resp.status == 200:
                        healthy = time.monotonic() - t0
                break
        if healthy is None:
            why = "never printed its URLs or /health failed"
        proc.terminate()
        code = proc.wait(timeout=60)
        err = proc.stderr.read().strip()
        if code != 143:
            why = why or f"exit status {code}"
        if err:
            why = why or f"stderr: {err.splitlines()[-1][:200]}"
    except Exception as exc:  # a benchmark reports, it does not stop at the first failure
        why = why or f"{type(exc).__name__}: {exc}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    left = [n for n in namespaces() if n.startswith(SERVE_PREFIX)]
    if left:
        why = why or f"left {left}"
    return not why, healthy or float("nan"), why


def churn(stop: threading.Event, counts: dict[str, int], errors: list[str]) -> None:
    """net up / net down with its own prefix until ``stop``."""
    scenario = str(REPO / "workloads" / "two-site.toml")
    while not stop.is_set():
        for args in (["up", scenario], ["down"]):
            res = subprocess.run(
                [*CLI, "net", *args, "--prefix", CHURN_PREFIX], cwd=REPO, capture_output=True, text=True
            )
            if res.returncode != 0:
                errors.append(f"net {args[0]}: {(res.stderr.strip() or res.stdout.strip())[:200]}")
        counts["cycles"] += 1


@contextlib.contextmanager
def cpu_hogs(n: int):
    hogs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("scenario", nargs="?", default=str(REPO / "workloads" / "paper-case-study.toml"))
    p.add_argument("--starts", type=int, default=20)
    p.add_argument("--hogs", type=int, default=0, help="CPU hogs beside it all")
    a = p.parse_args()
    stop, counts, errors = threading.Event(), {"cycles": 0}, []
    loop = threading.Thread(target=churn, args=(stop, counts, errors), daemon=True)
    failed = 0
    with cpu_hogs(a.hogs):
        loop.start()
        time.sleep(1.0)  # the churn loop is mid-build when the first serve probes and builds
        for i in range(1, a.starts + 1):
            ok, secs, why = one_start(a.scenario)
            failed += not ok
            print(f"start {i:2d}: {'ok  ' if ok else 'FAIL'} healthy after {secs:5.2f} s  {why}", flush=True)
        stop.set()
        loop.join()
    left = [n for n in namespaces() if n.startswith((SERVE_PREFIX, CHURN_PREFIX, "prfaas-probe-"))]
    print(f"\n{a.starts - failed} of {a.starts} starts succeeded (hogs: {a.hogs})")
    print(f"churn: {counts['cycles']} net up/down cycles with prefix {CHURN_PREFIX}, {len(errors)} failures")
    for e in errors[:5]:
        print(f"  {e}")
    print(
        f"left by this benchmark: {left or 'nothing'}; all namespaces on the host: {namespaces() or 'none'}"
    )
    return 1 if failed or left or errors else 0


if __name__ == "__main__":
    sys.exit(main())
