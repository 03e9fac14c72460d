"""Test scaffolding: a ``FakeServer`` on 127.0.0.1 in a background thread of the test process, so a
test can script it per request (``mode_for``) and read what it received (``bodies``)."""

from __future__ import annotations

import asyncio
import socket
import threading

from aiohttp import web

from harness.loadgen.fakeserver import FakeServer


class ServerThread:
    """Runs a ``FakeServer`` on 127.0.0.1 (or on ``sock``, a listening socket: one made in a network
    namespace, say) in a background thread; ``url`` once started. A context manager."""

    def __init__(self, server: FakeServer, port: int = 0, sock: socket.socket | None = None) -> None:
        self.server, self.port, self.sock = server, port, sock
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._runner: web.AppRunner | None = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as exc:  # surfaced by __enter__
            self._error = exc
        self._ready.set()
        if self._error is None:
            self._loop.run_forever()
        if self._runner is not None:
            self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.server.app(), handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        if self.sock is not None:
            await web.SockSite(self._runner, self.sock).start()
            host, port = self.sock.getsockname()[:2]
            self.url = f"http://{host}:{port}"
            return
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(120):  # generous: a busy machine can starve the thread for seconds
            raise RuntimeError("fake server thread did not start in 120 s")
        if self._error is not None:
            self._thread.join(10)
            raise RuntimeError(f"fake server did not start: {self._error!r}") from self._error
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
