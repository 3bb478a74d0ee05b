"""Composition root: config → observers, archive clients, handlers, listener.

The one table that binds DIMSE commands to the proxy's handlers is ``HANDLERS``
below; ``proxy.responder`` runs them for the listener. Nothing else registers handlers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from proxy import retrieve
from proxy import tls as tlsmod
from proxy.config import Config
from proxy.dicom import commands
from proxy.listener import Listener
from proxy.observe import events as ev
from proxy.observe import health
from proxy.observe.logs import LogObserver, PhiFilter, make_logger
from proxy.observe.metrics import MetricsObserver
from proxy.operations import commitment, echo, find, get, move, mpps, store
from proxy.query import federation
from proxy.responder import C_ECHO_RQ, C_MOVE_RQ, respond
from proxy.services import Services
from proxy.session import Request
from proxy.store import drain, relay
from proxy.upstream import ArchiveClient, Peer
from proxy.web import server as dicomweb
from proxy.workflow import commitment as commitments
from proxy.workflow import delivery

Handler = Callable[..., Any]

# DIMSE request command field → handler(request, services). One row per DIMSE operation.
HANDLERS: dict[int, Handler] = {
    C_ECHO_RQ: echo.handle,
    commands.C_FIND_RQ: find.handle,
    commands.C_STORE_RQ: store.handle,
    C_MOVE_RQ: move.handle,
    commands.C_GET_RQ: get.handle,
    commands.N_CREATE_RQ: mpps.handle,
    commands.N_SET_RQ: mpps.handle,
    commands.N_ACTION_RQ: commitment.handle,
    commands.N_EVENT_REPORT_RQ: commitment.report,
}

# Subsystems that extend the proxy (federation, retrieve, spool, health) add
# themselves here: each is called once with the Services and may set the
# listener's hooks or start threads; each returns an optional stop function.
Extension = Callable[[Services], Callable[[], None] | None]
EXTENSIONS: list[Extension] = [
    health.start,                   # periodic C-ECHO to archives and destinations
    federation.install,             # C-FIND cap recovery, location cache, locate()
    drain.start,                    # spool + one store-and-forward thread per archive
    retrieve.install,               # C-MOVE/C-GET pump, move-mode inbound matching
    relay.install,                  # store = "relay" routes: mirrored archive associations
    delivery.start,                 # MPPS journal + one delivery thread per mpps_to archive
    dicomweb.start,                 # [dicomweb]: the HTTP front door (QIDO-RS) on its own loop
    commitments.start,              # Storage Commitment journal, N-ACTION + report threads
]


class Proxy:
    """One running proxy: listener, observers, archive clients."""

    def __init__(self, config: Config, stream: IO[str] | None = None) -> None:
        self.config = config
        _quiet_pynetdicom()
        self.metrics = MetricsObserver(list(config.archives),
                                       [r.called_ae for r in config.routes])
        self.logger = make_logger(config.log.format, config.log.level, stream)
        phi = PhiFilter(config.log.phi, config.log.phi_key)
        self.bus = ev.EventBus([LogObserver(self.logger, phi), self.metrics])
        p = config.proxy
        # Originating TLS (archives/destinations with tls = true): one context for all.
        tls_peers = [*(a.tls for a in config.archives.values()),
                     *(d.tls for d in config.destinations.values())]
        self.client_tls = tlsmod.ClientTls(config.tls, self._handshake) \
            if config.tls is not None and any(tls_peers) else None
        self.archives = {
            name: ArchiveClient(Peer.of(a, p.ae_title), p.network_timeout, p.max_pdu_size,
                                self.client_tls)
            for name, a in config.archives.items()}
        self.destinations = {
            name: ArchiveClient(Peer.of(d, p.ae_title, p.dimse_timeout), p.network_timeout,
                                p.max_pdu_size, self.client_tls)
            for name, d in config.destinations.items()}
        self.listener = Listener(config, self.bus)
        self.services = Services(config, self.bus, self.listener, self.archives,
                                 self.destinations)
        self._stops: list[Callable[[], None]] = []
        self.address: tuple[str, int] | None = None
        self.metrics_port: int | None = None
        self._stopped = threading.Event()

    def _handshake(self, side: str, peer: str, reason: str | None, hint: str | None,
                   seen: tlsmod.PeerCertificate | None) -> None:
        self.bus.emit(ev.TlsHandshake(side, peer, reason is None, reason, hint,
                                      seen.subject if seen else None,
                                      seen.not_after if seen else None))

    def reload_tls(self) -> bool:
        """SIGHUP: the listener's context and the client context toward TLS peers are
        rebuilt from the [tls] files; unusable files keep the running ones."""
        ok = self.listener.reload_tls()
        if self.client_tls is not None:
            try:
                self.client_tls.reload()
            except (OSError, ValueError) as exc:
                self.bus.emit(ev.TlsReloaded(f"{type(exc).__name__}: {exc}"))
                return False
        return ok

    def start(self) -> tuple[str, int]:
        for extension in EXTENSIONS:
            stop = extension(self.services)
            if stop is not None:
                self._stops.append(stop)
        services = self.services

        def dispatch(request: Request) -> None:
            respond(request, HANDLERS.get(request.command_field), services)

        self.listener.dispatch = dispatch
        metrics_url = None
        if self.config.metrics.enabled:
            self.metrics_port = self.metrics.serve(self.config.metrics.host,
                                                   self.config.metrics.port)
            metrics_url = f"http://{self.config.metrics.host}:{self.metrics_port}/metrics"
        self.address = self.listener.start()
        self.bus.emit(ev.ProxyStarted(self.config.proxy.ae_title, self.address[0],
                                      self.address[1], metrics_url,
                                      [r.called_ae for r in self.config.routes],
                                      self.listener.tls_port))
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
            # A handler still waiting on an archive sees its workstation gone and
            # ends at once; give each the moment it needs to report its request.
            self.listener.wait_finished(timeout=5.0)
        self.listener.close()
        for stop in reversed(self._stops):
            try:
                stop()
            except Exception as exc:
                self.bus.emit(ev.Noted("error", "extension_stop_failed",
                                       {"error": f"{type(exc).__name__}: {exc}"}))
        # Upstream associations still open (an abandoned answer draining) are aborted, so
        # no reader waits on an archive after the proxy has stopped.
        for client in [*self.archives.values(), *self.destinations.values()]:
            client.abort_all()
        self.bus.emit(ev.ProxyStopped(unfinished))
        self._stopped.set()
        return unfinished


def _quiet_pynetdicom() -> None:
    # pynetdicom (the demo's archives) logs protocol noise through the logging module;
    # the proxy reports what matters as its own events instead.
    log = logging.getLogger("pynetdicom")
    log.handlers = [logging.NullHandler()]
    log.propagate = False
