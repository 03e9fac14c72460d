"""``prfaas-bench sweep SPEC.toml``: a grid of design points through plan and simulate, on a process
pool or on Ray; one Parquet row per point, resumable (``harness.sweep``)."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.console import Console
from rich.live import Live
from rich.text import Text

from harness.cli._options import warn
from harness.errors import ScenarioError
from harness.sweep import LocalPool, Progress, load_sweep, run_sweep

_PLAIN_EVERY_S = 5.0  # progress lines when stderr is not a terminal (a log, CI)


@click.command("sweep")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Output directory (default results/sweep-SPEC_NAME); a re-run into it skips the points done.",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: a process pool on this host; ray: Ray tasks (pip install -e '.[ray]').",
)
@click.option(
    "--ray-address",
    metavar="auto|HOST:PORT|ray://HOST:PORT",
    help="An existing Ray cluster (with --executor ray); without it a local Ray runs for the sweep.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=1024),
    help="Processes of the local pool, or CPUs of the local Ray (default: this host's CPUs).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1, max=10_000),
    default=1,
    show_default=True,
    help="Points per task (more amortise the per-task overhead of short plan-only points).",
)
@click.option("--keep-runs", is_flag=True, help="Keep each simulate run directory under OUT/runs/KEY/.")
@click.option("--retry-failed", is_flag=True, help="Run again the points that failed in an earlier run.")
def command(spec, out, executor, ray_address, workers, batch_size, keep_runs, retry_failed) -> None:
    """Run every point of SPEC (a base scenario, a [grid] and/or [[cases]] of overrides, what to run),
    each point's row to OUT/points/ as it finishes, then OUT/sweep.parquet. docs/sweep.md.

    \b
    prfaas-bench sweep workloads/sweep-bandwidth.toml
    prfaas-bench sweep workloads/sweep-bandwidth.toml --executor ray --ray-address auto
    """
    if ray_address is not None and executor != "ray":
        raise ScenarioError("--ray-address needs --executor ray")
    sweep = load_sweep(spec)
    warn(sweep.base.warnings("simulate" if {"simulate", "max-rate"} & set(sweep.table.run) else "plan"))
    out_dir = Path(out) if out else Path("results") / f"sweep-{Path(spec).stem}"
    runs_dir = str((out_dir / "runs").resolve()) if keep_runs else None
    if executor == "ray":
        from harness.raycluster import check_ray
        from harness.sweep.rayexec import FLAG, RayExecutor

        check_ray(FLAG)  # not installed: one line now, before any output directory is made
        chosen = RayExecutor(ray_address, workers=workers, runs_dir=runs_dir)
    else:
        chosen = LocalPool(workers, runs_dir=runs_dir)
    with _ProgressLine() as shown:
        result = run_sweep(
            sweep, chosen, out_dir, batch_size=batch_size, retry_failed=retry_failed, on_progress=shown.update
        )
    p = result.progress
    click.echo(
        f"sweep: {p.total} points: {p.done} run now ({p.failed} failed), {p.skipped} done before; "
        f"{result.table}"
    )


class _ProgressLine:
    """Done, failed, points/s and ETA on stderr: a live line on a terminal, else a line every 5 s."""

    def __init__(self) -> None:
        self.console = Console(stderr=True)
        self._live: Live | None = None
        self._last = 0.0
        self._progress: Progress | None = None

    def __enter__(self) -> _ProgressLine:
        if self.console.is_terminal:
            self._live = Live(Text(""), console=self.console, refresh_per_second=4)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
        elif self._progress is not None:
            click.echo(f"sweep: {self._progress.line()}", err=True)

    def update(self, progress: Progress) -> None:
        self._progress = progress
        if self._live is not None:
            self._live.update(Text(f"sweep: {progress.line()}"))
        elif time.monotonic() - self._last >= _PLAIN_EVERY_S:
            self._last = time.monotonic()
            click.echo(f"sweep: {progress.line()}", err=True)
