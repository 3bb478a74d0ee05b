"""One requestor association on a plain TCP socket: negotiate, send and receive DIMSE messages.

Job: the retrieve's bulk path (C-GET from an archive, C-STORE to a Move Destination)
and store-and-forward (spool → archive) move every byte of a study through the
proxy. pynetdicom spends a thread hand-off, a state-machine step and a DIMSE
re-assembly per 16 KB PDU there; this link reads PDUs into one buffer and hands
each data fragment to its consumer as a ``memoryview`` (no copy, no per-PDU thread
hop) and writes fragments with ``sendmsg`` straight from the caller's buffer.

Rule 1 (who owns what): one thread reads (``read_message``); any thread may send, a
        whole message at a time under one lock, so PDUs of two messages never
        interleave (a C-CANCEL sent while a C-STORE-RSP goes out); any thread may
        ``abort``, without waiting for a send in progress.
Rule 2 (bounded): the read buffer holds at most one PDU beyond what the kernel gave
        us; a PDU longer than the maximum the proxy proposed (``max_pdu_length``)
        is a protocol error, answered with A-ABORT, never a larger buffer. Data set
        fragments go to the caller's ``DataTarget`` as they arrive: a C-STORE of any
        size costs no memory beyond the buffer.
Rule 3 (timeouts): every socket operation is bounded by ``timeout`` (TimeoutError);
        the peer closing or aborting raises ``LinkClosed`` saying which.
Rule 5 (TLS): ``open(tls=context)`` wraps the connected socket, the handshake bounded
        by ``connect_timeout``, the name checked against ``server_hostname``; a failed
        handshake raises ``TlsFailed``. ``sendmsg`` does not exist on a TLS socket: a
        batch is joined and written with one ``sendall`` (one TLS record run, one copy
        the encryption costs anyway).
Rule 4: fragments are sent at the peer's maximum PDU length (its A-ASSOCIATE-AC; no
        limit → ``MAX_FRAGMENT``), one PDV per P-DATA-TF, as DCMTK and pynetdicom do.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BufferedIOBase
from typing import Protocol

from proxy.dicom import commands, pdu
from proxy.dicom.commands import Command

MAX_FRAGMENT = 1 << 20           # our fragment size toward a peer that set no limit
SEND_BATCH = 512 * 1024          # bytes handed to one sendmsg ...
MAX_PARTS = 512                  # ... in at most this many buffers (IOV_MAX is 1024)
COMMAND, LAST = pdu.COMMAND, pdu.LAST     # message control header bits (PS3.8 E.2)
RELEASE_RQ = pdu.encode(pdu.ReleaseRQ())
RELEASE_RP = pdu.encode(pdu.ReleaseRP())


class LinkClosed(ConnectionError):
    """The association ended under us: aborted, released or the connection closed."""


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


class Link:
    """An established association; ``open`` negotiates it."""

    def __init__(self, sock: socket.socket, accept: Negotiated,
                 max_pdu_length: int) -> None:
        self.sock = sock
        self.accept = accept
        self.max_pdu_length = max_pdu_length
        peer = accept.max_pdu_length
        self.fragment = min(peer - 6, MAX_FRAGMENT) if peer > 6 else MAX_FRAGMENT
        self._buf = bytearray(max(max_pdu_length + 6, 64 * 1024) + 64 * 1024)
        self._start = self._end = 0
        self._pdvs: deque[pdu.Pdv] = deque()
        self._send_lock = threading.Lock()
        self.closed = False
        self.abstract: dict[int, str] = {}     # context ID -> abstract syntax proposed

    # -- opening ---------------------------------------------------------------------

    @classmethod
    def open(cls, host: str, port: int, request: pdu.AssociateRQ,
             connect_timeout: float, timeout: float, tls: ssl.SSLContext | None = None,
             server_hostname: str | None = None,
             on_tls: Callable[[bytes | None], None] | None = None) -> Link:
        """Connect (over TLS when ``tls``, Rule 5; ``on_tls`` hears the peer's certificate
        of a handshake that succeeded) and negotiate; raises OSError (TCP), TlsFailed,
        Rejected, LinkClosed, TimeoutError."""
        sock = socket.create_connection((host, port), timeout=connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                try:
                    sock = tls.wrap_socket(sock, server_hostname=server_hostname or host)
                except (OSError, ssl.SSLError) as exc:
                    raise TlsFailed(exc) from exc
                if on_tls is not None:
                    on_tls(sock.getpeercert(True))
            sock.settimeout(timeout)
            pdu.check_request(request)
            sock.sendall(pdu.encode(request))
            link = cls(sock, Negotiated(), request.user.max_length or 0)
            kind, body = link._read_pdu()
            if kind not in (pdu.A_ASSOCIATE_AC, pdu.A_ASSOCIATE_RJ):
                raise LinkClosed(f"the peer answered the association request with PDU "
                                 f"type 0x{kind:02X}")
            answer = pdu.parse(pdu.HEADER.pack(kind, len(body)) + body)
            if isinstance(answer, pdu.AssociateRJ):
                raise Rejected(answer)
            assert isinstance(answer, pdu.AssociateAC)
            link.accept = accept = Negotiated.of(answer)
            peer = accept.max_pdu_length
            link.fragment = min(peer - 6, MAX_FRAGMENT) if peer > 6 else MAX_FRAGMENT
            return link
        except BaseException:
            sock.close()
            raise

    # -- sending ---------------------------------------------------------------------

    def send_message(self, context_id: int, command: bytes,
                     data: memoryview | bytes | None = None,
                     source: BufferedIOBase | None = None, length: int = 0) -> None:
        """One DIMSE message: command, then the data set from ``data`` or ``length``
        bytes read from ``source`` (Rule 1)."""
        with self._send_lock:
            write_message(self.sock, self.fragment, context_id, command, data, source, length)

    # -- receiving -------------------------------------------------------------------

    def read_message(self, target_for: Callable[[int, Command], DataTarget | None] | None = None
                     ) -> Message:
        """The next whole DIMSE message; its data set goes to ``target_for(cx, command)``
        fragment by fragment, or is collected (no ``target_for``, or it returns None)."""
        command_bytes = bytearray()
        while True:
            cx, control, fragment = self._next_pdv()
            if not control & COMMAND:
                raise LinkClosed("the peer sent a data set fragment without a command")
            command_bytes += fragment
            if control & LAST:
                break
        try:
            command = commands.decode(bytes(command_bytes))
        except commands.CommandError as exc:
            raise pdu.PduError(str(exc)) from exc
        message = Message(cx, command)
        if not commands.has_data_set(command):
            return message
        target = target_for(cx, command) if target_for is not None else None
        collected = bytearray() if target is None else None
        while True:
            dcx, control, fragment = self._next_pdv()
            if control & COMMAND or dcx != cx:
                raise LinkClosed("the peer interleaved another message into a data set")
            if target is not None:
                target.write(fragment)
            elif collected is not None:
                collected += fragment
            if control & LAST:
                break
        if collected is not None:
            message.data = bytes(collected)
        return message

    def _next_pdv(self) -> tuple[int, int, memoryview]:
        """(context ID, message control header, fragment) of the next PDV."""
        while not self._pdvs:
            kind, body = self._read_pdu()
            if kind == pdu.P_DATA_TF:
                self._pdvs.extend(pdu.pdvs(body))
            elif kind == pdu.A_ABORT:
                self._shut()
                raise LinkClosed("the peer aborted the association (A-ABORT)")
            elif kind == pdu.A_RELEASE_RQ:
                self._send_raw(RELEASE_RP)
                self._shut()
                raise LinkClosed("the peer released the association mid-operation")
            else:
                self.abort()
                raise pdu.PduError(f"unexpected PDU type 0x{kind:02X} in an association")
        pdv = self._pdvs.popleft()
        return (pdv.context_id, COMMAND * pdv.is_command | LAST * pdv.is_last,
                memoryview(pdv.data))

    def _read_pdu(self) -> tuple[int, memoryview]:
        header = self._take(6)
        kind, length = pdu.HEADER.unpack_from(header)
        known = pdu.A_ASSOCIATE_RQ <= kind <= pdu.A_ABORT
        if not known or (self.max_pdu_length and kind == pdu.P_DATA_TF
                         and length > self.max_pdu_length):
            self.abort()
            raise pdu.PduError(f"PDU type 0x{kind:02X} of {length} bytes (the proxy "
                               f"accepts at most {self.max_pdu_length})")
        if length + 6 > len(self._buf):      # an A-ASSOCIATE-AC is a few kB at most
            self.abort()
            raise pdu.PduError(f"PDU type 0x{kind:02X} of {length} bytes")
        return kind, self._take(length)

    def _take(self, n: int) -> memoryview:
        """``n`` bytes from the buffer; valid until the next ``_take``."""
        if self._end - self._start < n:
            if self._start + n > len(self._buf):       # compact: move the tail to the front
                tail = self._end - self._start
                self._buf[:tail] = self._buf[self._start:self._end]
                self._start, self._end = 0, tail
            with memoryview(self._buf) as view:
                while self._end - self._start < n:
                    got = self.sock.recv_into(view[self._end:])
                    if not got:
                        self._shut()
                        raise LinkClosed("the peer closed the connection")
                    self._end += got
        start = self._start
        self._start += n
        return memoryview(self._buf)[start:start + n]

    # -- ending ------------------------------------------------------------------------

    def release(self) -> None:
        """A-RELEASE; what arrives meanwhile is discarded; abort if the peer does not answer."""
        if self.closed:
            return
        try:
            self._send_raw(RELEASE_RQ)
            while True:
                kind, _body = self._read_pdu()
                if kind in (pdu.A_RELEASE_RP, pdu.A_ABORT):
                    break
        except (OSError, pdu.PduError):
            pass
        self._shut()

    def abort(self) -> None:
        """A-ABORT and close, from any thread (Rule 1). A thread blocked sending (a peer
        that stopped reading) is not waited for: the A-ABORT is skipped and closing the
        socket ends that send, so a shutdown never waits out the socket timeout."""
        if self.closed:
            return
        if self._send_lock.acquire(blocking=False):
            try:
                self.sock.sendall(pdu.encode(pdu.Abort()))
            except OSError:
                pass
            finally:
                self._send_lock.release()
        self._shut()

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


# -- writing P-DATA ----------------------------------------------------------------------

def write_message(sock: socket.socket, step: int, cx: int, command: bytes,
                  data: memoryview | bytes | None = None,
                  source: BufferedIOBase | None = None, length: int = 0) -> None:
    """Write one DIMSE message as P-DATA-TF PDUs of ``step``-byte fragments (Rule 4)."""
    _fragments(sock, step, cx, COMMAND, memoryview(command))
    if data is not None:
        _fragments(sock, step, cx, 0, memoryview(data))
    elif source is not None:
        _from_file(sock, step, cx, source, length)


def _fragments(sock: socket.socket, step: int, cx: int, kind: int, view: memoryview) -> None:
    full = pdata_header(cx, kind, step)           # every fragment but the last
    parts: list[bytes | memoryview] = []
    size, at, total = 0, 0, len(view)
    while total - at > step:
        parts.append(full)
        parts.append(view[at:at + step])
        at += step
        size += step
        if size >= SEND_BATCH or len(parts) >= MAX_PARTS:
            sendmsg_all(sock, parts)
            parts, size = [], 0
    parts.append(pdata_header(cx, kind | LAST, total - at))
    parts.append(view[at:])
    sendmsg_all(sock, parts)


def _from_file(sock: socket.socket, step: int, cx: int, source: BufferedIOBase,
               length: int) -> None:
    per_batch = max(1, min(SEND_BATCH // step, MAX_PARTS // 2)) * step
    chunk = bytearray(min(per_batch, max(length, 1)))
    view = memoryview(chunk)
    full = pdata_header(cx, 0, step)
    left = length
    while left > len(chunk):                          # whole fragments, none of them last
        if source.readinto(view) != len(chunk):
            raise OSError("buffered instance ended early")
        parts: list[bytes | memoryview] = []
        for at in range(0, len(view), step):
            parts.append(full)
            parts.append(view[at:at + step])
        sendmsg_all(sock, parts)
        left -= len(chunk)
    if left and source.readinto(view[:left]) != left:
        raise OSError("buffered instance ended early")
    _fragments(sock, step, cx, 0, view[:left])


def pdata_header(context_id: int, control: int, fragment_length: int) -> bytes:
    """The 12 bytes before a fragment sent alone in its P-DATA-TF."""
    return (pdu.HEADER.pack(pdu.P_DATA_TF, fragment_length + 6)
            + pdu.pdv_header(context_id, bool(control & COMMAND), bool(control & LAST),
                             fragment_length))


def sendmsg_all(sock: socket.socket, parts: list[bytes | memoryview]) -> None:
    """``sendmsg`` until every byte of ``parts`` is written (a TLS socket: Rule 5)."""
    if isinstance(sock, ssl.SSLSocket):
        sock.sendall(b"".join(parts))
        return
    while parts:
        sent = sock.sendmsg(parts)
        while parts and sent >= len(parts[0]):
            sent -= len(parts[0])
            parts.pop(0)
        if parts and sent:
            parts[0] = memoryview(parts[0])[sent:]
