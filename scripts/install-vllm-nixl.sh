#!/usr/bin/env bash
# The real PD pair's venv: NIXL (the registry's nixl-cu12 wheel, whose UCX backend runs on a
# CPU-only host) layered on the vLLM CPU venv with a .pth file, so vLLM's NixlConnector can move KV
# between two vLLM CPU servers. Cached between runs.
#   scripts/install-vllm-nixl.sh [VENV]   (default: $PRFAAS_VLLM_NIXL_VENV or ~/.cache/prfaas-bench/vllm-nixl-VERSION)
# About 270 MB and a few seconds once the vLLM venv exists (it installs that first). docs/engines.md.
set -euo pipefail
version="${NIXL_VERSION:-1.5.1}"
venv="${1:-${PRFAAS_VLLM_NIXL_VENV:-$HOME/.cache/prfaas-bench/vllm-nixl-$version}}"
if [[ -f $venv/.complete ]]; then
  exit 0
fi
echo "installing nixl $version into $venv (about 270 MB on top of the vLLM venv)" >&2
bash "$(cd "$(dirname "$0")" && pwd)/venv-over-vllm.sh" "$venv"
# `nixl` is a meta-package that pulls both CUDA variants; the cu12 one alone carries the UCX plugin.
# --no-deps: its torch and numpy are the vLLM venv's.
"$venv/bin/pip" install -q --no-deps "nixl-cu12==$version" "nixl==$version" 2>&1 | grep -vE "^WARNING: Location|dependency resolver|^nixl .* requires" >&2 || true
# The UCX backend must load here. os._exit: an agent torn down at interpreter exit can segfault (seen
# once in three probes); the servers keep theirs for their lifetime.
"$venv/bin/python" -c "
import os
from nixl._api import nixl_agent, nixl_agent_config
nixl_agent('probe', nixl_agent_config(backends=['UCX']))
os._exit(0)"
touch "$venv/.complete"
echo "nixl $version ready in $venv" >&2
