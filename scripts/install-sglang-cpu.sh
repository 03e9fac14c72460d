#!/usr/bin/env bash
# The opt-in SGLang for the real-engine tests: sglang from the package registry, layered on the vLLM CPU
# venv's torch (a .pth file), cached between runs.
#   scripts/install-sglang-cpu.sh [VENV]   (default: $PRFAAS_SGLANG_VENV or ~/.cache/prfaas-bench/sglang-VERSION)
# About 0.5 GB and a minute or two once the vLLM venv exists (it installs that first). See docs/engines.md:
# the registry's sglang is the CUDA build; it serves on CPU through its generic torch paths
# (--device cpu --attention-backend torch_native), not through SGLang's own CPU engine, which needs a
# CPU sgl-kernel that the registry does not have.
set -euo pipefail
version="${SGLANG_VERSION:-0.5.23}"
venv="${1:-${PRFAAS_SGLANG_VENV:-$HOME/.cache/prfaas-bench/sglang-$version}}"
if [[ -f $venv/.complete ]]; then
  exit 0
fi
echo "installing sglang $version into $venv (about 0.5 GB on top of the vLLM venv)" >&2
bash "$(cd "$(dirname "$0")" && pwd)/venv-over-vllm.sh" "$venv"
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# Never install over the vLLM venv's CPU torch.
torch_version=$("$venv/bin/python" -c "import torch; print(torch.__version__)")
constraints="$venv/constraints.txt"
echo "torch==$torch_version" >"$constraints"
pip_quiet() { "$venv/bin/pip" install -q -c "$constraints" "$@" 2>&1 | grep -vE "^WARNING: Location|dependency resolver|^sglang .* requires" >&2 || true; }
# The sglang wheel's own dependency set is CUDA's (torch 2.14.1, flashinfer, sglang-kernel for sm90/100).
pip_quiet --no-deps "sglang==$version" torchvision==0.28.0
# What the text-generation path imports and the vLLM venv lacks.
pip_quiet blobfile==3.0.0 build distro easydict gguf ipython openai-harmony==0.0.4 orjson \
  "python-dateutil<3" scipy soundfile==0.13.1 xxhash zstandard
# sglang imports torchvision.transforms at start-up; the registry's torchvision is linked against CUDA
# torch, so its C ops do not load here and its fake-op registrations raise. Register those only when the
# ops loaded (the transforms are pure Python).
meta="$site/torchvision/_meta_registrations.py"
sed -i 's/@torch.library.register_fake(/@_fake_if_ops(/' "$meta"
sed -i '/^import torchvision.extension  # noqa: F401/a\
\
\
def _fake_if_ops(name):\
    return torch.library.register_fake(name) if torchvision.extension._has_ops() else (lambda f: f)' "$meta"
"$venv/bin/python" -c "import torchvision.transforms, sglang.srt.entrypoints.http_server" # the install must have worked
touch "$venv/.complete"
echo "sglang $version ready in $venv" >&2
