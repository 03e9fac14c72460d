"""Built-in measurements between sites (no iperf): TCP goodput, TCP round-trip time, UDP loss.

Sockets are created inside the sites' namespaces (``Network.socket``) and driven by threads of this
process; the kernel does the copying, so one Python process sustains well over 1 Gbit/s.
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from harness.errors import CapabilityError
from harness.network.realtime import prioritise, wakeup_latency_held
from harness.network.render import ETH_HEADER

TCP_IP_HEADERS = 52  # IPv4 20 + TCP 20 + timestamps option 12
_CHUNK = 256 << 10
_TIMEOUT_S = 10.0  # a connect or a round trip that takes longer means the path is broken


@dataclass(frozen=True)
class Measurement:
    """One configured-versus-measured figure; ``ok`` is None when there is no target to meet."""

    direction: str
    metric: str
    unit: str
    configured: float
    expected: float
    measured: float
    tolerance: str
    ok: bool | None


def expected_goodput_mbit(rate_mbit: float, mtu: int) -> float:
    """TCP payload rate a rate-limited link carries: every full frame of mtu+14 bytes (what TBF
    counts on a veth) holds mtu-52 bytes of payload."""
    return rate_mbit * (mtu - TCP_IP_HEADERS) / (mtu + ETH_HEADER)


def _listener(net, site: str, kind: int = socket.SOCK_STREAM) -> socket.socket:
    s = net.socket(site, socket.AF_INET, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((net.address(site), 0))
    if kind == socket.SOCK_STREAM:
        s.listen(1)
    return s


def goodput_mbit(net, src: str, dst: str, seconds: float = 1.5, warmup_s: float = 0.5) -> float:
    """Bulk TCP from src to dst; payload bits the receiver got per second, counted from ``warmup_s``
    after the start (past slow start) for ``seconds``."""
    srv = _listener(net, dst)
    received = [0]

    def receive() -> None:
        try:
            conn, _ = srv.accept()
        except OSError:  # shut down below: the sender never connected
            return
        with conn:
            buf = bytearray(1 << 20)
            while n := conn.recv_into(buf):
                received[0] += n

    def send() -> None:
        data = b"\0" * _CHUNK
        with contextlib.suppress(OSError):  # shutdown() below ends a blocked sendall
            while True:
                cli.sendall(data)

    rx = threading.Thread(target=receive, daemon=True)
    rx.start()
    cli = net.socket(src, socket.AF_INET, socket.SOCK_STREAM)
    tx = threading.Thread(target=send, daemon=True)
    try:
        cli.settimeout(_TIMEOUT_S)
        cli.connect(srv.getsockname())
        tx.start()
        time.sleep(warmup_s)
        t0, b0 = time.monotonic(), received[0]
        time.sleep(seconds)
        t1, b1 = time.monotonic(), received[0]
    finally:
        with contextlib.suppress(OSError):
            cli.shutdown(socket.SHUT_RDWR)
        if tx.ident is not None:
            tx.join(10)
        cli.close()
        _end_accept(srv)
        rx.join(10)
        srv.close()
    return (b1 - b0) * 8 / (t1 - t0) / 1e6


def _end_accept(srv: socket.socket) -> None:
    """Wake a thread still blocked in ``srv.accept()`` (close alone does not): after a failed
    connect it would otherwise wait forever, holding the site's namespace alive."""
    with contextlib.suppress(OSError):
        srv.shutdown(socket.SHUT_RDWR)


def rtt_ms(net, src: str, dst: str, samples: int = 20) -> list[float]:
    """Round trips of a 1-byte TCP ping-pong (Nagle off) from src to an echo in dst, in ms. Both
    ends run on their own threads at real-time priority where allowed (as the relay does), so what
    is measured is the network, not how long a busy host leaves this process waiting for a CPU; and
    idle cores poll instead of halting meanwhile (``wakeup_latency_held``), nor how long one takes to
    wake."""
    return interleaved_rtt_ms([(net, src, dst)], samples)[0]


def interleaved_rtt_ms(paths: Sequence[tuple[Any, str, str]], samples: int = 20) -> list[list[float]]:
    """``rtt_ms`` over several (net, src, dst) paths at once, their ping-pongs taking turns, so that
    every path is measured through the same moments of a host whose speed drifts (a VM under TCG):
    a comparison between them is not a comparison between two stretches of time."""
    out: list[list[float]] = [[] for _ in paths]
    failed: list[BaseException] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(wakeup_latency_held())  # the endpoints' wake-ups are not the network's
        clients = [stack.enter_context(_echo_pair(net, src, dst)) for net, src, dst in paths]

        def ping() -> None:
            prioritise()
            try:
                for _ in range(samples + 2):
                    for cli, got in zip(clients, out, strict=True):
                        t = time.perf_counter()
                        cli.sendall(b"x")
                        if not cli.recv(1):
                            raise ConnectionError("the echo closed the connection")
                        got.append((time.perf_counter() - t) * 1e3)
            except BaseException as exc:  # re-raised in the caller's thread
                failed.append(exc)

        pinger = threading.Thread(target=ping, daemon=True)
        pinger.start()
        pinger.join()
    if failed:
        raise failed[0]
    return [got[2:] for got in out]  # the first exchanges pay for ARP and cold caches


@contextlib.contextmanager
def _echo_pair(net, src: str, dst: str) -> Iterator[socket.socket]:
    """A client socket in src connected to a one-byte echo (a real-time thread) in dst."""
    srv = _listener(net, dst)

    def echo() -> None:
        prioritise()
        try:
            conn, _ = srv.accept()
        except OSError:  # shut down below: the client never connected
            return
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with contextlib.suppress(OSError):
                while b := conn.recv(1):
                    conn.sendall(b)

    th = threading.Thread(target=echo, daemon=True)
    th.start()
    cli = net.socket(src, socket.AF_INET, socket.SOCK_STREAM)
    try:
        cli.settimeout(_TIMEOUT_S)
        cli.connect(srv.getsockname())
        cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        yield cli
    finally:
        cli.close()
        _end_accept(srv)
        th.join(10)
        srv.close()


_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_UDP_RCVBUF = 8 << 20


def _big_receive_buffer(sock: socket.socket) -> None:
    """An 8 MiB receive buffer for a UDP measurement, so that a receiver that falls behind (a busy
    host, the netem VM under TCG) does not count its own overflow as the link's loss. SO_RCVBUF is
    capped at net.core.rmem_max (208 KiB by default, 416 KiB granted: ~330 datagrams of 200 bytes);
    as root SO_RCVBUFFORCE is not."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _UDP_RCVBUF)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _UDP_RCVBUF)


def loss_pct(
    net, src: str, dst: str, packets: int = 20000, pps: float = 20000.0, wait_s: float = 0.3
) -> float:
    """Send ``packets`` UDP datagrams src->dst at ``pps``; the percentage that never arrive."""
    rx = _listener(net, dst, socket.SOCK_DGRAM)
    _big_receive_buffer(rx)
    got = [0]
    stop = threading.Event()

    def receive() -> None:
        rx.settimeout(0.05)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                while rx.recv(2048):
                    got[0] += 1

    th = threading.Thread(target=receive, daemon=True)
    th.start()
    tx = net.socket(src, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        dest = rx.getsockname()
        payload = b"\0" * 200
        start = time.monotonic()
        for i in range(packets):
            due = start + i / pps
            if (lag := due - time.monotonic()) > 0:
                time.sleep(lag)
            tx.sendto(payload, dest)
        time.sleep(wait_s + net.link_spec(src, dst).delay_ms / 1e3)
    finally:
        stop.set()
        th.join(5)
        tx.close()
        rx.close()
    return 100.0 * (packets - got[0]) / packets


def arrival_order(net, src: str, dst: str, count: int, gap_s: float) -> list[int]:
    """Send ``count`` numbered UDP datagrams src->dst, ``gap_s`` apart; their numbers in arrival order
    (a datagram that never came is missing). For jitter: does the link keep packets in order?"""
    rx = _listener(net, dst, socket.SOCK_DGRAM)
    _big_receive_buffer(rx)
    rx.settimeout(2.0)
    got: list[int] = []

    def receive() -> None:
        with contextlib.suppress(TimeoutError):
            while len(got) < count:
                got.append(int.from_bytes(rx.recv(64), "big"))

    th = threading.Thread(target=receive, daemon=True)
    th.start()
    tx = net.socket(src, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        start = time.monotonic()
        for i in range(count):
            if (lag := start + i * gap_s - time.monotonic()) > 0:
                time.sleep(lag)
            tx.sendto(i.to_bytes(8, "big"), rx.getsockname())
        th.join(30)
    finally:
        tx.close()
        rx.close()
    return got


def reordered(order: list[int]) -> int:
    """How many arrived after a datagram sent later than them."""
    highest, late = -1, 0
    for n in order:
        late += n < highest
        highest = max(highest, n)
    return late


def check_direction(net, src: str, dst: str, *, seconds: float = 1.5) -> list[Measurement]:
    """Measure one direction against its spec: goodput (rate-limited, loss-free directions), RTT,
    and loss (lossy directions). Tolerances: goodput 5%, RTT 1 ms, loss 0.3 points."""
    try:
        return _check(net, src, dst, seconds)
    except TimeoutError:
        raise CapabilityError(
            f"{src}->{dst}: no answer within {_TIMEOUT_S:g} s, the path is down or stalled (see `net status`)"
        ) from None
    except OSError as exc:  # e.g. EHOSTUNREACH: a down link drops ARP too
        raise CapabilityError(
            f"{src}->{dst}: {exc.strerror or exc}, the path is down (see `net status`)"
        ) from None


def _check(net, src: str, dst: str, seconds: float) -> list[Measurement]:
    spec, back = net.link_spec(src, dst), net.link_spec(dst, src)
    name = f"{src}->{dst}"
    out = []
    if spec.rate_mbit is not None and spec.loss_pct == 0:
        exp = expected_goodput_mbit(spec.rate_mbit, spec.mtu)
        warm = max(0.5, 20 * (spec.delay_ms + back.delay_ms) / 1e3)
        got = goodput_mbit(net, src, dst, seconds=seconds, warmup_s=warm)
        out.append(
            Measurement(
                name, "goodput", "Mbit/s", spec.rate_mbit, exp, got, "±5%", abs(got / exp - 1) <= 0.05
            )
        )
    if spec.loss_pct == 0 and back.loss_pct == 0:
        conf = spec.delay_ms + back.delay_ms
        got = statistics.median(rtt_ms(net, src, dst))
        out.append(
            Measurement(name, "rtt", "ms", conf, conf, got, "+1 ms", conf <= got + 0.05 <= conf + 1.05)
        )
    if spec.loss_pct > 0:
        got = loss_pct(net, src, dst)
        out.append(
            Measurement(
                name,
                "loss",
                "%",
                spec.loss_pct,
                spec.loss_pct,
                got,
                "±0.3 pt",
                abs(got - spec.loss_pct) <= 0.3,
            )
        )
    return out
