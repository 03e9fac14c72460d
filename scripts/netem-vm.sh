#!/usr/bin/env bash
# A kernel with netem, in a VM, for the netem backend's tests (issue 18): this machine's kernel has no
# netem. Debian's kernel (CONFIG_NET_SCH_NETEM=m) boots under QEMU through virtme-ng, which shares this
# machine's filesystem with the guest (read-only, with writable overlays on /tmp, /var, /etc), so the
# guest runs this checkout's own .venv.
#
#   scripts/netem-vm.sh install     qemu-system-x86, busybox-static, kmod (apt); Debian's kernel package
#                                   unpacked into the cache (never installed on this host); virtme-ng
#                                   from PyPI in its own venv. A no-op once complete.
#   scripts/netem-vm.sh check       exit 0 when everything is there, else 1 and one line saying what is not
#   scripts/netem-vm.sh run [-t S] -- CMD ...
#                                   boot, run CMD as root in this checkout, power off; exit with CMD's
#                                   status (124 when the VM did not finish within S seconds, default 900;
#                                   125 when it ended without one, 130 when interrupted). Output: the
#                                   guest's serial console.
#
# Cache: $PRFAAS_NETEM_VM_DIR (default ~/.cache/prfaas-bench/netem-vm): the unpacked kernel (~405 MB),
# virtme-ng's venv (~32 MB), and per checkout an ext4 image of the interpreter and its .venv (~1.9 GB,
# rebuilt when either changes; removed once its checkout is gone). The guest runs under TCG (software
# emulation): this machine's /dev/kvm is kvm-pvm, which runs only PVM guest kernels
# (docs/netem-vm-status.md).
# PRFAAS_NETEM_VM_KVM=1 tries KVM anyway; PRFAAS_NETEM_VM_CPUS (2) and PRFAAS_NETEM_VM_MEMORY (2G)
# size the guest; PRFAAS_NETEM_VM_ARGS adds vng options. Ctrl-C or SIGTERM ends the VM at once.
set -euo pipefail
cache="${PRFAAS_NETEM_VM_DIR:-$HOME/.cache/prfaas-bench/netem-vm}"
venv="$cache/venv"
kroot="$cache/kernel"
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"

kernel_image() { ls "$kroot"/boot/vmlinuz-* 2>/dev/null | head -n1; }

missing() {
  command -v qemu-system-x86_64 >/dev/null || { echo "qemu-system-x86_64 not installed"; return; }
  command -v busybox >/dev/null || { echo "busybox not installed (virtme-ng's initramfs needs it)"; return; }
  command -v depmod >/dev/null || { echo "kmod (depmod, modprobe) not installed"; return; }
  [[ -x $venv/bin/vng ]] || { echo "no virtme-ng in $venv"; return; }
  [[ -n $(kernel_image) ]] || { echo "no netem-capable kernel unpacked in $kroot"; return; }
}

# What the guest runs comes from this checkout's own venv.
unready() {
  local why
  why=$(missing)
  [[ -n $why ]] && { echo "$why (scripts/netem-vm.sh install)"; return; }
  [[ -x $repo/.venv/bin/python ]] || echo "no $repo/.venv (make install-test)"
}

install() {
  if [[ -f $cache/.complete && -z $(missing) ]]; then
    return 0
  fi
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "netem-vm: installing needs root and apt-get" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends qemu-system-x86 busybox-static kmod >/dev/null
  mkdir -p "$cache"
  # The kernel package is unpacked, not installed: no initramfs hooks, nothing added to /boot.
  local pkg
  pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  [[ -n $pkg ]] || { echo "netem-vm: apt knows no linux-image-amd64" >&2; exit 1; }
  rm -rf "$kroot" "$cache"/*.deb
  (cd "$cache" && apt-get download -qq "$pkg")
  dpkg-deb -x "$cache"/"$pkg"_*.deb "$kroot"
  rm -f "$cache"/*.deb
  if [[ ! -x $venv/bin/vng ]]; then
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q "virtme-ng==${VIRTME_NG_VERSION:-1.42}"
  fi
  touch "$cache/.complete"
  echo "netem-vm: ready ($pkg, virtme-ng in $venv)" >&2
}

# An ext4 image ($1) holding copies of the interpreter ($2) and this checkout's .venv, rebuilt when a
# file in either is newer than it (mkfs.ext4 -d fills it without mounting anything on this host).
python_image() {
  local img="$1" stage="$1.stage"
  shift
  if [[ -f $img && -z $(find "$1" "$repo/.venv" -newer "$img" -print -quit) ]]; then
    return 0
  fi
  rm -rf "$stage" "$img"
  prune_images
  mkdir -p "$stage"
  cp -a "$1" "$stage/python"
  cp -a "$repo/.venv" "$stage/venv"
  local mb
  mb=$(du -sm "$stage" | cut -f1)
  mkfs.ext4 -q -d "$stage" -L pyimg "$img" "$((mb * 5 / 4 + 64))M"
  rm -rf "$stage"
  printf '%s\n' "$repo" >"$img.path"
}

# Each image is ~2 GB and CI clones afresh every run: drop the images of checkouts that are gone (or
# that name none: made before the .path files).
prune_images() {
  local other owner
  for other in "$cache"/python-*.img; do
    [[ -e $other ]] || continue
    owner=$(cat "$other.path" 2>/dev/null || true)
    if [[ -z $owner || ! -d $owner/.venv ]]; then
      rm -f "$other" "$other.path"
    fi
  done
}

run() {
  local timeout=900
  while [[ $# -gt 0 && $1 != -- ]]; do
    case $1 in
      -t) timeout=$2; shift 2 ;;
      *) echo "netem-vm: unknown option $1" >&2; exit 2 ;;
    esac
  done
  [[ ${1:-} == -- ]] && shift
  [[ $# -gt 0 ]] || { echo "netem-vm: run needs a command after --" >&2; exit 2; }
  local why
  why=$(unready)
  [[ -z $why ]] || { echo "netem-vm: $why" >&2; exit 1; }
  local kvm=(--disable-kvm)
  [[ ${PRFAAS_NETEM_VM_KVM:-0} == 1 ]] && kvm=()
  # The guest reads Python files over 9p, slowly: compile ours here, where the tree is writable.
  "$repo/.venv/bin/python" -m compileall -q "$repo/harness" "$repo/tests" "$repo/benchmarks" >/dev/null
  # Over 9p under TCG one `import harness.network` (~970 modules) took 76-215 s; from a disk image
  # of the interpreter and the venv, mounted over their own paths in the guest, it reads blocks.
  local pyhome
  pyhome=$("$repo/.venv/bin/python" -c 'import sys; print(sys.base_prefix)')
  # One image per checkout: each one's venv points at its own tree (an editable install), so a
  # shared image would give one checkout's guest another checkout's code.
  local img
  img="$cache/python-$(printf %s "$repo" | sha1sum | cut -c1-12).img"
  python_image "$img" "$pyhome"
  # The command's output and its exit status come back on the serial console: virtme-ng's own
  # channels for them need udev in the guest to name their ports, which this machine lacks. The
  # pause lets the console drain before the guest powers off (the last line was lost without it).
  local cmd console status
  local mounts="modprobe virtio_blk && for i in \$(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done"
  mounts+=" && mkdir -p /run/pyimg && mount -o ro /dev/vda /run/pyimg"
  mounts+=" && mount --bind /run/pyimg/python $(printf %q "$pyhome")"
  mounts+=" && mount --bind /run/pyimg/venv $(printf %q "$repo/.venv")"
  # The tree is read-only in the guest: Hypothesis's example database goes to the guest's /tmp
  # (else its warning about an unusable default location fails pytest, which treats warnings as errors).
  mounts+=" && export HYPOTHESIS_STORAGE_DIRECTORY=/tmp/hypothesis"
  cmd="$mounts && cd $(printf %q "$repo") && $(printf '%q ' "$@"); echo \"netem-vm: exit status \$?\"; sleep 2"
  console=$(mktemp -t netem-vm-console.XXXXXX)
  cd "$repo"
  export PATH="$venv/bin:$PATH"  # vng runs virtme-run from PATH
  # timeout(1) ends QEMU (and virtme-ng's helpers) if the guest never powers off: never a hang.
  # timeout(1) leads a process group of its own, so Ctrl-C at a terminal (or SIGTERM to this script)
  # never reached QEMU, which then ran on until the deadline (up to 30 min under the test): the
  # pipeline runs in the background and a trap hands the signal to timeout, which passes it to QEMU.
  set +e
  {
    timeout --kill-after=15 "$timeout" "$venv/bin/vng" "${kvm[@]}" --run "$(kernel_image)" \
      --memory "${PRFAAS_NETEM_VM_MEMORY:-2G}" --cpus "${PRFAAS_NETEM_VM_CPUS:-2}" --verbose --append quiet \
      --force-9p --disk "$img" \
      ${PRFAAS_NETEM_VM_ARGS:-} --exec "$cmd" </dev/null 2>&1 | sed -u 's/\r$//' | tee "$console"
    exit "${PIPESTATUS[0]}"
  } &
  local job=$!
  # shellcheck disable=SC2064  # expand now: the trap must name this job and this console file
  trap "pkill -TERM -x -P $job timeout; wait $job; rm -f $(printf %q "$console"); echo 'netem-vm: interrupted' >&2; exit 130" INT TERM HUP
  wait "$job"
  local vm=$?
  trap - INT TERM HUP
  set -e
  status=$(sed -n 's/^netem-vm: exit status \([0-9]*\)$/\1/p' "$console" | tail -n1)
  rm -f "$console"
  if [[ -n $status ]]; then
    exit "$status"
  elif [[ $vm -eq 124 || $vm -eq 137 ]]; then
    echo "netem-vm: the VM did not finish within $timeout s" >&2
    exit 124
  fi
  echo "netem-vm: the VM ended (status $vm) before the command reported a status" >&2
  exit 125
}

case "${1:-}" in
  install) install ;;
  check)
    why=$(unready)
    [[ -z $why ]] || { echo "$why"; exit 1; }
    ;;
  run) shift; run "$@" ;;
  *) sed -n '2,22p' "$0" >&2; exit 2 ;;
esac
