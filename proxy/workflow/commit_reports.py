"""Taking an archive's Storage Commitment report (N-EVENT-REPORT), wherever it arrives.

Rule 1: one decision for both ways a report comes (``take``): on a new association to the
        proxy's listener (``proxy.operations.commitment.report``) or on the association
        the proxy forwarded the N-ACTION on (``take_on_link``, ``commitment`` Rule 1). The
        Transaction UID is read from the Event Information; ``commit_policy.check_report``
        decides; a report taken is journaled (fsync) before it is answered Success.
Rule 2: on the forwarding association the proxy answers the N-EVENT-REPORT-RSP itself
        (Affected SOP Class/Instance and Event Type ID of the request, PS3.7 10.3.1.2) and
        reports it as one ``operation`` event, as on its listener.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydicom.uid import ImplicitVRLittleEndian

from proxy.dicom import commands
from proxy.observe import events as ev
from proxy.rawdataset import decode
from proxy.services import Services
from proxy.status import Status
from proxy.ul.link import Link, LinkClosed, Message
from proxy.upstream import ArchiveClient
from proxy.workflow import commit_policy
from proxy.workflow.commitments import Commitment

if TYPE_CHECKING:
    from proxy.workflow.commitment import Commitments

_UNKNOWN_HINT = ("no pending Storage Commitment has this Transaction UID: the proxy did not "
                 "ask for it, or already delivered its report")


@dataclass(frozen=True)
class Taken:
    """What became of one report."""

    status: int
    transaction_uid: str
    event_type: object
    item: Commitment | None = None           # the commitment it answers (taken: reported)
    comment: str | None = None               # the Error Comment of a refusal
    hint: str | None = None


def take(engine: Commitments, event_type: object, syntax: str, data: bytes | None) -> Taken:
    """Rule 1."""
    try:
        info = decode(data or b"", syntax == ImplicitVRLittleEndian)
        uid = str(info.get("TransactionUID", "") or "").strip()
    except Exception:  # an unreadable Event Information names no transaction
        uid = ""
    known = engine.journal.by_transaction(uid) if uid else None
    refusal = commit_policy.check_report(event_type, uid, known is not None)
    if refusal is not None:
        hint = _UNKNOWN_HINT if refusal.status == Status.INVALID_ARGUMENT_VALUE else None
        return Taken(refusal.status, uid, event_type, known, refusal.comment,
                     hint or refusal.comment)
    assert isinstance(event_type, int) and known is not None
    item = engine.report(uid, event_type, syntax, data)
    return Taken(Status.SUCCESS, uid, event_type, item or known)


def take_on_link(services: Services, engine: Commitments, link: Link, message: Message,
                 client: ArchiveClient) -> Taken:
    """Rule 2: a report on the association the proxy forwarded the N-ACTION on."""
    started = time.monotonic()
    command = message.command
    event_type = command.get(commands.EVENT_TYPE_ID)
    syntax = link.accept.accepted.get(message.context_id, "")
    taken = take(engine, event_type, syntax, message.data)
    rsp: commands.Command = {
        commands.COMMAND_FIELD: commands.N_EVENT_REPORT_RSP,
        commands.RESPONDED_TO: int(command.get(commands.MESSAGE_ID, 0) or 0),
        commands.DATA_SET_TYPE: commands.NO_DATA_SET, commands.STATUS: taken.status}
    for element in (commands.AFFECTED_SOP_CLASS, commands.AFFECTED_SOP_INSTANCE,
                    commands.EVENT_TYPE_ID):
        if element in command:
            rsp[element] = command[element]
    if taken.comment:
        rsp[commands.ERROR_COMMENT] = taken.comment
    peer = client.peer
    info = ev.AssocInfo("upstream", peer.ae_title, peer.calling_ae, f"{peer.host}:{peer.port}")
    details: dict[str, object] = {"transaction_uid": taken.transaction_uid,
                                  "event_type": event_type, "association": "forwarding"}
    if taken.item is not None:
        details["modality"] = taken.item.modality
    if taken.status == Status.SUCCESS:
        details["commitment"] = "journaled"
    try:
        link.send_message(message.context_id, commands.encode(rsp))
    except (LinkClosed, OSError) as exc:
        # The archive went away before our answer: the report is journaled all the same
        # (it reaches the modality); the line says the archive did not get the answer.
        details["error"] = f"the archive closed the association before the answer ({exc})"
    finally:    # one operation line per report answered, whatever became of the answer
        services.bus.emit(ev.OperationCompleted(info, "N-EVENT-REPORT", taken.status,
                                                time.monotonic() - started, [peer.name],
                                                details, taken.hint))
    return taken
