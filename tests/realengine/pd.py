"""A real vLLM prefill/decode pair on loopback whose KV crosses between them through NixlConnector.

The venv is ``scripts/install-vllm-nixl.sh`` (``make vllm-nixl-venv``): the registry's NIXL layered on
the vLLM CPU venv. NIXL's UCX backend moves the KV over TCP here (no GPU, no RDMA); the decode server
pulls it. Each server gets one of the two cores for its OpenMP threads.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from .vllm import VllmServer, _free_port

VERSION = os.environ.get("NIXL_VERSION", "1.5.1")
VENV = Path(
    os.environ.get("PRFAAS_VLLM_NIXL_VENV")
    or Path.home() / ".cache" / "prfaas-bench" / f"vllm-nixl-{VERSION}"
)


def nixl_python() -> Path | None:
    """The NIXL venv's Python, or None when the venv is missing or incomplete."""
    python = VENV / "bin" / "python"
    return python if (VENV / ".complete").is_file() and python.is_file() else None


def _server(python: Path, model: Path, log: Path, role: str, core: int) -> VllmServer:
    config = {"kv_connector": "NixlConnector", "kv_role": role, "kv_buffer_device": "cpu"}
    return VllmServer(
        python,
        model,
        log,
        extra_args=("--kv-transfer-config", json.dumps(config)),
        extra_env={
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_CPU_OMP_THREADS_BIND": str(core % (os.cpu_count() or 1)),
            "VLLM_NIXL_SIDE_CHANNEL_HOST": "127.0.0.1",
            "VLLM_NIXL_SIDE_CHANNEL_PORT": str(_free_port()),
            "UCX_TLS": "tcp",  # what would cross a real link between hosts (not shared memory)
        },
    )


@contextlib.contextmanager
def nixl_pair(python: Path, model: Path, work: Path) -> Iterator[tuple[VllmServer, VllmServer]]:
    """A prefill server (kv_producer) and a decode server (kv_consumer), started one after the other."""
    with (
        _server(python, model, work / "prefill.log", "kv_producer", 0) as prefill,
        _server(python, model, work / "decode.log", "kv_consumer", 1) as decode,
    ):
        yield prefill, decode


def kv_bytes_per_block(model: Path, block_tokens: int = 128) -> int:
    """K and V of one cache block, all layers, from the model's config (bf16: 2 bytes a value)."""
    cfg = json.loads((model / "config.json").read_text())
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return block_tokens * cfg["num_hidden_layers"] * 2 * cfg["num_key_value_heads"] * head_dim * 2
