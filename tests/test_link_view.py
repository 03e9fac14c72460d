"""One link view (``harness.serving.transport.LinkView``): the fluid link of simulate and the meter of
serve mean the same by utilisation, and reading either one changes nothing."""

from __future__ import annotations

import asyncio

import pytest

from harness.emulation.kvlink import KvReceiver, KvSender, new_transfer_id
from harness.emulation.transport import ReceivedLinkMeter
from harness.serving import FluidLink, run_virtual

# A 8 Gbps link moves 1e9 bytes/s. Times are binary fractions so that they add up exactly.
CAPACITY = 1e9
DELAY_S = 0.0625
NBYTES = 500_000_000  # on the wire over [0, 0.5], arrived over [0.0625, 0.5625]
# The same transfer as a receiver sees it: four frames of 125 MB, the last as the last byte lands.
FRAMES = [(DELAY_S + 0.125 * k, NBYTES // 4) for k in (1, 2, 3, 4)]
# (read time, utilisation): bytes arrived in the trailing second / (capacity x 1 s), by hand.
EXPECTED = [
    (0.5625, 0.5),  # (-0.4375, 0.5625]: the whole transfer
    (1.0625, 0.5),  # (0.0625, 1.0625]: the whole transfer
    (1.3125, 0.25),  # (0.3125, 1.3125]: the half that arrived after 0.3125
    (1.5625, 0.0),  # (0.5625, 1.5625]: nothing
]


def _fluid_link(reads: list[float] = ()) -> FluidLink:
    """The transfer through a fluid link; ``reads`` are times at which to read it while it runs."""
    link = FluidLink("remote->local", 8, delay_ms=DELAY_S * 1e3)

    async def reader() -> None:
        loop = asyncio.get_running_loop()
        for t in reads:
            await asyncio.sleep(t - loop.time())
            link.utilisation(loop.time())
            link.backlog_bytes(loop.time())

    async def main() -> None:
        await asyncio.gather(link.send(NBYTES, 0.0, 0.0), reader())

    run_virtual(main())
    return link


def _meter(reads: list[float] = ()) -> ReceivedLinkMeter:
    """The same transfer through serve's meter, fed frame by frame as its receiver would."""
    receiver = KvReceiver()
    meter = ReceivedLinkMeter(receiver, capacity_bytes_s=CAPACITY, byte_scale=1.0)
    events = sorted([(t, 1, n) for t, n in FRAMES] + [(t, 0, 0) for t in reads])
    for t, is_frame, n in events:
        if is_frame:
            assert receiver.on_bytes is not None
            receiver.on_bytes(t, n)  # what KvReceiver does as each frame lands
        else:
            meter.utilisation(t)
            meter.backlog_bytes(t)
    return meter


def test_fluid_link_and_received_meter_report_the_same_utilisation():
    link, meter = _fluid_link(), _meter()
    assert link.capacity == meter.capacity == CAPACITY
    for t, expected in EXPECTED:
        assert link.utilisation(t) == pytest.approx(expected, abs=1e-12), f"fluid at {t}"
        assert meter.utilisation(t) == pytest.approx(expected, abs=1e-12), f"meter at {t}"


def test_fluid_link_backlog_is_bytes_begun_and_not_yet_delivered():
    link = _fluid_link()
    assert link.backlog_bytes(0.0625) == pytest.approx(NBYTES)  # nothing has arrived yet
    assert link.backlog_bytes(0.3125) == pytest.approx(NBYTES / 2)  # arriving at 1e9 B/s since 0.0625
    assert link.backlog_bytes(0.5625) == pytest.approx(0.0, abs=1e-3)


def test_reading_a_link_view_changes_nothing_it_reports():
    # Read one copy every 10 ms while the transfer runs (as a /metrics scrape or the router would);
    # it must then report exactly what a copy nobody read reports.
    reads = [0.01 * k for k in range(1, 200)]
    for read, unread in ((_fluid_link(reads), _fluid_link()), (_meter(reads), _meter())):
        for t in [0.2, *(t for t, _ in EXPECTED), 1.7]:
            assert read.utilisation(t) == unread.utilisation(t)
            assert read.utilisation(t) == read.utilisation(t)


def test_meter_counts_the_model_bytes_a_real_receiver_takes_in():
    # Real KV frames over loopback TCP: the meter sees each one land, in model bytes (emulated / scale).
    scale, nbytes = 0.001, 2_000_000

    async def main():
        rx, tx = KvReceiver(), KvSender(connections=2)
        meter = ReceivedLinkMeter(rx, capacity_bytes_s=1e9, byte_scale=scale, window_s=3600.0)
        addr = await rx.start("127.0.0.1", 0)
        try:
            obs = await tx.send(new_transfer_id(), addr, nbytes, ready_times_s=[0.0] * 4)
            return meter, obs
        finally:
            await tx.close()
            await rx.close()

    meter, obs = asyncio.run(main())
    # Every byte arrived between the first and last byte, well inside the hour-long window.
    assert meter.utilisation(obs.last_byte_s) == pytest.approx(nbytes / scale / (1e9 * 3600.0), rel=1e-12)
    assert meter.utilisation(obs.first_byte_s - 1.0) == 0.0
    assert meter.backlog_bytes(obs.last_byte_s) == 0.0
    with pytest.raises(ValueError, match="already has a link meter"):
        ReceivedLinkMeter(meter.receiver, capacity_bytes_s=1e9, byte_scale=scale)
