"""Where retrieved instances go next: the Move Destination (C-MOVE) or the workstation (C-GET).

Both sinks C-STORE one buffered instance at a time while the puller keeps
receiving the next ones (pipelined: the archive never waits for the destination
unless the buffer is full).

Rule 1 (original encoding): an instance is sent as received, without decoding, over a
        context with its own SOP class and transfer syntax — the archive was asked for
        the syntaxes the peer accepted (``accepted``, ``sopclasses.for_receiver``), so
        that is the rule. Only when the peer accepted no such context is it decoded and
        re-encoded (``transcode.as_accepted``, the one choice every sender makes):
        between Explicit and Implicit VR Little Endian (same byte order, no
        compression, pixel data bytes unchanged), or, for an instance the archive could
        not convert, decompressed by ``transcode`` (the delivery says ``transcoded``).
        Otherwise the sub-operation fails, saying which syntax the peer did not accept.
        To the Move Destination the C-STOREs go over a lean association
        (``send_over_link``, ``proxy.ul``): fragments at the peer's maximum PDU
        length written with ``sendmsg`` straight from the instance's memory or
        file. Back to the workstation (C-GET) they go over its own association on the
        listener's stack (``Request.request``: the send waits while the workstation is
        behind, the response comes back to this thread).
Rule 2 (destination): one association for the whole retrieve, opened *before*
        anything is pulled, so a dead destination costs no archive traffic
        (every sub-operation then fails with the reason). If it drops mid-way it
        is re-opened once; if that fails too, the rest fail without more attempts.
        C-STOREs carry the workstation's AE title and C-MOVE Message ID as Move
        Originator (PS3.4 C.4.2.2.1). One ``upstream`` event per association.
Rule 3 (workstation, C-GET): C-STOREs go back over the workstation's own association,
        on the storage contexts it negotiated with the SCP role; ``begin`` hands one
        over to follow the one still awaiting its response (``Outbox.request_after``),
        ``finish`` takes its response.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from pydicom.uid import UID
from pynetdicom.presentation import PresentationContext

from proxy.dicom import commands, pdu
from proxy.dicom.events import MessageReceived, SendMessage
from proxy.dicom.link import LinkClosed as WorkstationGone
from proxy.dicom.link import NotSent
from proxy.observe import events as ev
from proxy.retrieve import transcode
from proxy.retrieve.reception import Buffered
from proxy.retrieve.sopclasses import Accepted, accepted_by
from proxy.services import Services
from proxy.session import Request
from proxy.status import Status, category
from proxy.ul.link import Link, LinkClosed
from proxy.upstream import ArchiveClient, UpstreamError


@dataclass(frozen=True)
class Delivery:
    status: int | None
    reason: str | None = None
    fatal: bool = False        # the peer is gone: nothing more can be delivered
    transcoded: bool = False   # the proxy converted it (``transcode``), the archive could not


class Sink(Protocol):
    def accepted(self) -> Accepted: ...
    def store(self, item: Buffered) -> Delivery: ...
    def close(self) -> None: ...


def _message_ids(start: int) -> Iterator[int]:
    return (1 + (start + i) % 65535 for i in itertools.count())


def send_over_link(link: Link, item: Buffered, msg_id: int, peer: str,
                   originator_ae: str, originator_id: int) -> Delivery:
    """One C-STORE of a buffered instance over a lean association (Rules 1, 2)."""
    exact = next((cx for cx, ts in link.accept.accepted.items()
                  if ts == item.transfer_syntax
                  and link.abstract.get(cx) == item.sop_class_uid), None)
    try:
        command = commands.c_store_rq(msg_id, item.sop_class_uid, item.sop_instance_uid,
                                      originator_ae, originator_id)
        transcoded = False
        if exact is not None:
            item.write_data(lambda **where: link.send_message(exact, command, **where))
        else:
            taken: dict[str, int] = {}
            for cx, ts in link.accept.accepted.items():
                if link.abstract.get(cx) == item.sop_class_uid:
                    taken.setdefault(ts, cx)
            result = transcode.as_accepted(item, list(taken))
            if result.transfer_syntax is None:
                why = f" ({result.reason})" if taken else ""
                return Delivery(None, f"{peer} accepted no context for "
                                      f"{_name(item.sop_class_uid)} in "
                                      f"{_name(item.transfer_syntax)}{why}")
            transcoded = result.transcoded      # converted: not the instance's own syntax
            link.send_message(taken[result.transfer_syntax], command, data=result.data)
        rsp = link.read_message().command
    except TimeoutError:
        link.abort()
        return Delivery(None, f"no C-STORE response from {peer} (timeout or abort)", fatal=True)
    except (LinkClosed, pdu.PduError, ConnectionError) as exc:
        link.abort()
        return Delivery(None, f"{peer} association lost ({exc})", fatal=True)
    except OSError as exc:             # the buffer file, not the link
        if link.closed:
            return Delivery(None, f"{peer} association lost ({exc})", fatal=True)
        return Delivery(None, f"{type(exc).__name__}: {exc}")
    if (rsp.get(commands.COMMAND_FIELD) != commands.C_STORE_RSP
            or rsp.get(commands.RESPONDED_TO) != msg_id or commands.STATUS not in rsp):
        link.abort()
        return Delivery(None, f"{peer} answered the C-STORE with something else", fatal=True)
    return _answered(int(rsp[commands.STATUS]), peer, transcoded)


def _answered(status: int, peer: str, transcoded: bool = False) -> Delivery:
    """A C-STORE response's status as a delivery; a failure names who answered it."""
    failed = category(status) == "failure"
    return Delivery(status, f"{peer} answered 0x{status:04X}" if failed else None,
                    transcoded=transcoded)


@dataclass
class DestinationSink:
    """C-STORE to the Move Destination over the proxy's own association (Rule 2)."""

    services: Services
    name: str                              # [destinations.<name>]
    client: ArchiveClient
    contexts: list[PresentationContext]
    originator_ae: str
    originator_id: int
    info: Any = None                       # the workstation's AssocInfo, for the event
    counts: dict[str, int] = field(default_factory=lambda: {
        "completed": 0, "failed": 0, "warning": 0, "associations": 0})
    _stack: ExitStack | None = None
    _link: Link | None = None
    _reopened: bool = False
    _dead: str | None = None
    _ids: Iterator[int] = field(default_factory=lambda: _message_ids(0))
    _started: float = field(default_factory=time.monotonic)

    def open(self) -> None:
        """Associate; raises UpstreamError (reported as one upstream event) when it fails."""
        stack = ExitStack()
        try:
            self._link = stack.enter_context(self.client.link(self.contexts))
        except UpstreamError as exc:
            stack.close()
            self._report(None, exc.reason, exc.hint)
            raise
        self._stack = stack
        self.counts["associations"] += 1

    def accepted(self) -> Accepted:
        link = self._link
        if link is None:
            return {}
        return accepted_by((link.abstract[cx], ts) for cx, ts in link.accept.accepted.items()
                           if cx in link.abstract)

    def store(self, item: Buffered) -> Delivery:
        delivery = self._store(item)
        kind = category(delivery.status)
        self.counts[{"success": "completed", "warning": "warning"}.get(kind, "failed")] += 1
        # Fatal only once re-opening failed too: the relay then stops pulling (Rule 2).
        return Delivery(delivery.status, delivery.reason, fatal=self._dead is not None,
                        transcoded=delivery.transcoded)

    def _store(self, item: Buffered) -> Delivery:
        if self._dead is None and (self._link is None or self._link.closed):
            self._reconnect()
        if self._dead is not None or self._link is None:
            return Delivery(None, self._dead or "no association to the destination")
        delivery = send_over_link(self._link, item, next(self._ids), self.client.peer.ae_title,
                                  self.originator_ae, self.originator_id)
        if delivery.fatal and self._reconnect() and self._link is not None:
            delivery = send_over_link(self._link, item, next(self._ids),
                                      self.client.peer.ae_title, self.originator_ae,
                                      self.originator_id)
        return delivery

    def _reconnect(self) -> bool:
        self._release(abort=True)
        if self._reopened:
            self._dead = self._dead or f"destination {self.client.peer.ae_title} association lost"
            return False
        self._reopened = True
        try:
            self.open()
            return True
        except UpstreamError as exc:
            self._dead = f"destination unreachable: {exc.reason}"
            return False

    def _release(self, abort: bool = False) -> None:
        if self._stack is not None:
            if abort and self._link is not None:
                self._link.abort()
            self._stack.close()
        self._stack, self._link = None, None

    def close(self) -> None:
        self._release()
        if self.counts["associations"]:
            status = (Status.SUCCESS if not self.counts["failed"] and self._dead is None
                      else Status.WARNING_SUBOPS_FAILED if self.counts["completed"]
                      else Status.REFUSED_OUT_OF_RESOURCES_SUBOPS)
            self._report(status, self._dead, None)

    def _report(self, status: int | None, error: str | None, hint: str | None) -> None:
        self.services.bus.emit(ev.UpstreamCompleted(
            self.name, "C-STORE", status, time.monotonic() - self._started, self.info, error,
            hint,
            {"role": "move destination", "destination": self.client.peer.ae_title,
             **self.counts}))


@dataclass
class Handed:
    """An instance handed to the workstation (Rule 3): its delivery when already known,
    else the answer still to come to the C-STORE with Message ID ``msg_id``."""

    item: Buffered
    delivery: Delivery | None = None
    answer: Future[MessageReceived] | None = None
    msg_id: int = -1
    transcoded: bool = False


@dataclass
class WorkstationSink:
    """C-STORE sub-operations back over the workstation's association (C-GET, Rule 3).
    ``begin`` hands an instance over to follow the one still awaiting its answer, so
    the loop sends it the moment that answer is in (``proxy.dicom.link`` Rule 7) —
    never two on the wire at once — and ``finish`` takes its answer."""

    event: Request
    _ids: Iterator[int] | None = None
    _contexts: dict[tuple[str, str], int] = field(default_factory=dict)

    def accepted(self) -> Accepted:
        return accepted_by((cx.abstract_syntax, cx.transfer_syntax)
                           for cx in self.event.session.contexts.values() if cx.scp)

    def store(self, item: Buffered) -> Delivery:
        delivery = self.finish(self.begin(item, None))
        return delivery if delivery is not None else Delivery(None, "not sent: cancelled")

    def begin(self, item: Buffered, after: Handed | None) -> Handed:
        """Hand ``item`` over, to be sent once ``after`` is answered (at once without
        one); not sent at all if the C-GET is cancelled before its turn."""
        if self._ids is None:
            self._ids = _message_ids(self.event.message_id)
            self._contexts = {(cx.abstract_syntax, cx.transfer_syntax): cx_id
                              for cx_id, cx in sorted(self.event.session.contexts.items(),
                                                      reverse=True) if cx.scp}
        if not self.event.link_up():
            return Handed(item, Delivery(None, "workstation association ended", fatal=True))
        msg_id = next(self._ids)
        data: bytes | None = None
        transcoded = False
        cx = self._contexts.get((item.sop_class_uid, item.transfer_syntax))
        if cx is None:
            taken = [ts for (sop_class, ts) in self._contexts
                     if sop_class == item.sop_class_uid]
            result = transcode.as_accepted(item, taken)
            if result.transfer_syntax is None:
                why = f" ({result.reason})" if taken else ""
                return Handed(item, Delivery(None, f"the workstation accepted no context for "
                                                   f"{_name(item.sop_class_uid)} in "
                                                   f"{_name(item.transfer_syntax)}{why}"))
            cx = self._contexts[(item.sop_class_uid, result.transfer_syntax)]
            data, transcoded = result.data, result.transcoded
        command = commands.store_rq(msg_id, item.sop_class_uid, item.sop_instance_uid)
        request_after = self.event.request_after
        assert request_after is not None     # set by the listener for every request
        try:
            payload = data if data is not None else item.write_data(_read)
        except OSError as exc:               # the buffer file
            return Handed(item, Delivery(None, f"{type(exc).__name__}: {exc}"))
        previous = after.msg_id if after is not None and after.answer is not None else -1
        answer = request_after(previous, SendMessage(cx, command, payload), self._go)
        return Handed(item, None, answer, msg_id, transcoded)

    def _go(self) -> bool:
        return not self.event.is_cancelled

    def finish(self, handed: Handed) -> Delivery | None:
        """``handed``'s delivery, once its answer is in; None when it was not sent (the
        C-GET was cancelled before its turn)."""
        if handed.delivery is not None or handed.answer is None:
            return handed.delivery
        try:
            rsp = handed.answer.result().command
        except NotSent:
            return None
        except WorkstationGone:
            return Delivery(None, "workstation association ended (aborted, closed, or no "
                                  "C-STORE response within dimse_timeout)", fatal=True)
        if rsp.get(commands.COMMAND_FIELD) != commands.C_STORE_RSP \
                or not isinstance(rsp.get(commands.STATUS), int):
            return Delivery(None, "the workstation answered the C-STORE with something else")
        delivery = _answered(int(rsp[commands.STATUS]), "the workstation")
        return Delivery(delivery.status, delivery.reason, delivery.fatal,
                        transcoded=handed.transcoded)

    def close(self) -> None:
        pass


def _read(data: memoryview | None = None, source: BinaryIO | None = None,
          length: int = 0) -> bytes | memoryview:
    """``Buffered.write_data``'s writer that just takes the bytes (one instance at a time)."""
    if data is not None:
        return data
    assert source is not None
    return source.read(length)


def _name(uid: str) -> str:
    name = UID(uid).name
    return name if name and name != uid else uid
