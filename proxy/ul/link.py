"""One requestor association on a plain TCP socket: negotiate, send and receive DIMSE messages.

Job: the retrieve's bulk path (C-GET from an archive, C-STORE to a Move Destination)
and store-and-forward (spool → archive) move every byte of a study through the
proxy. This link is the blocking driver of the proxy's one upper layer,
``proxy.dicom.connection.Association(role="requestor")``: every PDU it sends or
receives goes through that PS3.8 state table (A-ASSOCIATE, P-DATA, A-RELEASE both
ways, release collision, A-ABORT, an invalid PDU answered with A-ABORT). It reads into
the association's own buffer (``get_buffer``/``recv_into``) and hands each data
fragment to its consumer as a ``memoryview`` of that buffer (no copy, no per-PDU
thread hop), and writes fragments with ``sendmsg`` straight from the caller's buffer
or file chunk, the association deciding and giving the headers (``send_pdata``).

Rule 1 (who owns what): one thread reads (``read_message``); any thread may send, a
        whole message at a time under one lock, so PDUs of two messages never
        interleave (a C-CANCEL sent while a C-STORE-RSP goes out); any thread may
        ``abort``, without waiting for a send in progress. The association is touched
        under its own lock, never across a socket call.
Rule 2 (bounded): the read buffer holds the PDU in progress and room for one read; a
        PDU longer than the maximum the proxy proposed (``max_pdu_length``) is a
        protocol error, answered with A-ABORT, never a larger buffer. Data set
        fragments go to the caller's ``DataTarget`` as they arrive, valid only during
        ``write``: a C-STORE of any size costs no memory beyond the buffer.
Rule 3 (timeouts): every socket operation is bounded by ``timeout`` (TimeoutError);
        the peer closing or aborting raises ``LinkClosed`` saying which; a peer
        breaking PS3.8 (a malformed or unexpected PDU, DIMSE out of order) raises
        ``ProtocolError`` (a ``LinkClosed`` and a ``PduError``) once the A-ABORT the
        state table chose is sent and the socket closed.
Rule 4: fragments are sent at the peer's maximum PDU length (its A-ASSOCIATE-AC; no
        limit → ``MAX_FRAGMENT``), one PDV per P-DATA-TF, as DCMTK and pynetdicom do.
        A message the state table refuses (the association released or aborted
        meanwhile) raises ``LinkClosed`` before a byte of it is written. A message's
        command goes out in the same ``sendmsg`` as its data set's first fragments;
        a data set in memory is written with one ``sendmsg`` per ``MAX_PARTS`` buffers
        (255 fragments), one read from a file one per ``SEND_BATCH`` bytes.
Rule 5 (TLS): ``open(tls=context)`` wraps the connected socket, the handshake bounded
        by ``connect_timeout``, the name checked against ``server_hostname``; a failed
        handshake raises ``TlsFailed``. The connection is a ``tlssocket.TlsSocket`` (an
        SSLObject over memory BIOs), so the reading thread and a sending thread never
        use OpenSSL's state at once. ``sendmsg`` does not exist on TLS: a batch is
        joined and written with one ``sendall`` (one copy the encryption costs anyway).
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from io import BufferedIOBase
from typing import NoReturn, Protocol

from proxy.dicom import pdu
from proxy.dicom.commands import Command
from proxy.dicom.connection import UNLIMITED_PDU, Association, LocalProtocolError
from proxy.dicom.events import (
    Aborted,
    AssociateAccepted,
    AssociateRejected,
    DataFragment,
    MessageReceived,
    NeedData,
    Received,
    ReleaseRequested,
)
from proxy.dicom.states import State
from proxy.ul import tlssocket
from proxy.ul.tlssocket import TlsSocket

MAX_FRAGMENT = 1 << 20           # our fragment size toward a peer that set no limit
SEND_BATCH = 512 * 1024          # bytes of a file or an arriving data set per sendmsg ...
MAX_PARTS = 512                  # ... in at most this many buffers (IOV_MAX is 1024)
COMMAND, LAST = pdu.COMMAND, pdu.LAST     # message control header bits (PS3.8 E.2)
RELEASE_RQ = pdu.encode(pdu.ReleaseRQ())
RELEASE_RP = pdu.encode(pdu.ReleaseRP())
_SENDING = (State.Sta6, State.Sta8)       # where PS3.8 lets this side send P-DATA


class LinkClosed(ConnectionError):
    """The association ended under us: aborted, released or the connection closed."""


class ProtocolError(LinkClosed, pdu.PduError):
    """The peer broke PS3.8 (Rule 3): the link sent the state table's A-ABORT and closed."""


class TlsFailed(ConnectionError):
    """The TLS handshake with the peer failed; ``error`` is what the ssl module raised."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(f"TLS handshake failed: {error}")
        self.error = error


class Rejected(Exception):
    """The acceptor answered A-ASSOCIATE-RJ."""

    def __init__(self, rj: pdu.AssociateRJ) -> None:
        super().__init__(f"A-ASSOCIATE-RJ result {rj.result} source {rj.source} "
                         f"diagnostic {rj.reason}")
        self.rj = rj


@dataclass
class Negotiated:
    """What the acceptor's A-ASSOCIATE-AC granted, by presentation context ID."""

    max_pdu_length: int = 0               # what the acceptor accepts; 0 = no limit
    accepted: dict[int, str] = field(default_factory=dict)   # context ID -> transfer syntax
    refused: dict[int, int] = field(default_factory=dict)    # context ID -> result/reason
    scp_roles: dict[str, bool] = field(default_factory=dict)  # SOP class -> SCP role granted

    @classmethod
    def of(cls, ac: pdu.AssociateAC) -> Negotiated:
        out = cls(ac.user.max_length or 0)
        for cx in ac.contexts:
            if cx.result == 0 and cx.transfer_syntax:
                out.accepted[cx.context_id] = cx.transfer_syntax
            else:
                out.refused[cx.context_id] = cx.result
        out.scp_roles = {r.sop_class_uid: r.scp_role for r in ac.user.roles}
        return out


class DataTarget(Protocol):
    def write(self, fragment: memoryview) -> object: ...


@dataclass
class Message:
    context_id: int
    command: Command
    data: bytes | None = None          # when no DataTarget took it


def new_association() -> Association:
    """The requestor side this link drives: data sets streamed, read in place."""
    return Association("requestor", stream_data=True, receive_into=True)


class Link:
    """An established association (``association`` in Sta6); ``open`` negotiates it."""

    def __init__(self, sock: socket.socket | TlsSocket, association: Association,
                 accept: Negotiated) -> None:
        self.sock = sock
        self.association = association
        self.accept: Negotiated
        self.abstract: dict[int, str]          # context ID -> abstract syntax proposed
        self.fragment: int                     # data per P-DATA-TF toward the peer (Rule 4)
        self._established(accept)
        self._lock = threading.Lock()          # the association (Rule 1)
        self._send_lock = threading.Lock()
        self._eof = False
        self.closed = False

    @property
    def max_pdu_length(self) -> int:
        """What the proxy proposed (its A-ASSOCIATE-RQ); 0: no limit."""
        limit = self.association.receive_limit
        return 0 if limit == UNLIMITED_PDU else limit

    def _established(self, accept: Negotiated) -> None:
        self.accept = accept
        self.abstract = dict(self.association.proposed)
        peer = self.association.peer_max_pdu_length
        self.fragment = min(peer - 6, MAX_FRAGMENT) if peer > 6 else MAX_FRAGMENT

    # -- opening ---------------------------------------------------------------------

    @classmethod
    def open(cls, host: str, port: int, request: pdu.AssociateRQ,
             connect_timeout: float, timeout: float, tls: ssl.SSLContext | None = None,
             server_hostname: str | None = None,
             on_tls: Callable[[bytes | None], None] | None = None) -> Link:
        """Connect (over TLS when ``tls``, Rule 5; ``on_tls`` hears the peer's certificate
        of a handshake that succeeded) and negotiate; raises OSError (TCP), TlsFailed,
        Rejected, LinkClosed, TimeoutError."""
        plain = socket.create_connection((host, port), timeout=connect_timeout)
        sock: socket.socket | TlsSocket = plain
        try:
            plain.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                try:
                    secure = tlssocket.wrap(plain, tls, server_hostname or host,
                                            connect_timeout)
                except (OSError, ssl.SSLError) as exc:
                    raise TlsFailed(exc) from exc
                sock = secure
                if on_tls is not None:
                    on_tls(secure.getpeercert(True))
            sock.settimeout(timeout)
            pdu.check_request(request)
            association = new_association()
            link = cls(sock, association, Negotiated())
            link._send_raw(association.send(request))
            answer = link._next()
            if isinstance(answer, AssociateRejected):
                raise Rejected(answer.reject)
            if not isinstance(answer, AssociateAccepted):
                link._ended(answer, "the peer answered the association request: ")
            link._established(Negotiated.of(answer.accept))
            return link
        except BaseException:
            sock.close()
            raise

    # -- sending ---------------------------------------------------------------------

    def send_message(self, context_id: int, command: bytes,
                     data: memoryview | bytes | None = None,
                     source: BufferedIOBase | None = None, length: int = 0) -> None:
        """One DIMSE message: command, then the data set from ``data`` or ``length``
        bytes read from ``source`` (Rules 1, 4); the command goes out in the same
        ``sendmsg`` as the data set's first fragments."""
        with self._send_lock:
            parts: list[bytes | memoryview] = []
            self._fragments(context_id, COMMAND, memoryview(command), parts)
            if data is not None:
                self._fragments(context_id, 0, memoryview(data), parts)
            elif source is not None:
                self._from_file(context_id, source, length, parts)
            sendmsg_all(self.sock, parts)

    def send_arriving(self, context_id: int, command: bytes,
                      parts: Iterable[tuple[list[memoryview], bool]]) -> None:
        """One DIMSE message whose data set is still arriving: the command, then each
        batch of ``parts`` as it comes, the batch marked last ending the message (Rule 4).
        """
        with self._send_lock:
            command_parts: list[bytes | memoryview] = []
            self._fragments(context_id, COMMAND, memoryview(command), command_parts)
            sendmsg_all(self.sock, command_parts)
            for views, last in parts:
                self._batch(context_id, views, last)

    def _batch(self, cx: int, views: list[memoryview], last: bool) -> None:
        """``views`` as fragments of at most the peer's length, the very last one marked
        last when ``last``; a batch with no bytes and ``last`` is an empty last PDV."""
        step = self.fragment
        pieces = [view[at:at + step] for view in views for at in range(0, len(view), step)]
        if last and not pieces:
            pieces = [memoryview(b"")]
        parts: list[bytes | memoryview] = []
        size = 0
        for i, piece in enumerate(pieces):
            final = last and i == len(pieces) - 1
            parts.append(self._header(cx, LAST if final else 0, len(piece)))
            parts.append(piece)
            size += len(piece)
            if size >= SEND_BATCH or len(parts) >= MAX_PARTS:
                sendmsg_all(self.sock, parts)
                parts, size = [], 0
        if parts:
            sendmsg_all(self.sock, parts)

    def _header(self, cx: int, control: int, length: int) -> bytes:
        """The association's header for a run of P-DATA-TF PDUs (Rule 4)."""
        with self._lock:
            try:
                return self.association.send_pdata(cx, control, length)
            except LocalProtocolError as exc:
                if self.association.state in _SENDING:
                    raise                      # a context or length the caller got wrong
                raise LinkClosed(f"the association can no longer carry a message: {exc}"
                                 ) from None

    def _fragments(self, cx: int, kind: int, view: memoryview,
                   parts: list[bytes | memoryview]) -> None:
        """Add ``view`` to ``parts`` as fragments of the message part ``kind``. The bytes
        are in memory already, so ``parts`` is written out only when it reaches
        ``MAX_PARTS`` (Rule 4), or on TLS ``SEND_BATCH`` bytes (joined there, Rule 5)."""
        step = self.fragment
        batch = SEND_BATCH if isinstance(self.sock, TlsSocket) else len(view) + 1
        full = b""                             # every fragment but the last
        at, total, size = 0, len(view), 0
        while total - at > step:
            if not full:
                full = self._header(cx, kind, step)
            parts.append(full)
            parts.append(view[at:at + step])
            at += step
            size += step
            if len(parts) >= MAX_PARTS or size >= batch:
                sendmsg_all(self.sock, parts)
                size = 0
        parts.append(self._header(cx, kind | LAST, total - at))
        parts.append(view[at:])

    def _from_file(self, cx: int, source: BufferedIOBase, length: int,
                   parts: list[bytes | memoryview]) -> None:
        """``length`` bytes of ``source`` as data fragments after what ``parts`` holds
        (the command); ``parts`` is written out before the chunk is read again."""
        step = self.fragment
        per_batch = max(1, min(SEND_BATCH // step, MAX_PARTS // 2 - 1)) * step
        chunk = bytearray(min(per_batch, max(length, 1)))
        view = memoryview(chunk)
        left = length
        if left > len(chunk) and len(parts) > 2:      # a command of several fragments
            sendmsg_all(self.sock, parts)             # goes alone: a batch stays in bounds
        while left > len(chunk):                      # whole fragments, none of them last
            if source.readinto(view) != len(chunk):
                raise OSError("buffered instance ended early")
            full = self._header(cx, 0, step)
            for at in range(0, len(view), step):
                parts.append(full)
                parts.append(view[at:at + step])
            sendmsg_all(self.sock, parts)
            left -= len(chunk)
        if left and source.readinto(view[:left]) != left:
            raise OSError("buffered instance ended early")
        self._fragments(cx, 0, view[:left], parts)

    # -- receiving -------------------------------------------------------------------

    def read_message(self, target_for: Callable[[int, Command], DataTarget | None] | None = None
                     ) -> Message:
        """The next whole DIMSE message; its data set goes to ``target_for(cx, command)``
        fragment by fragment, or is collected (no ``target_for``, or it returns None)."""
        return self._message(self._next(), target_for)

    def poll_message(self, wait: float, timeout: float) -> Message | None:
        """The next whole message if one starts arriving within ``wait`` seconds, else
        None; once it has started, the rest is read under ``timeout`` (Rule 3). A wait
        that ends with nothing loses nothing: bytes already read stay in the association's
        buffer."""
        self.sock.settimeout(wait)
        try:
            event = self._next()
        except TimeoutError:
            return None
        finally:
            self.sock.settimeout(timeout)
        return self._message(event, None)

    def _message(self, event: Received,
                 target_for: Callable[[int, Command], DataTarget | None] | None) -> Message:
        if not isinstance(event, MessageReceived):
            self._ended(event)
        cx, command = event.context_id, event.command
        message = Message(cx, command)
        if not event.data_follows:
            return message
        target = target_for(cx, command) if target_for is not None else None
        collected = bytearray()
        while True:
            fragment = self._next()
            if not isinstance(fragment, DataFragment):
                self._ended(fragment)
            if target is not None:             # read in place: always a memoryview
                target.write(fragment.data)    # type: ignore[arg-type]
            else:
                collected += fragment.data
            if fragment.last:
                break
        if target is None:
            message.data = bytes(collected)
        return message

    def _next(self) -> Received:
        """The association's next event, reading into its buffer while it needs data;
        what it answers on its own (A-ABORT) is written at once (Rule 3)."""
        association, lock = self.association, self._lock
        while True:
            with lock:
                event = association.next_event()
                out = association.data_to_send()
            if out:                            # an A-ABORT: the event says why
                self._send_urgent(out)
            if event.__class__ is not NeedData:
                return event
            with lock:
                view = association.get_buffer()
            got = self.sock.recv_into(view)
            with lock:
                if got:
                    association.buffer_updated(got)
                else:
                    self._eof = True
                    association.receive_data(b"")

    def _ended(self, event: Received, context: str = "") -> NoReturn:
        """Raise what ``event`` (not a message) means; the socket is closed (Rule 3)."""
        if isinstance(event, ReleaseRequested):
            try:
                with self._lock:
                    answer = self.association.send(pdu.ReleaseRP())
                self._send_raw(answer)
            except (OSError, LocalProtocolError):
                pass
            self._shut()
            raise LinkClosed("the peer released the association mid-operation")
        if isinstance(event, Aborted) and event.local:
            self._shut()
            raise ProtocolError(context + event.reason_text)
        self._shut()
        if self._eof:
            raise LinkClosed(context + "the peer closed the connection")
        if isinstance(event, Aborted):
            raise LinkClosed(context + f"the peer aborted the association (A-ABORT, PDU type "
                             f"0x{pdu.A_ABORT:02X}, source {event.source}, reason "
                             f"{event.reason})")
        raise ProtocolError(context + f"{type(event).__name__} in {self.association.state.name}")

    # -- ending ------------------------------------------------------------------------

    def release(self) -> None:
        """A-RELEASE; what arrives meanwhile is discarded, a release collision answered
        (PS3.8 9.2.4); abort if the peer does not answer."""
        if self.closed:
            return
        try:
            with self._lock:
                request = self.association.send(pdu.ReleaseRQ())
            self._send_raw(request)
            while True:
                event = self._next()
                if isinstance(event, ReleaseRequested):          # collision: Sta9
                    with self._lock:
                        answer = self.association.send(pdu.ReleaseRP())
                    self._send_raw(answer)
                elif not isinstance(event, MessageReceived | DataFragment):
                    break                      # confirmed, aborted or closed
        except (OSError, pdu.PduError, LocalProtocolError):
            pass
        self._shut()

    def abort(self) -> None:
        """A-ABORT and close, from any thread (Rule 1). A thread blocked sending (a peer
        that stopped reading) is not waited for: the A-ABORT is skipped and closing the
        socket ends that send, so a shutdown never waits out the socket timeout."""
        if self.closed:
            return
        with self._lock:
            try:
                out = self.association.send(pdu.Abort())
            except LocalProtocolError:         # already over (Sta1) or closing (Sta13)
                out = b""
        self._send_urgent(out)
        self._shut()

    def _send_urgent(self, data: bytes) -> None:
        """An A-ABORT: written unless a send is in progress (Rule 1: never waited for;
        closing the socket ends that send), errors ignored (the connection may be gone)."""
        if data and self._send_lock.acquire(blocking=False):
            try:
                self.sock.sendall(data)
            except OSError:
                pass
            finally:
                self._send_lock.release()

    def _send_raw(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def _shut(self) -> None:
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)    # wakes a thread blocked reading
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


# -- writing ----------------------------------------------------------------------------

def sendmsg_all(sock: socket.socket | TlsSocket, parts: list[bytes | memoryview]) -> None:
    """``sendmsg`` until every byte of ``parts`` is written (a TLS socket: Rule 5);
    ``parts`` is empty afterwards."""
    if isinstance(sock, TlsSocket):
        sock.sendall(b"".join(parts))
        parts.clear()
        return
    while parts:
        sent = sock.sendmsg(parts)
        while parts and sent >= len(parts[0]):
            sent -= len(parts[0])
            parts.pop(0)
        if parts and sent:
            parts[0] = memoryview(parts[0])[sent:]
