"""One DICOM association as a sans-IO protocol object (the h11 ``Connection`` model).

Job: the driver feeds the bytes it read (``receive_data``) and takes typed events
(``next_event``); it hands things to send (``send``) and writes the bytes returned.
Every step goes through the PS3.8 state table (``proxy.dicom.states``); PDUs through
``proxy.dicom.pdu``; DIMSE messages through ``proxy.dicom.dimse``.

Rule 1: no sockets, no threads, no clocks. The driver owns the transport and the ARTIM
        timer: it starts the timer while ``artim_running`` is true, calls
        ``timer_expired()`` when it fires, and closes the transport once ``state`` is
        Sta1 (the ``ConnectionClosed`` event says so). ``receive_data(b"")`` is the
        transport closing (Evt17).
Rule 2: the association exists once the transport does: an acceptor starts in Sta2
        (Evt5 done, ARTIM running), a requestor's ``send(AssociateRQ)`` runs Evt1 and
        Evt2 and returns the A-ASSOCIATE-RQ bytes.
Rule 3: a local request the state table does not allow raises ``LocalProtocolError``
        and changes nothing — e.g. a DIMSE message after this side sent A-RELEASE-RQ
        (Sta7), or anything after an abort. A message may only use a presentation
        context accepted for this association.
Rule 4: a received PDU that is malformed, longer than the limit, or breaks DIMSE
        ordering is Evt19: the table's action runs (A-ABORT from the service provider,
        an ``Aborted(local=True)`` event), and all later input is discarded — framing
        can no longer be trusted. Bytes that received input makes this side send
        (A-ABORT; A-ASSOCIATE-RJ for an unsupported protocol version, AE-6) wait in
        ``data_to_send()``: the driver writes them after every ``next_event()``.
Rule 5: bounded: a P-DATA-TF may be as long as the maximum PDU length this side
        announced (0 announced → ``UNLIMITED_PDU``), an association PDU as long as
        ``max_associate_pdu``. The 6-byte header decides before the body is buffered,
        so a 4 GB length costs nothing.
Rule 6: no copy of what arrives whole: PDUs are parsed in place from the bytes of the
        read that holds them (the PDV data handed on are views of those bytes, which
        never change); only a PDU split across reads is gathered into one buffer, which
        is then handed on as it is and replaced by a new one for the next PDU.
Rule 7: ``receive_into=True`` is the other way to feed bytes (asyncio's
        ``BufferedProtocol`` model, for a driver that ``recv_into``s): ``get_buffer()``
        says where the next read goes, ``buffer_updated(n)`` hands over what it read,
        ``receive_data(b"")`` still says the transport closed. No PDU is ever copied,
        split across reads or not: the buffer holds the PDU in progress and room for a
        read, and grows (by replacement, within the Rule 5 limits) only for a PDU larger
        than it. The views handed on (``DataFragment.data``) are valid until the next
        ``get_buffer()``: the consumer copies what it keeps.
Rule 8: a driver that writes P-DATA-TF PDUs itself (``sendmsg`` of a header and the
        caller's buffer or file chunk) asks ``send_pdata(context, control, length)``
        for each run of identical PDUs it writes together: the state table decides
        (Evt9: DT-1 in Sta6, AR-7 in Sta8, which keep the state, so one answer holds
        for the run), the context and the peer's maximum PDU length are checked as for
        ``send(SendMessage)``, and the 12-byte header comes back; the payload never
        passes through the association.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

from proxy.dicom import pdu
from proxy.dicom.dimse import Assembler, DimseError, fragments
from proxy.dicom.events import (
    Aborted,
    AssociateAccepted,
    AssociateRejected,
    AssociateRequested,
    ConnectionClosed,
    NeedData,
    Received,
    ReleaseConfirmed,
    ReleaseRequested,
    SendMessage,
)
from proxy.dicom.states import Action, Event, InvalidTransition, State, transition

MAX_ASSOCIATE_PDU = 1 << 20
UNLIMITED_PDU = 64 << 20
READ_ROOM = 64 * 1024                   # receive_into: room for a read beyond the PDU (Rule 7)
# PS3.8 Table 9-26 A-ABORT reasons, service-provider source
UNRECOGNIZED_PDU, UNEXPECTED_PDU, INVALID_PARAMETER = 1, 2, 6
USER, PROVIDER = 0, 2

_RECEIVED = {pdu.A_ASSOCIATE_AC: Event.Evt3, pdu.A_ASSOCIATE_RJ: Event.Evt4,
             pdu.A_ASSOCIATE_RQ: Event.Evt6, pdu.P_DATA_TF: Event.Evt10,
             pdu.A_RELEASE_RQ: Event.Evt12, pdu.A_RELEASE_RP: Event.Evt13,
             pdu.A_ABORT: Event.Evt16}
_ARTIM_START = {Action.AE5, Action.AE8, Action.AR4, Action.AA1, Action.AA8}
_ARTIM_STOP = {Action.AE6, Action.AR5, Action.AA2, Action.AA5}
_ARTIM = _ARTIM_START | _ARTIM_STOP
# per PDU: module names, not Enum class attribute look-ups (a metaclass call each)
_IDLE, _DATA_RECEIVED = State.Sta1, {Action.DT2, Action.AR6}
_COMMAND, _LAST = pdu.COMMAND, pdu.LAST
Outgoing = pdu.AssociateRQ | pdu.AssociateAC | pdu.AssociateRJ | SendMessage | \
    pdu.ReleaseRQ | pdu.ReleaseRP | pdu.Abort


class LocalProtocolError(Exception):
    """This side asked for something PS3.8 forbids here (Rule 3)."""


class Association:
    def __init__(self, role: Literal["acceptor", "requestor"], *, stream_data: bool = False,
                 max_associate_pdu: int = MAX_ASSOCIATE_PDU, receive_into: bool = False) -> None:
        self.requestor = role == "requestor"
        self.state = State.Sta1
        self.artim_running = False
        self.max_associate_pdu = max_associate_pdu
        self.receive_limit = 0                # P-DATA-TF limit, once this side announced it
        self.peer_max_pdu_length = 0          # 0: the peer set no limit
        self.proposed: dict[int, str] = {}    # context ID -> abstract syntax
        self.contexts: dict[int, str] = {}    # accepted context ID -> transfer syntax
        self._assembler = Assembler(stream=stream_data)
        self._head = bytearray()              # a PDU begun in an earlier read (Rule 6)
        self._chunk: bytes = b""              # the latest read, parsed in place from _pos
        self._pos = 0
        self._into = receive_into             # Rule 7: the driver reads into _buf
        self._buf = bytearray()
        self._view = memoryview(self._buf)
        self._start = self._end = 0           # _buf[_start:_end]: received, not yet handled
        self._out = bytearray()
        self._pending: deque[Received] = deque()
        self._eof = self._broken = False
        if receive_into:
            self._next_pdu = self._next_in_place  # type: ignore[method-assign]
        if not self.requestor:
            self._step(Event.Evt5)

    # -- the state table -------------------------------------------------------------
    def _step(self, event: Event, *, acceptable: bool = True) -> Action:
        action, self.state = transition(self.state, event, requestor=self.requestor,
                                        acceptable=acceptable)
        if action in _ARTIM:
            if action in _ARTIM_START:
                self.artim_running = True
            else:
                self.artim_running = action is Action.AE6 and not acceptable
        return action

    # -- receiving -------------------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes read from the transport; ``b""`` when the peer closed it (Evt17)."""
        if not data:
            self._eof = True
        elif self._into:
            raise LocalProtocolError("this association reads in place (Rule 7): "
                                     "get_buffer() and buffer_updated()")
        elif not self._broken and not self._eof:
            if self._pos < len(self._chunk):   # not all parsed yet (the driver paused)
                self._chunk = self._chunk[self._pos:] + bytes(data)
            else:
                self._chunk = data if isinstance(data, bytes) else bytes(data)
            self._pos = 0

    def get_buffer(self) -> memoryview:
        """Where the driver's next read goes (Rule 7); then ``buffer_updated(n)``."""
        if self._broken or self._eof or self._start == self._end:
            self._start = self._end = 0       # nothing pending (broken: discarded, Rule 4)
        start, end = self._start, self._end
        need = pdu.HEADER.size                # what the PDU in progress needs in all
        if end - start >= need:
            length = pdu.HEADER.unpack_from(self._buf, start)[1]
            if length <= self._limit(self._buf[start]):  # else next_event() refuses it
                need += length
        if start + need + READ_ROOM // 4 > len(self._buf):
            size = len(self._buf)
            if need + READ_ROOM // 4 > size:  # grown by replacement: views stay valid
                size = max(need, min(max(self.receive_limit, 1 << 16),
                                     max(self.max_associate_pdu, 1 << 16))) + READ_ROOM
                self._buf = bytearray(size)
                self._view, old = memoryview(self._buf), self._view
                self._view[:end - start] = old[start:end]
            else:                             # memoryview assignment is a memmove
                self._view[:end - start] = self._view[start:end]
            self._start, self._end = 0, end - start
        return self._view[self._end:]

    def buffer_updated(self, n: int) -> None:
        """``n`` bytes were read into the ``get_buffer()`` view (Rule 7)."""
        if not self._broken:                  # else discarded (Rule 4)
            self._end += n

    @property
    def buffered(self) -> int:
        """Received bytes not yet handled (a partial PDU, within its limit, Rule 5)."""
        if self._into:
            return self._end - self._start
        return len(self._head) + len(self._chunk) - self._pos

    def data_to_send(self) -> bytes:
        """Bytes the received input made this side send (A-ABORT, A-ASSOCIATE-RJ)."""
        if not self._out:
            return b""
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Received:
        while not self._pending:
            if self.state is _IDLE:
                return ConnectionClosed()
            if not self._next_pdu():
                if not self._eof:
                    return NeedData()
                self._closed()
        return self._pending.popleft()

    def _limit(self, kind: int) -> int:
        if kind == pdu.P_DATA_TF and self.receive_limit:
            return self.receive_limit
        return self.max_associate_pdu

    def _next_pdu(self) -> bool:
        """Handle one whole buffered PDU; False when there is none (Rule 6; Rule 7 has
        its own, ``_next_in_place``)."""
        if self._broken or not self.buffered:
            return False
        head = self._head
        first = head[0] if head else self._chunk[self._pos]
        raw: bytes | memoryview | None
        try:
            if head:
                raw = self._completed(head, first)
                if raw is None:
                    return False
            else:
                view = memoryview(self._chunk)[self._pos:]
                framed = pdu.frame(view, self._limit(first))
                if framed is None:             # a PDU begun: wait for the rest
                    head += view
                    self._pos = len(self._chunk)
                    return False
                raw = view[:framed[1]]
                self._pos += framed[1]
        except pdu.PduError as exc:
            self._invalid(str(exc), UNRECOGNIZED_PDU if first not in _RECEIVED
                          else INVALID_PARAMETER)
            return True
        self._parsed(first, raw)
        return True

    def _next_in_place(self) -> bool:
        """Rule 7: the next whole PDU in ``_buf``, parsed where it lies."""
        start, end = self._start, self._end
        if self._broken or end - start < pdu.HEADER.size:
            return False
        kind, length = pdu.HEADER.unpack_from(self._buf, start)
        if kind == pdu.P_DATA_TF and length <= self.receive_limit:   # the bulk: framed here
            total = pdu.HEADER.size + length
        else:
            try:
                framed = pdu.frame(self._view[start:end], self._limit(kind))
            except pdu.PduError as exc:
                self._invalid(str(exc), UNRECOGNIZED_PDU if kind not in _RECEIVED
                              else INVALID_PARAMETER)
                return True
            if framed is None:
                return False
            total = framed[1]
        if end - start < total:
            return False
        self._start = start + total
        if kind != pdu.P_DATA_TF:
            self._parsed(kind, self._view[start:start + total])
            return True
        try:                                   # the bulk: straight to its PDVs
            pdvs = pdu.pdv_items(self._view[start + pdu.HEADER.size:start + total])
        except pdu.PduError as exc:
            self._invalid(f"PDU type 0x{kind:02X}: {exc}", INVALID_PARAMETER)
            return True
        self._dispatch(kind, pdvs)
        return True

    def _parsed(self, kind: int, raw: bytes | memoryview) -> None:
        """``raw`` is one framed PDU: a P-DATA-TF's PDVs go on as tuples, not values."""
        received: pdu.Pdu | list[tuple[int, int, memoryview]]
        try:
            if kind == pdu.P_DATA_TF:
                view = raw if isinstance(raw, memoryview) else memoryview(raw)
                received = pdu.pdv_items(view[pdu.HEADER.size:])
            else:
                received = pdu.parse(raw)
        except pdu.PduError as exc:
            self._invalid(f"PDU type 0x{kind:02X}: {exc}", INVALID_PARAMETER)
            return
        self._dispatch(kind, received)

    def _completed(self, head: bytearray, first: int) -> memoryview | None:
        """``head`` grown from the latest read up to one whole PDU, handed over as it is
        (Rule 6: a new buffer gathers the next one, so its views never change); None
        while short."""
        chunk, pos = self._chunk, self._pos
        if len(head) < pdu.HEADER.size:
            take = min(pdu.HEADER.size - len(head), len(chunk) - pos)
            head += chunk[pos:pos + take]
            pos = self._pos = pos + take
            if len(head) < pdu.HEADER.size:
                return None
        framed = pdu.frame(head, self._limit(first))   # the limit, before the body
        total = framed[1] if framed is not None else \
            pdu.HEADER.size + pdu.HEADER.unpack_from(head)[1]
        take = min(total - len(head), len(chunk) - pos)
        head += chunk[pos:pos + take]
        self._pos = pos + take
        if len(head) < total:
            return None
        self._head = bytearray()        # the gathered PDU is handed on, never touched again
        return memoryview(head)

    def _invalid(self, why: str, reason: int) -> None:
        """Evt19 (Rule 4)."""
        self._broken = True
        self._head.clear()
        self._chunk, self._pos = b"", 0
        self._start = self._end = 0
        self._abort_action(self._step(Event.Evt19), why, reason)

    def _abort_action(self, action: Action, why: str, reason: int) -> None:
        if action is Action.AA1:
            self._out += pdu.encode(pdu.Abort(USER, 0))      # PS3.8: service-user source
            self._pending.append(Aborted(USER, 0, local=True, reason_text=why))
        elif action is Action.AA7:
            self._out += pdu.encode(pdu.Abort(PROVIDER, reason))
        elif action is Action.AA8:
            self._out += pdu.encode(pdu.Abort(PROVIDER, reason))
            self._pending.append(Aborted(PROVIDER, reason, local=True, reason_text=why))

    def _closed(self) -> None:
        """Evt17: the transport closed under us."""
        action = self._step(Event.Evt17)
        if action is Action.AA4:
            self._pending.append(Aborted(PROVIDER, 0, local=False,
                                         reason_text="transport connection closed"))
        self._pending.append(ConnectionClosed())

    def _dispatch(self, kind: int,
                  received: pdu.Pdu | list[tuple[int, int, memoryview]]) -> None:
        before = self.state
        action = self._step(_RECEIVED[kind], acceptable=not isinstance(received, pdu.AssociateRQ)
                            or bool(received.protocol_version & 1))
        if action in _DATA_RECEIVED:          # the bulk of an association: DT-2, AR-6
            assert isinstance(received, list)
            self._data(received)
        elif action in (Action.AA1, Action.AA7, Action.AA8):
            name = "PData" if isinstance(received, list) else type(received).__name__
            self._abort_action(action, f"{name} PDU (type 0x{kind:02X}) unexpected in "
                               f"{before.name}", UNEXPECTED_PDU)
        elif action is Action.AE6:
            assert isinstance(received, pdu.AssociateRQ)
            self._requested(received)
        elif action is Action.AE3:
            assert isinstance(received, pdu.AssociateAC)
            self.peer_max_pdu_length = received.user.max_length or 0
            self.contexts = {cx.context_id: cx.transfer_syntax for cx in received.contexts
                             if cx.result == 0 and cx.context_id in self.proposed}
            self._pending.append(AssociateAccepted(received))
        elif action is Action.AE4:
            assert isinstance(received, pdu.AssociateRJ)
            self._pending += (AssociateRejected(received), ConnectionClosed())
        elif action in (Action.AR2, Action.AR8):
            self._pending.append(ReleaseRequested(collision=action is Action.AR8))
        elif action in (Action.AR3, Action.AR10):
            self._pending.append(ReleaseConfirmed())
        elif action is Action.AA3:
            assert isinstance(received, pdu.Abort)
            self._pending += (Aborted(received.source, received.reason, local=False),
                              ConnectionClosed())
        elif action is Action.AA2:
            self._pending.append(ConnectionClosed())
        # AA-6: ignore the PDU

    def _requested(self, rq: pdu.AssociateRQ) -> None:
        if self.state is State.Sta13:       # AE-6, not acceptable: protocol version
            # PS3.8 Table 9-21: permanent, ACSE provider (2), protocol-version-not-supported
            self._out += pdu.encode(pdu.AssociateRJ(1, 2, 2))
            return
        self.peer_max_pdu_length = rq.user.max_length or 0
        self.proposed = {cx.context_id: cx.abstract_syntax for cx in rq.contexts}
        self._pending.append(AssociateRequested(rq))

    def _data(self, pdvs: list[tuple[int, int, memoryview]]) -> None:
        contexts, feed, pending = self.contexts, self._assembler.feed, self._pending
        try:
            for context_id, control, data in pdvs:
                if context_id not in contexts:
                    raise DimseError(f"PDV on presentation context {context_id}, which "
                                     "this association did not accept")
                pending.extend(feed(context_id, control & _COMMAND != 0,
                                    control & _LAST != 0, data))
        except DimseError as exc:
            self._invalid(str(exc), INVALID_PARAMETER)

    # -- sending ---------------------------------------------------------------------
    def send(self, item: Outgoing) -> bytes:
        """The bytes to write for ``item`` (Rules 2 and 3)."""
        try:
            return self._send(item)
        except InvalidTransition as exc:
            raise LocalProtocolError(str(exc)) from None

    def _send(self, item: Outgoing) -> bytes:
        if isinstance(item, pdu.AssociateRQ):
            self._step(Event.Evt1)
            self._step(Event.Evt2)
            self.proposed = {cx.context_id: cx.abstract_syntax for cx in item.contexts}
            self.receive_limit = item.user.max_length or UNLIMITED_PDU
            return pdu.encode(item)
        if isinstance(item, pdu.AssociateAC):
            unknown = {cx.context_id for cx in item.contexts} - set(self.proposed)
            if unknown and self.state is State.Sta3:
                raise LocalProtocolError(f"A-ASSOCIATE-AC answers contexts {sorted(unknown)} "
                                         "the requestor did not propose")
            self._step(Event.Evt7)
            self.contexts = {cx.context_id: cx.transfer_syntax for cx in item.contexts
                             if cx.result == 0}
            self.receive_limit = item.user.max_length or UNLIMITED_PDU
            return pdu.encode(item)
        if isinstance(item, pdu.AssociateRJ):
            self._step(Event.Evt8)
            return pdu.encode(item)
        if isinstance(item, SendMessage):
            if item.context_id not in self.contexts and self.state in (State.Sta6, State.Sta8):
                raise LocalProtocolError(f"presentation context {item.context_id} was not "
                                         "accepted on this association")
            self._step(Event.Evt9)
            return b"".join(fragments(item.context_id, item.command, item.data,
                                      self.peer_max_pdu_length))
        if isinstance(item, pdu.ReleaseRQ):
            self._step(Event.Evt11)
            return pdu.encode(item)
        if isinstance(item, pdu.ReleaseRP):
            self._step(Event.Evt14)
            return pdu.encode(item)
        action = self._step(Event.Evt15)
        return pdu.encode(item) if action is Action.AA1 else b""

    def send_pdata(self, context_id: int, control: int, length: int) -> bytes:
        """Rule 8: the header of P-DATA-TF PDUs of one PDV of ``length`` bytes each that
        the driver writes itself; ``LocalProtocolError`` if PS3.8 forbids them now."""
        if context_id not in self.contexts and self.state in (State.Sta6, State.Sta8):
            raise LocalProtocolError(f"presentation context {context_id} was not "
                                     "accepted on this association")
        peer = self.peer_max_pdu_length
        if peer and length + pdu.PDV_HEADER.size > peer:
            raise LocalProtocolError(f"a {length}-byte fragment exceeds the peer's maximum "
                                     f"PDU length of {peer}")
        if control & ~(pdu.COMMAND | pdu.LAST):
            raise LocalProtocolError(f"message control header 0x{control:02X} sets "
                                     "reserved bits")
        try:
            self._step(Event.Evt9)
        except InvalidTransition as exc:
            raise LocalProtocolError(str(exc)) from None
        return (pdu.HEADER.pack(pdu.P_DATA_TF, length + pdu.PDV_HEADER.size)
                + pdu.PDV_HEADER.pack(length + 2, context_id, control))

    def timer_expired(self) -> ConnectionClosed | None:
        """ARTIM fired (Evt18); ``ConnectionClosed`` when the transport must now close."""
        if not self.artim_running:
            return None
        try:
            self._step(Event.Evt18)
        except InvalidTransition:
            return None
        return ConnectionClosed()
