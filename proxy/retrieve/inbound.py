"""Instances an archive C-MOVEs to the proxy (``retrieve = "move"``), matched to their retrieve.

In move mode the proxy asks the archive to C-MOVE to the proxy's own AE title; the
archive then opens an association to the proxy's listener and C-STOREs each
instance. Several workstation retrieves may be in flight at once — possibly of the
same study — and each instance must reach exactly the retrieve it belongs to.

Rule 1 (matching, ``match``, pure): by the Move Originator Message ID (and AE title)
        the archive copies from the proxy's C-MOVE into each C-STORE (PS3.7 9.1.1.1);
        every in-flight move-mode retrieve uses a Message ID unique in the proxy, so
        this is unambiguous; an originator AE title that is not the proxy's means
        somebody else's C-MOVE. When the archive leaves them out: by SOP Instance UID,
        to the oldest retrieve from that archive that expects the instance and has
        not received it yet. A retrieve that could not survey (expects nothing in
        particular) takes instances only when it is the one retrieve in flight
        from that archive. Nothing else is accepted.
Rule 2: an instance that matches nothing is refused with 0x0124 (Refused: Not
        Authorized, PS3.7 Annex C) — never delivered to a workstation that did not
        ask for it.
Rule 3: each inbound C-STORE is one ``operation`` event (C-STORE, ``inbound``).
Rule 4: a retrieve stays open after the archive's final C-MOVE response until the
        instances it reported Completed or Warning have arrived (``wait_for``): an
        archive that runs its C-MOVEs as jobs (Orthanc with ``SynchronousCMove`` off)
        answers before its C-STOREs reach the proxy, and they must still be matched.
Rule 5 (the receiver decides, as for C-GET): the archive's association to the proxy is
        accepted, per SOP class, in the syntaxes the receivers of that archive's
        retrieves in flight accepted (``syntaxes_for``), so the archive converts for the
        receiver as it would directly (``proxy.contexts.contexts_for_inbound``).

``services.plugins`` fields (set by ``proxy.retrieve.install``):
  inbound_store       → ``InboundRegistry.deliver`` (called by ``operations.store``);
  retrieve_inbound    → the ``InboundRegistry``.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pydicom import Dataset

from proxy.retrieve.sopclasses import Accepted, accepted_by
from proxy.services import Services
from proxy.session import Request
from proxy.status import Status, category

Deliver = Callable[[Request], int]
_STOP_POLL = 0.2             # seconds between looks at the retrieve's cancel token


@dataclass(eq=False)
class Expectation:
    """One in-flight C-MOVE from an archive to the proxy."""

    message_id: int
    archive: str
    archive_ae: str              # who will call us with the instances
    calling_ae: str              # the AE title we used in the C-MOVE (the Move Originator)
    expected: set[str]
    deliver: Deliver
    received: set[str] = field(default_factory=set)
    seq: int = 0
    delivered: int = 0           # C-STOREs taken into the retrieve (Rule 4)
    accepted: Accepted = field(default_factory=dict)   # what its receiver took (Rule 5)


def match(expectations: Sequence[Expectation], sender_ae: str, originator_ae: str | None,
          originator_id: int | None, sop_uid: str) -> Expectation | None:
    """The retrieve an inbound instance belongs to, or None (Rule 1)."""
    if originator_id is not None:
        for exp in expectations:
            if exp.message_id == originator_id and (
                    not originator_ae or originator_ae.strip() == exp.calling_ae):
                return exp
    if originator_ae and originator_ae.strip() not in {e.calling_ae for e in expectations}:
        return None                  # a C-MOVE someone else asked for, not the proxy
    waiting = sorted((e for e in expectations
                      if sop_uid in e.expected and sop_uid not in e.received),
                     key=lambda e: (e.archive_ae != sender_ae, e.seq))
    if waiting:
        return waiting[0]
    blind = [e for e in expectations if not e.expected and e.archive_ae == sender_ae]
    return blind[0] if len(blind) == 1 else None


class InboundRegistry:
    """The move-mode retrieves in flight; answers the C-STOREs archives send for them."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._open: list[Expectation] = []
        self._ids = itertools.cycle(range(1, 65536))
        self._seq = itertools.count()

    def expecting(self) -> bool:
        with self._lock:
            return bool(self._open)

    def syntaxes_for(self, archive: str | None) -> Accepted | None:
        """What the receivers of ``archive``'s retrieves in flight accepted, per SOP class
        (Rule 5): the union over them; None when one of them is not known (accept all)."""
        with self._lock:
            mine = [e for e in self._open if archive is not None and e.archive == archive]
            if not mine or any(not e.accepted for e in mine):
                return None
            return accepted_by((sop_class, ts) for exp in mine
                               for sop_class, syntaxes in exp.accepted.items() for ts in syntaxes)

    def open(self, archive: str, archive_ae: str, calling_ae: str, expected: set[str],
             deliver: Deliver, accepted: Accepted | None = None) -> Expectation:
        with self._lock:
            used = {e.message_id for e in self._open}
            message_id = next(i for i in self._ids if i not in used)
            exp = Expectation(message_id, archive, archive_ae, calling_ae, set(expected),
                              deliver, seq=next(self._seq), accepted=dict(accepted or {}))
            self._open.append(exp)
            return exp

    def wait_for(self, exp: Expectation, count: int, timeout: float,
                 stop: Callable[[], bool]) -> bool:
        """Wait until ``exp`` has taken ``count`` instances (Rule 4); False on timeout/stop."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while exp.delivered < count and not stop():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._arrived.wait(min(left, _STOP_POLL))
            return exp.delivered >= count

    def close(self, exp: Expectation) -> None:
        with self._lock:
            if exp in self._open:
                self._open.remove(exp)

    def deliver(self, event: Request) -> int | Dataset:
        """The C-STORE handler for inbound sessions (``operations.store`` calls it)."""
        session = self.services.session(event)
        uid = event.sop_instance
        originator_ae = event.move_originator_ae
        originator_id = event.move_originator_id
        with self.services.operation(event, "C-STORE") as record:
            record.details.update(inbound=True, sop_instance_uid=uid)
            with self._lock:
                exp = match(self._open, session.info.calling_ae,
                            str(originator_ae) if originator_ae else None,
                            int(originator_id) if originator_id is not None else None, uid)
                if exp is not None:
                    exp.received.add(uid)
            if exp is None:
                record.status = Status.NOT_AUTHORIZED
                record.hint = ("no retrieve in flight expects this instance (Move Originator "
                               f"{originator_ae or '-'}/{originator_id or '-'})")
                ds = Dataset()
                ds.Status = int(record.status)
                ds.ErrorComment = "no retrieve in flight expects this instance"
                return ds
            record.archives = [exp.archive]
            record.details["move_message_id"] = exp.message_id
            record.status = exp.deliver(event)
            with self._arrived:
                if category(record.status) == "failure":
                    exp.received.discard(uid)
                else:
                    exp.delivered += 1
                    self._arrived.notify_all()
            return int(record.status)
