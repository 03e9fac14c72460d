#!/usr/bin/env bash
# System packages the tests use: Debian's chromium (browser tests) and iproute2 (for inspecting
# what the harness built; the harness itself only talks netlink through pyroute2).
# Installs only when root and apt-get exist; otherwise says what is missing and carries on,
# and the tests that need these skip with a reason (or fail under CI=true).
set -u
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
((${#need[@]})) || exit 0
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: not installing ${need[*]} (needs root and apt-get); tests that need them will skip" >&2
  exit 0
fi
echo "installing system packages: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
