"""A real SGLang serving the same tiny random-weight Llama, for the opt-in SGLang tests.

The venv comes from ``scripts/install-sglang-cpu.sh`` (``make sglang-venv``), layered on the vLLM venv's
CPU torch. The registry's sglang is the CUDA build: it serves here through its generic torch paths
(``--device cpu --attention-backend torch_native``), not SGLang's own CPU engine (docs/engines.md).
"""

from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .vllm import MAX_MODEL_LEN, MODEL_NAME, VllmServer

VERSION = os.environ.get("SGLANG_VERSION", "0.5.23")
VENV = Path(
    os.environ.get("PRFAAS_SGLANG_VENV") or Path.home() / ".cache" / "prfaas-bench" / f"sglang-{VERSION}"
)


def sglang_python() -> Path | None:
    """The SGLang venv's Python, or None when the venv is missing or incomplete."""
    python = VENV / "bin" / "python"
    return python if (VENV / ".complete").is_file() and python.is_file() else None


@dataclass
class SglangServer(VllmServer):
    """``python -m sglang.launch_server`` on a free loopback port; the start, health wait and teardown
    are the vLLM server's (same process-group and parent-death handling)."""

    def command(self) -> list[str]:
        return [
            str(self.python), "-m", "sglang.launch_server",
            "--model-path", str(self.model_dir),
            "--served-model-name", MODEL_NAME,
            "--load-format", "dummy",
            "--device", "cpu",
            "--attention-backend", "torch_native",
            "--disable-overlap-schedule",
            "--dtype", "bfloat16",
            "--context-length", str(MAX_MODEL_LEN),
            "--mem-fraction-static", "0.1",  # of host memory: ~0.8 GB of KV cache is plenty here
            "--enable-metrics",
            "--enable-cache-report",  # usage.prompt_tokens_details.cached_tokens
            "--host", "127.0.0.1",
            "--port", str(self.port),
            *self.extra_args,
        ]  # fmt: skip

    def reset_prefix_cache(self) -> None:
        """SGLang's radix-cache flush (refused while requests are running)."""
        req = urllib.request.Request(self.url + "/flush_cache", method="POST")
        with urllib.request.urlopen(req, timeout=30):
            pass
