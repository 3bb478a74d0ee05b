"""PDUs on the wire with few system calls and thread hops: read-ahead, direct bulk writes.

Job: pynetdicom's ``AssociationSocket.recv`` reads a PDU in 4096-byte ``recv`` calls
appended to a growing bytearray, and its DUL thread asks ``select`` before every PDU
("is there data?"), then reads the 6-byte header and the body separately. For a
bulk transfer at 16 KB PDUs (32 per CT image, each way) that is ~7 system calls and
as many GIL hand-offs per PDU, on the thread that is the proxy's bottleneck.
``ReadAheadSocket`` reads what the kernel already holds (up to ``READ_AHEAD``
bytes) in one ``recv_into`` and serves the next header and bodies from it;
``ready`` answers from that buffer before asking ``select``.

Sending, pynetdicom splits a DIMSE message into P-DATA primitives and queues each
for its DUL thread, which wakes, runs its state machine, encodes and sends one PDU
per loop: 32 thread hand-offs per CT image. ``write_directly(assoc)`` makes the
association's DIMSE layer encode the PDUs itself and write them from the sending
thread, many PDUs per ``sendall``.

Rule 1: the bytes and their order are unchanged; ``recv(n)`` returns exactly ``n``
        bytes, or fewer only when the peer closed the connection (as pynetdicom's).
Rule 2: memory stays bounded: at most ``READ_AHEAD`` bytes are held beyond the PDU
        being read, and a body larger than half of it is read straight into its own
        buffer (no read-ahead). The listener's PDU size limit (``listener._BoundedSocket``,
        a subclass) is still checked before a body is read.
Rule 3 (direct writes): only on associations the proxy opted in, only in state Sta6
        (established) with nothing queued for the DUL thread (otherwise pynetdicom's
        queue is used as before); every DIMSE message of that association then goes
        this way from one thread at a time (the proxy's sinks), so messages keep order;
        writes hold the socket's write lock, which pynetdicom's own sends (release,
        abort) take too, so PDUs never interleave. EVT_DIMSE_SENT still fires; a
        failed write is reported as pynetdicom reports one (Evt17, connection closed).
        PDU size: the peer's maximum (``dimse.maximum_pdu_size``), as pynetdicom's.
Rule 4: anything but a plain TCP socket (TLS: the SSL layer buffers on its own) keeps
        pynetdicom's behaviour. The swap is of the socket object's class only
        (``use_read_ahead``), on the proxy's own associations; pinned to pynetdicom
        >=3.0.4,<3.1 (``AssociationSocket.recv``/``ready``/``close`` as in 3.0).
Rule 5 (``write_message``): a DIMSE message the caller encoded itself (the retrieve's
        C-STOREs back to a C-GET workstation: command set by ``proxy.ul.commands``,
        data set as received) is written the same way, under the same conditions
        and lock, with ``proxy.ul.link``'s fragmenting; no EVT_DIMSE_SENT (no
        pynetdicom message object exists). The response still arrives through
        pynetdicom's DIMSE queue.
Rule 6 (``wake_on_data``): pynetdicom's DUL thread sleeps 1 ms whenever a loop found
        nothing to do, then polls the socket with a zero timeout — so a PDU waits up
        to 1 ms before anyone reads it: a C-STORE response per instance, a request
        per query. On opted-in associations it sleeps ~10 µs and waits up to
        ``SELECT_WAIT`` in ``select`` instead: the same ~1,000 idle wake-ups a second,
        but woken the moment data arrives. (Outgoing primitives queued for the DUL
        thread still wait at most 1 ms, as before.)
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from typing import Any

from pynetdicom.transport import AssociationSocket

READ_AHEAD = 256 * 1024
SELECT_WAIT = 0.001              # how long the DUL thread waits in select for a PDU ...
RUN_LOOP_DELAY = 0.00001         # ... instead of pynetdicom's blind 1 ms sleep per idle loop
WRITE_BATCH = 256 * 1024         # bytes of PDUs joined into one sendall
_PDV_HEADER = struct.Struct(">BBLLB")   # P-DATA-TF type, reserved, length; PDV length, context


class ReadAheadSocket(AssociationSocket):  # type: ignore[misc]
    """An ``AssociationSocket`` whose reads go through a bounded read-ahead buffer."""

    # Set per instance on first use: the class is swapped onto an existing object.
    _ahead: bytearray | None = None
    _start = 0
    _end = 0
    _wlock: threading.Lock | None = None      # set by ``write_directly`` (Rule 3)

    def _plain(self) -> socket.socket | None:
        sock = self.socket
        return sock if type(sock) is socket.socket else None

    _wait = 0.0                               # set by ``wake_on_data`` (Rule 6)

    @property
    def ready(self) -> bool:
        if self._end > self._start and self.socket is not None and self._is_connected:
            return True                     # a PDU (or its start) is already here
        sock = self._plain() if self._wait else None
        if sock is None or not self._is_connected:
            ready: bool = super().ready
            return ready
        try:                                # woken as soon as data arrives (Rule 6)
            readable, _, _ = select.select([sock], [], [], self._wait)
        except (OSError, TimeoutError, ValueError):
            self.event_queue.put("Evt17")   # as pynetdicom's ``ready`` reports it
            return False
        return bool(readable)

    def recv(self, nr_bytes: int) -> bytearray:
        sock = self._plain()
        if sock is None:
            data: bytearray = super().recv(nr_bytes)
            return data
        ahead = self._ahead
        if ahead is None:
            ahead = self._ahead = bytearray(READ_AHEAD)
        avail = self._end - self._start
        if avail >= nr_bytes:                # served from what was read before
            out = ahead[self._start:self._start + nr_bytes]
            self._start += nr_bytes
            return out
        out = bytearray(nr_bytes)
        view = memoryview(out)
        view[:avail] = ahead[self._start:self._end]
        got = avail
        self._start = self._end = 0
        with memoryview(ahead) as spare:
            while got < nr_bytes:
                need = nr_bytes - got
                if need > READ_AHEAD // 2:   # a large body: straight into place (Rule 2)
                    n = sock.recv_into(view[got:], need)
                    got += n
                else:
                    n = sock.recv_into(spare, READ_AHEAD)
                    take = min(n, need)
                    view[got:got + take] = spare[:take]
                    got += take
                    self._start, self._end = take, n
                if not n:                    # the peer closed: what we have (Rule 1)
                    view.release()
                    return out[:got]
        view.release()
        return out

    def send(self, bytestream: bytes) -> None:
        lock = self._wlock
        if lock is None:
            super().send(bytestream)
            return
        with lock:
            super().send(bytestream)

    def close(self) -> None:
        self._start = self._end = 0
        super().close()


def use_read_ahead(assoc: Any) -> None:
    """Make ``assoc``'s socket a ``ReadAheadSocket`` (call before any PDU is read)."""
    sock = getattr(getattr(assoc, "dul", None), "socket", None)
    if isinstance(sock, AssociationSocket) and not isinstance(sock, ReadAheadSocket):
        sock.__class__ = ReadAheadSocket


def wake_on_data(assoc: Any) -> None:
    """Let ``assoc``'s DUL thread wait for data in ``select`` instead of sleeping (Rule 6)."""
    dul: Any = getattr(assoc, "dul", None)
    sock = getattr(dul, "socket", None)
    if isinstance(sock, ReadAheadSocket) and sock._plain() is not None:
        sock._wait = SELECT_WAIT
        dul._run_loop_delay = RUN_LOOP_DELAY
