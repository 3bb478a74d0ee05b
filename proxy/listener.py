"""Workstation-facing SCP: the proxy's own DICOM stack (``proxy.dicom``) on one event loop.

Job: own the listening socket, the loop thread and the association registry; decide
the presentation-context policy of each association; hand each DIMSE request to
``dispatch`` (set by ``proxy.app``). Per association: ``proxy.association``.

Rule 1: the listener never dies. The loop thread holds every association without a
        thread or a poll per idle one (``proxy.dicom.io``); a bad peer costs its own
        connection only (``proxy.dicom.link`` Rule 5).
Rule 2: limits are enforced before a peer can hurt the proxy: raw TCP connections are
        capped at accept(), before any byte is read (``connection_refused``); a PDU
        longer than the limit is never read (``proxy.dicom.connection`` Rule 5);
        writes to a workstation that stops reading are bounded (``write_high_water``)
        and end its association after ``network_timeout``.
Rule 3: the policy a route offers (``policy_for``): Verification and the Q/R models in
        Explicit/Implicit VR Little Endian and Explicit Big Endian; every storage SOP
        class in any non-deflated transfer syntax, both roles allowed (C-GET); the
        requestor's own transfer syntax order wins (``proxy.contexts`` Rule 2). An
        archive delivering move-mode sub-operations is offered what its retrieves'
        receivers accepted (``inbound_policy``, ``proxy.contexts`` Rule 4).
Rule 5: DICOM over TLS (``proxy.tls``): with ``[proxy] tls_port`` a second listener on
        the same loop terminates TLS; its handshakes run beside the accept loop, bounded
        by ``[tls] handshake_timeout``; each outcome is one ``TlsHandshake`` event (a
        failure: the contract's reason and a hint). ``reload_tls`` (SIGHUP) builds a new
        context from the files and swaps it in for new connections; running
        associations keep theirs. The certificates held are reported for the expiry gauge.
Rule 4: back-pressure: a handler's ``send`` blocks while the workstation is behind, so a
        slow reader never makes the proxy hold a whole answer (``proxy.dicom.link``
        Rule 3); a workstation waiting for an answer is not idle (Rule 4 there).
Rule 5: connections from the load balancers ``[proxy] proxy_protocol_from`` names start
        with a PROXY protocol header (``proxy.dicom.io`` Rule 5); the address it names is
        the workstation's (``proxy.association``); a balancer's connection without one is
        closed and reported as ``connection_refused``.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from proxy import tls as tlsmod
from proxy.association import Receiving, WorkstationAssociation
from proxy.config import Config, RouteConfig
from proxy.contexts import offers_for_inbound, offers_for_route
from proxy.dicom import io, pdu
from proxy.dicom.link import Handler, Limits, Link
from proxy.dicom.negotiation import Policy
from proxy.observe import events as ev
from proxy.routing import Rejection, from_networks
from proxy.session import Request, Session


class Negotiator(Protocol):
    """A route's last word on an association (``proxy.store.relay``: mirroring)."""

    def applies(self, session: Session, rq: pdu.AssociateRQ) -> bool:
        """Whether this association needs it (decided on the loop: must not block)."""
        ...

    def __call__(self, session: Session, rq: pdu.AssociateRQ,
                 ac: pdu.AssociateAC) -> pdu.AssociateAC | Rejection:
        """The AC to send, or a rejection (run in a worker: may block)."""
        ...

# Outgoing bytes buffered per association before a handler's send waits (Rule 4).
WRITE_HIGH_WATER = 256 * 1024


class Listener:
    """Owns the workstation-facing server and the per-association sessions."""

    def __init__(self, config: Config, bus: ev.EventBus) -> None:
        self.config = config
        self.bus = bus
        self.sessions: set[Session] = set()         # touched on the loop thread only
        self.dispatch: Callable[[Request], None] = lambda request: None   # set by proxy.app
        # Whether a move-mode retrieve is in flight (set by proxy.retrieve; routing Rule 4).
        self.retrieving: Callable[[], bool] = lambda: False
        # Per SOP class, what the receivers of an archive's move-mode retrieves accepted.
        self.inbound_syntaxes: Callable[[str | None], Mapping[str, Sequence[str]] | None] = (
            lambda archive: None)
        # A route's last word on the A-ASSOCIATE-AC (proxy.store.relay: mirroring).
        self.negotiating: Negotiator | None = None
        self.on_released: list[Callable[[Session], None]] = []   # in a worker, before the RP
        self.on_closed: list[Callable[[Session], None]] = []     # in a worker
        # A file to receive a C-STORE data set into (the spool's ``reception``); None: held
        # in memory.
        self.reception: Callable[[], Receiving] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._driver: io.Driver | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._policies: dict[str, Policy] = {}
        self.tls_port: int | None = None            # the TLS listener's bound port
        self._tls_context: ssl.SSLContext | None = None

    # -- policy (Rule 3) -----------------------------------------------------------
    def policy_for(self, route: RouteConfig) -> Policy:
        policy = self._policies.get(route.called_ae)
        if policy is None:       # the route's contexts are fixed: one policy per route
            policy = self._policies[route.called_ae] = Policy(
                offers_for_route(route, self.config), max_pdu=self.config.proxy.max_pdu_size)
        return policy

    def inbound_policy(self, archive: str | None) -> Policy:
        receivers = self.inbound_syntaxes(archive)
        return Policy(offers_for_inbound(receivers), max_pdu=self.config.proxy.max_pdu_size)

    def admitted(self) -> int:
        return sum(1 for s in self.sessions if s.admitted and not s.ended)

    def admitted_on(self, route: RouteConfig, calling_ae: str) -> tuple[int, int]:
        """(admitted on ``route``, of those from ``calling_ae``); loop thread only."""
        on_route = [s for s in self.sessions if s.admitted and not s.ended
                    and s.route is not None and s.route.called_ae == route.called_ae]
        calling = calling_ae.strip()
        return len(on_route), sum(1 for s in on_route if s.info.calling_ae == calling)

    # -- lifecycle -----------------------------------------------------------------
    def limits(self) -> Limits:
        p = self.config.proxy
        handshake = self.config.tls.handshake_timeout if self.config.tls else 10.0
        return Limits(max_connections=p.max_connections, acse_timeout=p.acse_timeout,
                      dimse_timeout=p.dimse_timeout, network_timeout=p.network_timeout,
                      write_high_water=WRITE_HIGH_WATER, stream_data=True,
                      workers=p.max_associations + 8, handshake_timeout=handshake)

    def start(self) -> tuple[str, int]:
        p = self.config.proxy
        if self.config.tls is not None and p.tls_port is not None:
            self._tls_context = tlsmod.server_context(self.config.tls)   # bad files: no start
        ready = threading.Event()
        bound: list[int | BaseException] = []

        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._driver = driver = io.Driver(self.limits())
            try:
                bound.append(driver.serve(p.host, p.port, self._associate,
                                          on_refused=self._refused,
                                          proxy_from=self._from_balancer if
                                          p.proxy_protocol_from else None,
                                          on_proxy_error=self._proxy_error))
                if self._tls_context is not None and p.tls_port is not None:
                    self.tls_port = driver.serve(
                        p.host, p.tls_port, self._associate, tls=self._current_tls,
                        on_refused=self._refused, on_tls=self._handshake,
                        proxy_from=self._from_balancer if p.proxy_protocol_from else None,
                        on_proxy_error=self._proxy_error)
            except BaseException as exc:
                driver.stop_accepting()
                bound.append(exc)
                ready.set()
                return
            ready.set()
            await self._stop.wait()
            await driver.shutdown(0)

        self._thread = threading.Thread(target=io.run, args=(serve,), name="listener",
                                        daemon=True)
        self._thread.start()
        ready.wait(30)
        if not bound:
            raise RuntimeError("the listener did not start")
        if isinstance(bound[0], BaseException):
            raise bound[0]
        self._report_certificates()
        return p.host, bound[0]

    # -- TLS (Rule 5) ----------------------------------------------------------------
    def _current_tls(self) -> ssl.SSLContext:
        assert self._tls_context is not None
        return self._tls_context

    def _handshake(self, peer: str, error: BaseException | None,
                   peer_cert: bytes | None) -> None:
        seen = tlsmod.peer_certificate(peer_cert)
        subject = seen.subject if seen else None
        if error is None:
            self.bus.emit(ev.TlsHandshake("workstation", peer, True, subject=subject,
                                          not_after=seen.not_after if seen else None))
            return
        assert self.config.tls is not None
        reason, hint = tlsmod.explain(error, self.config.tls.handshake_timeout)
        self.bus.emit(ev.TlsHandshake("workstation", peer, False, reason, hint, subject))

    def _report_certificates(self) -> None:
        if self.config.tls is None:
            return
        for cert in tlsmod.held_certificates(self.config.tls):
            self.bus.emit(ev.TlsCertificateHeld(cert.subject, cert.role, cert.not_after))

    def reload_tls(self) -> bool:
        """Re-read [tls] cert, key and ca (SIGHUP); new handshakes use them (Rule 5).
        On unusable files the running context stays and ``tls_reload_failed`` says why."""
        if self.config.tls is None or self._tls_context is None:
            return False
        try:
            context = tlsmod.server_context(self.config.tls)
            self._report_certificates()
        except (OSError, ValueError) as exc:
            self.bus.emit(ev.TlsReloaded(f"{type(exc).__name__}: {exc}"))
            return False
        self._tls_context = context          # one reference swap: read at each accept
        self.bus.emit(ev.TlsReloaded())
        return True

    def _associate(self, link: Link) -> Handler:
        return WorkstationAssociation(self, link)

    def _from_balancer(self, address: str) -> bool:
        """Whether a connection from ``address`` starts with a PROXY protocol header."""
        return from_networks(address, self.config.proxy.proxy_protocol_from)

    def _proxy_error(self, peer: str, why: str) -> None:
        self.bus.emit(ev.ConnectionRefused(
            peer, f"PROXY protocol: {why}; connection closed (proxy_protocol_from names "
                  f"this address as a load balancer, which must send the header first)"))

    def _refused(self, peer: str) -> None:
        self.bus.emit(ev.ConnectionRefused(
            peer, f"connection limit reached ({self.config.proxy.max_connections} open)"))

    def _call(self, callback: Callable[[], None]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(callback)
            except RuntimeError:
                pass                                # closed meanwhile

    def stop_accepting(self) -> None:
        driver = self._driver
        if driver is not None:
            self._call(driver.stop_accepting)

    def active_sessions(self) -> list[Session]:
        return [s for s in list(self.sessions) if s.accepted and not s.ended]

    def wait_finished(self, timeout: float) -> bool:
        """Wait (bounded) until every accepted association has closed, so each handler
        has reported its request; False if some were still open."""
        deadline = time.monotonic() + timeout
        while any(s.accepted for s in list(self.sessions)):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def abort_all(self) -> None:
        driver = self._driver
        if driver is not None:
            self._call(driver.abort_all)

    def close(self) -> None:
        """Stop the loop thread (after ``stop_accepting`` and ``abort_all``)."""
        stop = self._stop
        if stop is not None:
            self._call(stop.set)
        if self._thread is not None:
            self._thread.join(10)
