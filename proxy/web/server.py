"""The DICOMweb extension: an aiohttp server on its own thread and event loop.

Rule 1: it starts only when ``[dicomweb]`` is configured and some route has
        ``dicomweb = true``; it binds ``[dicomweb] host:port`` (port 0: a free one) before
        the proxy reports itself started, and logs ``dicomweb_started`` with the bound port.
        A port it cannot bind stops the proxy's start (``OSError`` naming ``[dicomweb]``).
Rule 2: the loop (uvloop when installed, ``proxy.dicom.io.run``) only parses requests and
        writes answers; blocking work (archive queries) runs in the server's worker pool of
        ``max_requests`` threads (``proxy.web.qido_rs`` Rule 1).
Rule 3: ``ROUTES`` is the one table binding URL paths under ``/dicomweb/{route}`` to the
        services; every request passes the middlewares of ``proxy.web.http``, outermost
        first: observe (the ``operation`` event), CORS, errors, bearer tokens.
Rule 4: a client that hangs up cancels its request's handler (``handler_cancellation``):
        its search is cancelled, the archives get a C-CANCEL, the line says 499.
Rule 5: stopping cancels the running searches (their archives get a C-CANCEL), lets their
        handlers answer, closes the listening socket and ends the thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from proxy.config import DicomwebConfig
from proxy.dicom import io
from proxy.observe import events as ev
from proxy.services import Services
from proxy.web import http
from proxy.web.qido_rs import QidoRs
from proxy.web.stow_rs import StowRs
from proxy.web.wado_rs import WadoRs

# (method, path under /dicomweb/{route}, service). WADO-RS and STOW-RS rows come here.
ROUTES: list[tuple[str, str, str]] = [
    ("GET", "/studies", "QIDO-RS"),
    ("GET", "/series", "QIDO-RS"),
    ("GET", "/instances", "QIDO-RS"),
    ("GET", "/studies/{study}/series", "QIDO-RS"),
    ("GET", "/studies/{study}/instances", "QIDO-RS"),
    ("GET", "/studies/{study}/series/{series}/instances", "QIDO-RS"),
    ("GET", "/studies/{study}", "WADO-RS"),
    ("GET", "/studies/{study}/series/{series}", "WADO-RS"),
    ("GET", "/studies/{study}/series/{series}/instances/{sop}", "WADO-RS"),
    ("GET", "/studies/{study}/metadata", "WADO-RS metadata"),
    ("GET", "/studies/{study}/series/{series}/metadata", "WADO-RS metadata"),
    ("GET", "/studies/{study}/series/{series}/instances/{sop}/metadata", "WADO-RS metadata"),
    ("GET", "/studies/{study}/series/{series}/instances/{sop}/frames/{frames}",
     "WADO-RS frames"),
    ("GET", "/studies/{study}/series/{series}/instances/{sop}/bulkdata/{tag}",
     "WADO-RS bulkdata"),
    ("POST", "/studies", "STOW-RS"),
    ("POST", "/studies/{study}", "STOW-RS"),
]
_START_TIMEOUT = 30.0


def start(services: Services) -> Callable[[], None] | None:
    """The extension (``proxy.app.EXTENSIONS``): start the server when configured (Rule 1)."""
    settings = services.config.dicomweb
    routes = [r.called_ae for r in services.config.routes if r.dicomweb]
    if settings is None or not routes:
        return None
    server = Server(services, settings, routes)
    server.start()
    return server.stop


class Server:
    """One aiohttp application serving the DICOMweb routes (Rules 1-4)."""

    def __init__(self, services: Services, settings: DicomwebConfig,
                 routes: list[str]) -> None:
        self.services = services
        self.settings = settings
        self.routes = routes
        self.pool = ThreadPoolExecutor(max_workers=settings.max_requests,
                                       thread_name_prefix="dicomweb")
        self.qido = QidoRs(services, self.pool, settings.max_requests, settings.public_url)
        self.wado = WadoRs(services, self.pool, settings.public_url,
                           settings.metadata_cache_bytes)
        self.stow = StowRs(services, self.pool, settings.public_url)
        self.port = 0
        self._ready = threading.Event()
        self._error: OSError | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=io.run, args=(self._main,), name="dicomweb",
                                        daemon=True)

    def application(self) -> web.Application:
        bus = self.services.bus
        tokens = http.Tokens(self.settings.tokens_file) if self.settings.tokens_file else None
        app = http.application(self.settings, tokens, bus)
        handlers = {"QIDO-RS": self.qido.handle, "WADO-RS": self.wado.retrieve,
                    "WADO-RS metadata": self.wado.metadata, "WADO-RS frames": self.wado.frames,
                    "WADO-RS bulkdata": self.wado.bulkdata, "STOW-RS": self.stow.handle}
        for method, path, service in ROUTES:
            app.router.add_route(method, "/dicomweb/{route}" + path, handlers[service])
        return app

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT):
            raise OSError(f"[dicomweb] {self.settings.host}:{self.settings.port}: the HTTP "
                          f"server did not start within {_START_TIMEOUT:g}s")
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:       # the loop closed in between: nothing to stop
                pass
        self._thread.join(timeout=15.0)
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        # handler_cancellation: a client that hangs up cancels its handler, and so its
        # search (the archives get a C-CANCEL) instead of leaving it running for nobody.
        runner = web.AppRunner(self.application(), access_log=None, handle_signals=False,
                               shutdown_timeout=5.0, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self.settings.port)
        try:
            await site.start()
        except OSError as exc:
            self._error = OSError(exc.errno, f"[dicomweb] {self.settings.host}:"
                                             f"{self.settings.port}: {exc.strerror or exc}")
            self._ready.set()
            await runner.cleanup()
            return
        self.port = _bound_port(runner, self.settings.port)
        self.services.bus.emit(ev.DicomwebStarted(self.settings.host, self.port, self.routes))
        self._ready.set()
        await self._stopping.wait()
        self.qido.cancel_all()                       # Rule 4
        await runner.cleanup()


def _bound_port(runner: web.AppRunner, configured: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return configured
