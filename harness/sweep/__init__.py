"""Sweeps of design points (``prfaas-bench sweep SPEC.toml``): a grid or list of overrides on a
scenario, each point run through plan and/or simulate, one Parquet row per point, resumable.

spec.py       the sweep file, checked whole, and its points with their deterministic keys
point.py      one point: the library's plan and simulate on its scenario, flattened to a row
store.py      the output directory: a Parquet file per finished point, journal, sweep.parquet
executors.py  where batches of points run: the executor shape and ``LocalPool`` (processes)
rayexec.py    ``RayExecutor``: batches as Ray tasks (imports Ray; only ``--executor ray`` loads it)
run.py        ``run_sweep``: the points not yet done, through an executor, rows stored as they come
"""

from harness.sweep.executors import LocalPool
from harness.sweep.run import Progress, SweepResult, run_sweep
from harness.sweep.spec import Point, Sweep, load_sweep
from harness.sweep.store import journal, read_rows

__all__ = [
    "LocalPool",
    "Point",
    "Progress",
    "Sweep",
    "SweepResult",
    "journal",
    "load_sweep",
    "read_rows",
    "run_sweep",
]
