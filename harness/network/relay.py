"""The userspace impairment relay: one process per impaired direction on kernels without netem.

The sending site routes the peer's address into a TAP device this process owns (a permanent
neighbour entry gives frames the peer veth's MAC). Each frame read from it is dropped with
probability ``loss_pct`` or held until ``now + delay ± jitter`` (uniform, like netem without a
distribution table; release times never go backwards, so jitter does not reorder TCP), then sent
unchanged out of the site's veth with a packet socket. Sending through the veth keeps the rate in
the kernel: the TBF on the veth's egress queues and paces what the relay releases.

Speed: the TAP and the packet socket both speak virtio-net headers, so with checksum and TSO
offload the relay moves 64 KiB segments, not 1.5 KiB packets, and the bytes pass through
untouched. Offload is switched off while ``loss_pct > 0``: loss must hit single packets, not a
whole segment (the kernel then segments in software before the TAP).

Accuracy: the relay runs at real-time priority (``realtime.prioritise``), sleeps until 50 µs before
the next release is due and polls from there, and measures itself: every release is timed against
its due time into a lateness histogram (``relaylag``), published beside the control file about once
a second while frames flow, at once on SIGUSR2, and on exit, so ``net status`` and a run's metadata
report the achieved added delay against the configured one.

Parameters live in a small JSON control file; SIGUSR1 makes the relay re-read it (live link changes).
SIGTERM ends it (after a last publication); the TAP device vanishes with it. Once daemonized its
errors go to ``…<src>-<dst>.relay.log`` beside the control file.

Run as ``python -m harness.network.relay --tap NAME --dev VETH --control FILE --tag PREFIX --daemon``
inside the sending namespace (``Network`` does that and records the pid it prints).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import random
import select
import signal
import socket
import stat
import struct
import time
from collections import deque
from pathlib import Path

from harness.network.control import Impairment
from harness.network.realtime import prioritise
from harness.network.relaylag import BINS_PER_S, LagHistogram, lag_path, write_lag

_TUNSETIFF = 0x400454CA
_TUNSETOFFLOAD = 0x400454D0
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000
_TUN_F_CSUM, _TUN_F_TSO4, _TUN_F_TSO6 = 0x01, 0x02, 0x04
_SOL_PACKET, _PACKET_VNET_HDR = 263, 15
_BATCH = 256  # packets read per wake-up before releasing due ones
_SNDBUF = 16 << 20
_PUBLISH_S = 1.0  # how often the lateness histogram is written while frames flow
# Sleep until this long before a release is due, then poll: a timer wake-up here costs 30-70 µs
# (more from an idle core), polling ~10 µs. With 50 µs the lateness p50 fell from 0.03-0.07 to
# 0.01 ms and p99 from 0.1 to 0.05 ms, at idle and under two CPU hogs (benchmarks/bench_network.py).
_SPIN_S = 50e-6


TUN_PATH = Path("/dev/net/tun")


def open_tun(flags: int = 0) -> int:
    """Open the TUN/TAP clone device, making its node first where nothing did: a minimal system
    without udev (a virtme-ng VM) has the driver but no ``/dev/net/tun``; opening the node (char
    10:200) loads the tun module as ``modprobe tun`` would."""
    try:
        return os.open(TUN_PATH, os.O_RDWR | flags)
    except FileNotFoundError:
        TUN_PATH.parent.mkdir(exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mknod(TUN_PATH, 0o666 | stat.S_IFCHR, os.makedev(10, 200))
        return os.open(TUN_PATH, os.O_RDWR | flags)


def open_tap(name: str) -> int:
    """Create (and own) the TAP device ``name`` with virtio-net headers; it disappears with us."""
    fd = open_tun(os.O_NONBLOCK)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TAP | _IFF_NO_PI | _IFF_VNET_HDR))
    return fd


def set_offload(fd: int, on: bool) -> None:
    flags = _TUN_F_CSUM | _TUN_F_TSO4 | _TUN_F_TSO6 if on else 0
    fcntl.ioctl(fd, _TUNSETOFFLOAD, flags)


def run(tap: str, dev: str, control: Path, seed: int, *, daemon: bool = False) -> None:
    """Relay frames from ``tap`` to ``dev`` until SIGTERM. With ``daemon``, fork once the TAP and
    socket exist, print the relay's pid and let the parent exit: the relay then belongs to no
    builder process, which can wait for the parent and read the pid (no polling for the TAP).

    Every release is timed against its due time into a ``LagHistogram``, published beside the
    control file (``relaylag.lag_path``) about once a second while frames flow, and on exit."""
    imp = Impairment.read(control)
    prioritise(fallback_nice=-10)  # release times matter more than a busy host's other work
    rng = random.Random(seed)
    fd = open_tap(tap)
    set_offload(fd, imp.loss_pct == 0)
    out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: send only, never receives
    out.setsockopt(_SOL_PACKET, _PACKET_VNET_HDR, 1)  # frames keep the TAP's virtio-net header
    out.setsockopt(socket.SOL_SOCKET, 32, _SNDBUF)  # SO_SNDBUFFORCE: a burst must not block the loop
    out.bind((dev, 0))
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK)
    signal.set_wakeup_fd(wake_w)
    flags = {signal.SIGUSR1: False, signal.SIGUSR2: False, signal.SIGTERM: False}

    def _on_signal(sig, _frm) -> None:
        flags[sig] = True

    for sig in flags:
        signal.signal(sig, _on_signal)
    if daemon:  # only now: a live change may SIGUSR1 the printed pid at once, and its default kills
        _daemonize(log_path(control))
    status = lag_path(control)
    hist = LagHistogram()
    counts = hist.counts
    publish_at = None  # when to write the status next (None: nothing new to write)
    queue: deque[tuple[float, bytes]] = deque()
    last_release = 0.0
    clock, read, send, wait = time.monotonic, os.read, out.send, select.select  # hot loop: locals
    rand, count = rng.random, counts.get
    fds = [fd, wake_r]
    while not flags[signal.SIGTERM]:
        timeout = None
        if queue:
            timeout = queue[0][0] - clock()
            if timeout <= _SPIN_S:  # close to the due time: poll instead of sleeping through a wake-up
                timeout = 0.0
                while not wait([fd], [], [], 0)[0] and clock() < queue[0][0]:
                    pass
            else:
                timeout -= _SPIN_S
        if publish_at is not None:
            until = max(0.0, publish_at - clock())
            timeout = until if timeout is None else min(timeout, until)
        ready, _, _ = wait(fds, [], [], timeout)
        if wake_r in ready:
            while True:
                try:
                    read(wake_r, 64)
                except BlockingIOError:
                    break
            if flags[signal.SIGUSR1]:
                flags[signal.SIGUSR1] = False
                imp = Impairment.read(control)
                set_offload(fd, imp.loss_pct == 0)
            if flags[signal.SIGUSR2]:  # a reader wants the lateness now
                flags[signal.SIGUSR2] = False
                publish_at = 0.0
        if fd in ready:
            now = clock()
            delay, jitter, loss = imp.delay_us / 1e6, imp.jitter_us / 1e6, imp.loss_pct / 100.0
            for _ in range(_BATCH):
                try:
                    frame = read(fd, 65600)
                except BlockingIOError:
                    break
                if loss and rand() < loss:
                    hist.dropped_loss += 1
                    continue
                release = now + delay + (jitter * (2.0 * rand() - 1.0) if jitter else 0.0)
                if release < last_release:
                    release = last_release
                last_release = release
                queue.append((release, frame))
        now = clock()
        while queue and queue[0][0] <= now:
            due, frame = queue.popleft()
            b = int((clock() - due) * BINS_PER_S)
            counts[b] = count(b, 0) + 1
            try:
                send(frame)
            except OSError:  # ENOBUFS: the veth's queue is full -- a tail drop, as on a real link
                hist.dropped_full += 1
            if publish_at is None:
                publish_at = now + _PUBLISH_S
        if publish_at is not None and now >= publish_at:
            _publish(status, hist, imp)
            publish_at = None
    _publish(status, hist, imp)


def _publish(path: Path, hist: LagHistogram, imp: Impairment) -> None:
    hist.seq += 1
    hist.delay_us, hist.jitter_us = imp.delay_us, imp.jitter_us
    write_lag(path, hist)


def log_path(control: Path) -> Path:
    """Where a daemonized relay writes its errors (``…a-b.ctl.json`` -> ``…a-b.relay.log``)."""
    return control.with_name(control.name.removesuffix(".ctl.json") + ".relay.log")


def _daemonize(log: Path) -> None:
    """Fork; the parent prints the child's pid and exits. The child lets go of the builder's
    stdin, stdout and stderr (a builder whose output is a pipe, ``net up | tee``, would otherwise
    wait for an EOF that never comes) and writes errors to ``log`` instead."""
    pid = os.fork()
    if pid:
        print(pid, flush=True)
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    err = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for fd, to in ((0, null), (1, null), (2, err)):
        os.dup2(to, fd)
    os.close(null)
    os.close(err)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="harness.network.relay")
    p.add_argument("--tap", required=True)
    p.add_argument("--dev", required=True)
    p.add_argument("--control", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", required=True, help="the network's prefix, so a sweep finds only its own relays")
    p.add_argument("--daemon", action="store_true", help="fork when ready and print the relay's pid")
    a = p.parse_args(argv)
    run(a.tap, a.dev, a.control, a.seed, daemon=a.daemon)


if __name__ == "__main__":
    main()
