"""Failures fail and nothing hangs: a raising prefill, cancelled work, and links that change, go down
and come back, against hand-computed times on the virtual clock."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from harness.config.links import ModelledLink
from harness.model.cost import InstanceCost
from harness.model.presets import load_hardware, load_model
from harness.records import STATUS_ERROR, STATUS_OK
from harness.scenario import load_scenario
from harness.serving import FluidLink, PrefillInstance, run_virtual
from harness.serving.config import prepare
from harness.serving.run import run_topology
from harness.serving.site import ServeRequest, Site
from harness.serving.transport import FluidTransport, LinkDown
from harness.traces.frame import Trace

REPO = Path(__file__).resolve().parent.parent
GB = 1e9  # bytes; an 8 Gbps link moves 1e9 B/s


@pytest.fixture(scope="module")
def h20() -> InstanceCost:
    return InstanceCost(load_model("kimi-1t-hybrid"), load_hardware("H20"))


class FailingCost:
    """A fault that cannot be caused for real: the cost model raising once ``broken`` is set."""

    def __init__(self, cost: InstanceCost) -> None:
        self.cost, self.broken = cost, False

    def __getattr__(self, name):
        return getattr(self.cost, name)

    def prefill_time_s(self, new_tokens: int, cached_tokens: int = 0) -> float:
        if self.broken:
            raise RuntimeError("cost model failed")
        return self.cost.prefill_time_s(new_tokens, cached_tokens)


# ---------------------------------------------------------------------------------------------- prefill
@pytest.mark.parametrize("batch_tokens", [0, 2500])
def test_a_raising_prefill_fails_its_batch_and_every_queued_request(h20, batch_tokens):
    cost = FailingCost(h20)
    inst = PrefillInstance("p0", cost, None, max_batch_tokens=batch_tokens)

    async def main():
        # a runs alone (3000 tokens > 2500); [b c] (or b, then c) and d are queued behind it.
        jobs = [asyncio.ensure_future(inst.prefill(n, [])) for n in (3000, 1000, 1000, 1000)]
        await asyncio.sleep(0.1)
        cost.broken = True  # a's time is already known; the next prefill to start raises
        results = await asyncio.gather(*jobs, return_exceptions=True)
        depth, load = inst.queue_depth, inst.load_s(asyncio.get_running_loop().time())
        cost.broken = False
        after = await inst.prefill(1000, [])  # the instance still serves
        return results, depth, load, after

    (a, *rest), depth, load, after = run_virtual(main())
    assert a.end_s == pytest.approx(h20.prefill_time_s(3000), abs=1e-12)
    assert all(isinstance(r, RuntimeError) and "cost model failed" in str(r) for r in rest)
    assert (depth, load) == (0, 0.0)
    assert after.start_s == a.end_s and after.end_s == pytest.approx(a.end_s + h20.prefill_time_s(1000))


def _trace(inputs, arrivals) -> Trace:
    n = len(inputs)
    return Trace(
        arrival_s=np.asarray(arrivals, float),
        input_tokens=np.asarray(inputs, dtype=np.int64),
        output_tokens=np.full(n, 4, dtype=np.int64),
        hash_values=np.zeros(0, dtype=np.int64),
        hash_offsets=np.zeros(n + 1, dtype=np.int64),
    )


def test_simulate_records_a_failed_prefill_as_an_error_and_finishes():
    setup = prepare(load_scenario(REPO / "workloads" / "paper-case-study.toml"))

    class FailingLater(FailingCost):  # fine when the first prompts arrive, raising for any later prefill
        first: float | None = None

        def prefill_time_s(self, new_tokens: int, cached_tokens: int = 0) -> float:
            now = asyncio.get_running_loop().time()
            self.first = now if self.first is None else self.first
            self.broken = now > self.first
            return super().prefill_time_s(new_tokens, cached_tokens)

    stack = replace(setup.stack, remote=FailingLater(setup.stack.remote))
    # Six long prompts (> t = 19.3K) for the 4 PrfaaS instances: four start at once, two queue behind
    # and fail when their turn comes. The two short ones prefill locally.
    trace = _trace([40_000] * 6 + [5_000] * 2, [0.0] * 8)
    records: list = []
    run_topology(stack, setup.topologies["prfaas"], trace, sink=records.append)
    by_route: dict = {}
    for r in records:
        by_route.setdefault((r.route, r.status, r.error_class), []).append(r)
    assert len(records) == 8  # every request ended, none hangs
    assert sorted((k, len(v)) for k, v in by_route.items()) == [
        (("local", STATUS_OK, None), 2),
        (("remote", STATUS_ERROR, "RuntimeError"), 2),
        (("remote", STATUS_OK, None), 4),
    ]
    failed = by_route[("remote", STATUS_ERROR, "RuntimeError")]
    assert all(r.first_token_s is None and "cost model failed" in r.error_message for r in failed)


# ---------------------------------------------------------------------------------------------- cancelled work
def test_a_cancelled_prefill_takes_its_kv_transfer_off_the_link(h20):
    # Two prefills on two instances push KV over a link as fast as one prefill produces it: together
    # they fall behind production. Cancelling the first mid-prefill must free the link for the second.
    nbytes = h20.kv_bytes(20_000)
    duration = h20.prefill_time_s(20_000)
    rate = nbytes / duration  # bytes/s: the link carries exactly one transfer's production
    gbps = rate * 8 / 1e9

    async def main(cancel: bool):
        transport = FluidTransport({("remote", "local"): ModelledLink(bandwidth_gbps=gbps)})
        site = Site("remote", [PrefillInstance("p0", h20), PrefillInstance("p1", h20)])
        a = asyncio.ensure_future(site.prefill(ServeRequest("a", 0, 20_000, 1), "local", transport, nbytes))
        await asyncio.sleep(0)
        b = asyncio.ensure_future(site.prefill(ServeRequest("b", 0, 20_000, 1), "local", transport, nbytes))
        if cancel:
            await asyncio.sleep(duration / 2)
            a.cancel()
            await asyncio.gather(a, return_exceptions=True)
            assert transport.link("remote", "local").backlog_bytes(asyncio.get_running_loop().time()) < nbytes
        result = await b
        link = transport.link("remote", "local")
        return result, link.bytes_total, link.transfers

    shared, _, _ = run_virtual(main(False))
    alone, total, count = run_virtual(main(True))
    shared_bytes = rate / 2 * duration / 2  # what b moved while a shared the link
    assert alone.transfer_end_s == pytest.approx(duration / 2 + (nbytes - shared_bytes) / rate, rel=1e-9)
    assert shared.transfer_end_s == pytest.approx(2 * duration, rel=1e-9)  # half the link throughout
    assert (total, count) == (nbytes, 1)  # a's transfer never completed, and never counts


# ---------------------------------------------------------------------------------------------- link changes
def _run_link(changes, start_message_at: float | None = None):
    """One 1e9-byte transfer (all produced at 0) on an 8 Gbps, 5 ms link; ``changes`` are
    (time, gbps, up, returns). Returns (transfer end or the exception, message arrival)."""

    async def main():
        loop = asyncio.get_running_loop()
        link = FluidLink("x", 8.0, 5.0)
        for t, gbps, up, returns in changes:
            loop.call_at(t, lambda g=gbps, u=up, r=returns: link.set_state(g, 5.0, u, returns=r))

        async def message():
            await asyncio.sleep(start_message_at)
            await link.carry_message()
            return loop.time()

        msg = asyncio.ensure_future(message()) if start_message_at is not None else None
        try:
            end = (await link.send(int(GB), 0.0, 0.0))[1]
        except LinkDown as exc:
            end = exc
        arrived = await asyncio.gather(msg, return_exceptions=True) if msg else [None]
        return end, arrived[0]

    return run_virtual(main())


def test_a_rate_cut_slows_a_transfer_for_as_long_as_it_lasts():
    end, _ = _run_link([(0.4, 2.0, True, True), (1.4, 8.0, True, True)])
    # 0.4e9 B by 0.4 s; 0.25e9 B/s for 1 s; the last 0.35e9 B at 1e9 B/s; plus 5 ms.
    assert end == pytest.approx(0.4 + 1.0 + 0.35 + 0.005, abs=1e-9)


def test_a_down_link_stalls_transfers_and_messages_until_it_comes_back():
    end, arrived = _run_link([(0.4, 8.0, False, True), (1.4, 8.0, True, True)], start_message_at=0.5)
    assert end == pytest.approx(1.0 + 1.0 + 0.005, abs=1e-9)  # one second of down added
    assert arrived == pytest.approx(1.4 + 0.005, abs=1e-9)  # the message waited for the link


def test_a_link_down_for_good_fails_what_waits_on_it_instead_of_hanging():
    end, arrived = _run_link([(0.4, 8.0, False, False)], start_message_at=0.5)
    assert isinstance(end, LinkDown) and isinstance(arrived, LinkDown)


# ---------------------------------------------------------------------------------------------- the serve path
class _FailingCache:
    """A fault that cannot be caused for real: the prefix cache raising as a prefill of
    ``fail_tokens`` starts (``lookup`` runs only then; the router's ``peek`` still works)."""

    def __init__(self, cache, fail_tokens: int) -> None:
        self.cache, self.fail_tokens = cache, fail_tokens

    def __getattr__(self, name):
        return getattr(self.cache, name)

    def lookup(self, hash_ids, prompt_tokens: int) -> int:
        if prompt_tokens == self.fail_tokens:
            raise RuntimeError("prefix cache failed")
        return self.cache.lookup(hash_ids, prompt_tokens)


@contextlib.contextmanager
def _site_server(tmp_path: Path, speedup: float):
    """The local site of a one-prefill-instance homogeneous topology, served over real HTTP on
    loopback by ``SiteServer`` in a thread (on serve's scaled clock); yields (router URL, node)."""
    from aiohttp import web

    from harness.config.runs import EmulationSpec
    from harness.emulation.clock import run_scaled
    from harness.emulation.deployment import build_nodes
    from harness.emulation.kvlink import KvReceiver, KvSender
    from harness.emulation.peers import Peers
    from harness.emulation.server import SiteServer
    from harness.emulation.wire import WallClock

    text = (REPO / "workloads" / "paper-case-study.toml").read_text().split("\n[topologies")[0]
    text += "\n[topologies.homogeneous]\nkind = 'homogeneous'\nlocal_instances = 2\nn_p = 1\nn_d = 1\n"
    (tmp_path / "one.toml").write_text(text)
    setup = prepare(load_scenario(tmp_path / "one.toml"))
    started: queue.Queue = queue.Queue()
    stop = threading.Event()

    async def serve() -> None:
        receiver, sender, peers, clock = KvReceiver(), KvSender(), Peers(), WallClock.now(speedup)
        kv = await receiver.start("127.0.0.1", 0)
        nodes = build_nodes(
            "local", setup.stack, setup.topologies, sender=sender, receiver=receiver, peers=peers,
            clock=clock, kv_addrs={"local": kv}, http_urls={"local": "http://127.0.0.1:0"},
            byte_scale=1.0, layers=8,
        )  # fmt: skip
        server = SiteServer(
            "local", nodes, spec=EmulationSpec(speedup=speedup), model="m", clock=clock,
            receiver=receiver, sender=sender, peers=peers, kv_addr=kv,
        )  # fmt: skip
        runner = web.AppRunner(server.app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        started.put((f"http://127.0.0.1:{port}/homogeneous/v1", nodes["homogeneous"]))
        try:
            while not stop.is_set():
                await asyncio.sleep(0.05 * speedup)
        finally:
            await runner.cleanup()
            await peers.close()
            await sender.close()
            await receiver.close()

    thread = threading.Thread(target=run_scaled, args=(serve(),), kwargs={"speedup": speedup})
    thread.start()
    try:
        yield started.get(timeout=60)
    finally:
        stop.set()
        thread.join(timeout=30)


def test_over_http_a_raising_prefill_fails_the_queued_requests_with_recorded_errors(tmp_path):
    import aiohttp

    from harness.loadgen.client import Client, Job
    from harness.loadgen.config import Endpoint, Timeouts
    from harness.loadgen.schedule import MEASURE

    with _site_server(tmp_path, speedup=2.0) as (url, node):
        (inst,) = node.site.prefill_instances
        inst.cache = _FailingCache(inst.cache, fail_tokens=12_000)
        client = Client(
            Endpoint(name="homogeneous", model="m", url=url), run_id="t", t0=time.monotonic(),
            wall_offset_s=time.time(), timeouts=Timeouts(first_token_s=120, total_s=300),
        )  # fmt: skip

        async def main():
            async with aiohttp.ClientSession() as session:
                sent = []
                # a (fine) prefills for ~3 s of wall time, ample for b (raising) and c (fine) to queue.
                for i, (tokens, depth) in enumerate([(40_000, 1), (12_000, 2), (10_000, 3)]):
                    prompt = " ".join(f"{'abc'[i]}{k}" for k in range(tokens))
                    job = client.prepare(Job(i, i, 0.0, prompt, tokens, 2, MEASURE))
                    sent.append(asyncio.ensure_future(client.execute(session, job)))
                    deadline = time.monotonic() + 60  # a safety net against a hang
                    while inst.queue_depth < depth:  # the server has queued it: the order is fixed
                        assert time.monotonic() < deadline, f"request {i} was never queued"
                        await asyncio.sleep(0.01)
                return await asyncio.gather(*sent)

        a, b, c = asyncio.run(main())
    assert (a.status, a.output_tokens_received) == (STATUS_OK, 2)
    for r in (b, c):  # b raised; c was queued behind it: both end, with the error as data
        assert (r.status, r.error_class) == (STATUS_ERROR, "http_500")
        assert "RuntimeError: prefix cache failed" in r.error_message
    assert (inst.queue_depth, node.waiting) == (0, 0)


def test_a_cancelled_prefill_aborts_its_kv_transfer_over_tcp(h20):
    # serve's transport: KV leaves layer by layer over real TCP as the prefill produces it.
    from harness.emulation.kvlink import KvReceiver, KvSender
    from harness.emulation.transport import EmulatedTransport

    async def main():
        receiver = KvReceiver()
        addr = await receiver.start("127.0.0.1", 0)
        sender = KvSender()
        transport = EmulatedTransport(sender, {"local": addr}, byte_scale=1e-3, layers=8)
        site = Site("remote", [PrefillInstance("p0", h20)])
        nbytes = h20.kv_bytes(20_000)
        duration = h20.prefill_time_s(20_000)  # about 3.7 s
        req = ServeRequest("ab" * 16, 0, 20_000, 1)  # a transfer id is 32 hex digits
        task = asyncio.ensure_future(site.prefill(req, "local", transport, nbytes))
        await asyncio.sleep(duration / 2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        at_cancel = sender.bytes_sent
        await asyncio.sleep(duration / 2 + 0.5)  # past the prefill's end: nothing more leaves
        try:
            return at_cancel, sender.bytes_sent, sender.in_flight, transport.emulated_bytes(nbytes)
        finally:
            await sender.close()
            await receiver.close()

    at_cancel, later, in_flight, total = asyncio.run(main())
    assert 0 < at_cancel < total  # some layers had left, not all
    assert (later, in_flight) == (at_cancel, 0)
