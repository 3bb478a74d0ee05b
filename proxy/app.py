"""Composition root: config → observers, archive clients, handlers, listener.

The one table that binds pynetdicom's events to the proxy's handlers is
``HANDLERS`` below; nothing else registers DIMSE handlers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from pynetdicom import evt

from proxy.config import Config
from proxy.listener import Listener
from proxy.observe import events as ev
from proxy.observe.logs import LogObserver, PhiFilter, make_logger
from proxy.observe.metrics import MetricsObserver
from proxy.operations import echo, find
from proxy.operations.base import Services
from proxy.upstream import ArchiveClient, Peer

Handler = Callable[..., Any]

# pynetdicom event → handler(event, services). One row per DIMSE operation.
HANDLERS: list[tuple[Any, Handler]] = [
    (evt.EVT_C_ECHO, echo.handle),
    (evt.EVT_C_FIND, find.handle),
]

# Subsystems that extend the proxy (federation, retrieve, spool, health) add
# themselves here: each is called once with the Services and may add handlers
# or start threads; each returns an optional stop function.
Extension = Callable[[Services], Callable[[], None] | None]
EXTENSIONS: list[Extension] = []


class Proxy:
    """One running proxy: listener, observers, archive clients."""

    def __init__(self, config: Config, stream: IO[str] | None = None) -> None:
        self.config = config
        _quiet_pynetdicom()
        self.metrics = MetricsObserver(list(config.archives))
        self.logger = make_logger(config.log.format, config.log.level, stream)
        self.bus = ev.EventBus([LogObserver(self.logger, PhiFilter(config.log.phi)),
                                self.metrics])
        p = config.proxy
        self.archives = {
            name: ArchiveClient(Peer.of(a, p.ae_title), p.network_timeout, p.max_pdu_size)
            for name, a in config.archives.items()}
        self.destinations = {
            name: ArchiveClient(Peer.of(d, p.ae_title, p.dimse_timeout), p.network_timeout,
                                p.max_pdu_size)
            for name, d in config.destinations.items()}
        self._handlers: list[tuple[Any, ...]] = []
        self.listener = Listener(config, self.bus, self._handlers)
        self.services = Services(config, self.bus, self.listener, self.archives,
                                 self.destinations)
        self._stops: list[Callable[[], None]] = []
        self.address: tuple[str, int] | None = None
        self.metrics_port: int | None = None
        self._stopped = threading.Event()

    def start(self) -> tuple[str, int]:
        for extension in EXTENSIONS:
            stop = extension(self.services)
            if stop is not None:
                self._stops.append(stop)
        for event_type, handler in [*HANDLERS, *self.services.extras.get("handlers", [])]:
            self._handlers.append((event_type, handler, [self.services]))
        metrics_url = None
        if self.config.metrics.enabled:
            self.metrics_port = self.metrics.serve(self.config.metrics.host,
                                                   self.config.metrics.port)
            metrics_url = f"http://{self.config.metrics.host}:{self.metrics_port}/metrics"
        self.address = self.listener.start()
        self.bus.emit(ev.ProxyStarted(self.config.proxy.ae_title, self.address[0],
                                      self.address[1], metrics_url,
                                      [r.called_ae for r in self.config.routes]))
        return self.address

    def stop(self, reason: str = "stop requested", grace: float | None = None) -> int:
        """Stop accepting, let running associations end (bounded), then stop."""
        if self._stopped.is_set():
            return 0
        grace = self.config.proxy.shutdown_grace if grace is None else grace
        self.bus.emit(ev.ProxyStopping(reason, len(self.listener.active_sessions())))
        self.listener.stop_accepting()
        deadline = time.monotonic() + grace
        while self.listener.active_sessions() and time.monotonic() < deadline:
            time.sleep(0.05)
        unfinished = len(self.listener.active_sessions())
        if unfinished:
            self.listener.abort_all()
        for stop in reversed(self._stops):
            try:
                stop()
            except Exception as exc:
                self.bus.emit(ev.Noted("error", "extension_stop_failed",
                                       {"error": f"{type(exc).__name__}: {exc}"}))
        self.bus.emit(ev.ProxyStopped(unfinished))
        self._stopped.set()
        return unfinished


def _quiet_pynetdicom() -> None:
    # pynetdicom logs protocol noise (and tracebacks for peers' garbage) through
    # the logging module; the proxy reports those as its own events instead.
    log = logging.getLogger("pynetdicom")
    log.handlers = [logging.NullHandler()]
    log.propagate = False
