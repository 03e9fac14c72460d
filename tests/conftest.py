"""Shared fixtures. Capability-dependent tests skip with a reason on a laptop, and fail under CI=true."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"  # slices of the real traces, shipped with their licences (data/README.md)
MOONCAKE_SLICE = DATA / "mooncake_conversation_head300.jsonl"
AZURE_CODE_SLICE = DATA / "azure_code_2023_head300.csv"
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# A suite started in the background by a non-interactive shell inherits SIGINT ignored, and so would
# every process the tests start (Python keeps an inherited SIG_IGN): the Ctrl-C tests would then send a
# signal nobody hears. Catching it here makes it the default again in every child after exec.
signal.signal(signal.SIGINT, signal.default_int_handler)


def need(condition: bool, reason: str) -> None:
    """Skip the test when ``condition`` is false — unless CI=true, where a missing capability fails."""
    if condition:
        return
    if CI:
        pytest.fail(f"CI=true and a required capability is missing: {reason}")
    pytest.skip(reason)


@pytest.fixture
def mooncake_slice() -> Path:
    """The first 300 rows of the Mooncake conversation trace (tests/data; facts in its README)."""
    return MOONCAKE_SLICE


@pytest.fixture
def azure_code_slice() -> Path:
    """The header and first 300 rows of the Azure 2023 code trace (tests/data; facts in its README)."""
    return AZURE_CODE_SLICE


@pytest.fixture
def root() -> None:
    """Require root (network namespaces, tc)."""
    need(os.geteuid() == 0, "needs root for network namespaces and tc")


@pytest.fixture
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    need(
        path is not None,
        "headless Chromium not installed (make install-test installs Debian's chromium as root)",
    )
    return path


_TAG_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
RUN_TAG = _TAG_CHARS[os.getpid() % 26] + _TAG_CHARS[os.getpid() // 26 % 36]


def net_prefix(name: str) -> str:
    """A network prefix of this test session: "pfb" + a 2-character session tag + ``name`` + "-"
    (``name`` at most 3 characters), so test runs of two checkouts on one host never share one."""
    return f"pfb{RUN_TAG}{name}-"


@pytest.fixture(scope="session")
def real_vllm(tmp_path_factory: pytest.TempPathFactory):
    """A real vLLM (CPU build) serving a tiny random-weight Llama, shared by the whole session.

    Needs the cached venv of ``make vllm-venv``; starting takes about two minutes on two cores."""
    from realengine.vllm import VENV, VllmServer, build_tiny_model, vllm_python

    python = vllm_python()
    need(python is not None, f"no vLLM venv at {VENV} (make vllm-venv installs it: ~3.5 GB, several minutes)")
    work = tmp_path_factory.mktemp("vllm")
    model = build_tiny_model(work / "model", python)
    with VllmServer(python, model, work / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def real_sglang(tmp_path_factory: pytest.TempPathFactory):
    """A real SGLang (the registry's build on CPU torch) serving the tiny Llama, for one test module
    (stopped after it, so it never runs beside the vLLM servers of other modules).

    Needs ``make sglang-venv`` (``make real-engines``, which .ci/run runs); skips without it on a laptop."""
    from realengine.sglang import VENV, SglangServer, sglang_python
    from realengine.vllm import build_tiny_model

    python = sglang_python()
    need(
        python is not None,
        f"no SGLang venv at {VENV} (make sglang-venv installs it: ~0.5 GB over the vLLM venv)",
    )
    work = tmp_path_factory.mktemp("sglang")
    model = build_tiny_model(work / "model", python)
    with SglangServer(python, model, work / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def real_vllm_pd(tmp_path_factory: pytest.TempPathFactory):
    """A real vLLM prefill/decode pair with NixlConnector on loopback: (prefill, decode, model dir).

    Opt-in, CI included: ``PRFAAS_NIXL_PD=1`` and ``make vllm-nixl-venv``. A decode server of the pair
    once stuck in the kernel at start (``sched_setaffinity``, ignoring SIGKILL for minutes) beside the
    suite, so it does not run unasked (docs/engines.md). Module-scoped: the servers stop after its tests."""
    from realengine.pd import VENV, nixl_pair, nixl_python
    from realengine.vllm import build_tiny_model

    if os.environ.get("PRFAAS_NIXL_PD") != "1":
        pytest.skip("opt-in: PRFAAS_NIXL_PD=1 runs the real NIXL PD pair (docs/engines.md)")
    python = nixl_python()
    if python is None:
        pytest.skip(f"no NIXL venv at {VENV} (make vllm-nixl-venv installs it: ~0.3 GB over the vLLM venv)")
    work = tmp_path_factory.mktemp("vllm-pd")
    model = build_tiny_model(work / "model", python)
    with nixl_pair(python, model, work) as (prefill, decode):
        yield prefill, decode, model
