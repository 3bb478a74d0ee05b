"""The I/O driver: many DICOM associations on one event loop, no thread per association.

Job: own the listening sockets, the connection count, the worker pool and shutdown;
``Driver.serve`` accepts, ``Driver.connect`` requests; each association is a ``Link``
(``proxy.dicom.link``: events to its ``Handler``, timers, flow control).

Loop choice (measured with bench/bench_dicom_loop.py, 2 shared cores, server in its
own process): 500 idle connections cost 0.03 % CPU on asyncio, 0.01 % on a bare
``selectors`` reactor, 0.02 % on uvloop 0.23 — all ~0, epoll does the waiting.
20 connections ping-ponging 200-byte messages: asyncio 23.7k round trips/s (25.5 us
server CPU each), selectors 48.5k (7.0 us), uvloop 53.7k (6.7 us). For scale, the
sans-IO association costs ~16 us per message per side. The driver uses the asyncio
loop API only (add_reader, connect_accepted_socket, call_later,
call_soon_threadsafe): TLS with a handshake timeout, timers, write flow control and
the thread hand-off come with it, where a selectors reactor would re-implement each;
uvloop (on PyPI, a drop-in loop) takes the asyncio overhead back to the selectors
figure, so ``run`` uses it when it is importable.

Rule 1: the connection cap is applied at accept(), before a byte is read: a
        connection over ``max_connections`` is closed unread.
Rule 2: a failed TLS handshake (or one slower than ``handshake_timeout``) closes that
        connection only; accept errors (EMFILE) never stop the listener. Handshakes run
        in their own task, never in the accept loop; ``on_tls(peer, error, peer_cert)``
        is told of each outcome (error None: it succeeded). ``tls`` may be a callable
        returning the context, read at each accept, so a reload (new certificates)
        reaches new connections while running ones keep theirs.
Rule 3: ``shutdown(grace)`` stops accepting, lets running associations end within
        ``grace`` seconds, then aborts the rest (A-ABORT, then close).
Rule 4: ``connect`` is the requestor side on the same loop: it returns the link once
        the A-ASSOCIATE-AC arrived (``AssociationRejected`` on an RJ, TimeoutError
        after ``acse_timeout``, ``LinkClosed`` if the peer closed first).
Rule 5: a connection from a load balancer named by ``proxy_from`` starts with a PROXY
        protocol header (``proxy.dicom.proxyproto``): it is read before any DICOM or TLS
        byte — peeked, then exactly its length taken, within ``handshake_timeout`` — and
        the address it names is the link's ``source``. A connection without a valid one
        is closed and reported (``on_proxy_error``), never served as the balancer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, TypeAlias

from proxy.dicom import pdu, proxyproto
from proxy.dicom.link import AssociationRejected, Handler, Limits, Link, LinkClosed, Outbox
from proxy.dicom.proxyproto import ProxyProtocolError

__all__ = ["AssociationRejected", "Driver", "Handler", "Limits", "Link", "LinkClosed", "Outbox",
           "run"]

log = logging.getLogger(__name__)

# A TLS listener's context: fixed, or read at each accept (Rule 2: reloads).
TlsSource: TypeAlias = ssl.SSLContext | Callable[[], ssl.SSLContext] | None
# Told of each handshake: (peer "ip:port", the error or None, the peer's certificate, DER).
TlsOutcome: TypeAlias = Callable[[str, BaseException | None, bytes | None], None]


class Driver:
    """The loop-side owner of every association (Rules 1-3)."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.loop = asyncio.get_running_loop()
        self.executor = concurrent.futures.ThreadPoolExecutor(self.limits.workers,
                                                              thread_name_prefix="dicom-work")
        self.links: set[Link] = set()
        self._connections = 0
        self._listeners: list[socket.socket] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[None]] = set()

    def forget(self, link: Link) -> None:
        self.links.discard(link)
        self._connection_ended()

    def _connection_ended(self) -> None:
        self._connections -= 1
        if self._connections <= 0:
            self._idle.set()

    def serve(self, host: str, port: int, factory: Callable[[Link], Handler], *,
              tls: TlsSource = None, backlog: int = 128,
              on_refused: Callable[[str], None] | None = None,
              on_tls: TlsOutcome | None = None,
              proxy_from: Callable[[str], bool] | None = None,
              on_proxy_error: Callable[[str, str], None] | None = None) -> int:
        """Listen on (host, port); the bound port is returned (0 picks a free one).
        ``on_refused(peer)`` is told of each connection closed over the cap (Rule 1);
        ``on_tls`` of each TLS handshake's outcome (Rule 2); connections from addresses
        ``proxy_from`` accepts start with a PROXY protocol header (Rule 5),
        ``on_proxy_error(peer, why)`` is told of each that did not."""
        listener = socket.create_server((host, port), backlog=backlog)
        listener.setblocking(False)
        self._listeners.append(listener)
        self.loop.add_reader(listener, self._accept, listener, factory, tls, on_refused,
                             on_tls, proxy_from, on_proxy_error)
        return int(listener.getsockname()[1])

    def _accept(self, listener: socket.socket, factory: Callable[[Link], Handler],
                tls: TlsSource, on_refused: Callable[[str], None] | None,
                on_tls: TlsOutcome | None,
                proxy_from: Callable[[str], bool] | None,
                on_proxy_error: Callable[[str, str], None] | None) -> None:
        for _ in range(64):
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:              # EMFILE and friends: keep listening
                log.warning("accept failed: %s", exc)
                return
            if self._connections >= self.limits.max_connections:
                sock.close()                    # Rule 1: closed unread
                if on_refused is not None:
                    with contextlib.suppress(Exception):
                        on_refused(f"{address[0]}:{address[1]}")
                continue
            self._connections += 1
            self._idle.clear()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            context = tls() if callable(tls) else tls
            via = proxy_from is not None and proxy_from(str(address[0]))
            self._spawn(self._start(sock, factory, context, f"{address[0]}:{address[1]}",
                                    on_tls, via, on_proxy_error))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self, sock: socket.socket, factory: Callable[[Link], Handler],
                     tls: ssl.SSLContext | None, peer: str = "unknown",
                     on_tls: TlsOutcome | None = None, via_balancer: bool = False,
                     on_proxy_error: Callable[[str, str], None] | None = None) -> None:
        source: tuple[str, int] | None = None
        try:
            if via_balancer:
                source = await asyncio.wait_for(self._proxy_header(sock),
                                                self.limits.handshake_timeout)
        except (TimeoutError, OSError, ProxyProtocolError) as exc:
            why = (f"no PROXY protocol header within {self.limits.handshake_timeout:g} s"
                   if isinstance(exc, TimeoutError) else str(exc))
            sock.close()
            self._connection_ended()
            if on_proxy_error is not None:
                with contextlib.suppress(Exception):
                    on_proxy_error(peer, why)
            return
        if source is not None:
            peer = f"{source[0]}:{source[1]}"
        try:
            transport, _ = await self.loop.connect_accepted_socket(
                lambda: Link(self, factory, "acceptor", source=source), sock, ssl=tls,
                ssl_handshake_timeout=self.limits.handshake_timeout if tls else None)
        except Exception as exc:
            log.info("connection not started: %s", exc)   # Rule 2: this one only
            sock.close()
            self._connection_ended()
            if tls is not None and on_tls is not None:
                with contextlib.suppress(Exception):
                    on_tls(peer, exc, None)
            return
        if tls is not None and on_tls is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            with contextlib.suppress(Exception):
                on_tls(peer, None, ssl_object.getpeercert(True) if ssl_object else None)

    async def _proxy_header(self, sock: socket.socket) -> tuple[str, int] | None:
        """Rule 5: the balancer's header, taken from the socket and nothing after it."""
        sock.setblocking(False)
        while True:
            await self._readable(sock)
            peeked = sock.recv(proxyproto.MAX_V2_LENGTH + 16, socket.MSG_PEEK)
            if not peeked:
                raise ProxyProtocolError("the balancer closed the connection before its "
                                         "PROXY protocol header")
            header = proxyproto.parse(peeked)
            if header is not None:
                sock.recv(header.length)        # exactly the header: DICOM or TLS follows
                return header.source
            await asyncio.sleep(0.005)          # a header split across segments: rare

    async def _readable(self, sock: socket.socket) -> None:
        ready: asyncio.Future[None] = self.loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        self.loop.add_reader(sock.fileno(), wake)
        try:
            await ready
        finally:
            self.loop.remove_reader(sock.fileno())

    async def connect(self, host: str, port: int, request: pdu.AssociateRQ,
                      factory: Callable[[Link], Handler], *, tls: ssl.SSLContext | None = None,
                      server_hostname: str | None = None) -> Link:
        """Requestor: open, send ``request``, return the link once accepted.
        ``AssociationRejected`` on A-ASSOCIATE-RJ; TimeoutError after ``acse_timeout``."""
        self._connections += 1
        self._idle.clear()
        try:
            _, link = await asyncio.wait_for(self.loop.create_connection(
                lambda: Link(self, factory, "requestor"), host, port, ssl=tls,
                server_hostname=server_hostname), self.limits.network_timeout)
        except BaseException:
            self._connection_ended()
            raise
        link.send(request)
        try:
            await asyncio.wait_for(asyncio.shield(link.established), self.limits.acse_timeout)
        except TimeoutError:
            link.abort("no A-ASSOCIATE answer")
            raise
        except asyncio.CancelledError:
            if link.established.cancelled():
                raise LinkClosed("connection closed before A-ASSOCIATE-AC") from None
            raise
        return link

    def stop_accepting(self) -> None:
        for listener in self._listeners:
            self.loop.remove_reader(listener)
            listener.close()
        self._listeners.clear()

    def abort_all(self, why: str = "shutting down") -> None:
        for link in list(self.links):
            link.abort(why)

    async def shutdown(self, grace: float) -> None:
        """Rule 3."""
        self.stop_accepting()
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            self.abort_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 2.0)
        self.executor.shutdown(wait=False, cancel_futures=True)


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` on uvloop when importable, else on the stdlib asyncio loop."""
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
