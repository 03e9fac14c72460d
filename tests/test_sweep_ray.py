"""``sweep --executor ray``: the same Parquet rows as the local pool (same keys, same values), on a
Ray started for the run and on an existing one-node cluster the sweep joins by address.

Every Ray here listens on 127.0.0.1 only and is stopped by the test that started it.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import need
from raynodes import free_ports, loopback, node_argv, ray_env, ray_node
from test_sweep import sweep_cli, write_spec

pytestmark = pytest.mark.slow

# Plan and simulate on 12 points, 4 of which fail (DeepSeek-V3's weights do not fit 8xH100).
SPEC = (
    'run = ["plan", "simulate"]\ntopologies = ["prfaas", "homogeneous"]\n'
    '[grid]\n"simulate.requests" = [60]\nrate = [1.0, 2.0]\nseed = [0, 1]\n'
    '[[cases]]\n"link.bandwidth_gbps" = 10\n[[cases]]\n"link.bandwidth_gbps" = 100\n'
    '[[cases]]\n"model.preset" = "deepseek-v3"\n"hardware.local" = "H100"\n'
)
_NOT_DETERMINED = ["wall_s"]  # the only column that may differ between two runs of one point


@pytest.fixture
def ray_installed() -> None:
    need(importlib.util.find_spec("ray") is not None, "Ray is not installed (pip install -e '.[ray]')")


def rows(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "sweep.parquet").drop(columns=_NOT_DETERMINED)


def test_ray_gives_the_local_pools_rows(tmp_path, ray_installed):
    spec = write_spec(tmp_path, SPEC)
    local = sweep_cli(str(spec), "--out", str(tmp_path / "local"), "--workers", "1")
    assert local.returncode == 0, local.stderr
    on_ray = sweep_cli(
        str(spec), "--out", str(tmp_path / "ray"), "--executor", "ray", "--workers", "1", "--batch-size", "3"
    )
    assert on_ray.returncode == 0, on_ray.stderr
    a, b = rows(tmp_path / "local"), rows(tmp_path / "ray")
    assert len(a) == 12 and (a["status"] == "failed").sum() == 4
    assert a["simulate.prfaas.throughput_rps"].notna().sum() == 8
    pd.testing.assert_frame_equal(a, b)


def test_a_sweep_joins_an_existing_cluster_and_leaves_it_running(tmp_path, ray_installed):
    temp = Path(tempfile.mkdtemp(prefix="pfbray-", dir="/tmp"))  # Ray's socket paths must stay short
    # the cluster and the sweep share a token made here, nothing in ~/.ray; a one-host cluster on 127.0.0.1
    env = ray_env(single_host=True)
    ports = free_ports(5)
    try:
        with ray_node(
            loopback, node_argv("127.0.0.1", ports, cpus=1, temp=temp), env, temp / "head.log"
        ) as head:
            spec = write_spec(tmp_path, 'run = ["plan"]\n[grid]\n"link.bandwidth_gbps" = [10, 100]\n')
            address = f"127.0.0.1:{ports[0]}"
            for out in ("first", "second"):  # the cluster outlives the first sweep
                done = sweep_cli(
                    str(spec),
                    "--out",
                    str(tmp_path / out),
                    "--executor",
                    "ray",
                    "--ray-address",
                    address,
                    env=env,
                )
                assert done.returncode == 0, done.stderr
                assert head.poll() is None, "the sweep stopped the cluster it joined"
            pd.testing.assert_frame_equal(rows(tmp_path / "first"), rows(tmp_path / "second"))
    finally:
        shutil.rmtree(temp, ignore_errors=True)
