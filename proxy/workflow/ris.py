"""One N-operation to an archive over the proxy's lean link (``proxy.ul``): an MPPS N-CREATE
or N-SET to a RIS, and the pieces Storage Commitment shares (``connect``, ``call``,
``context_for``, ``convert``: ``proxy.workflow.commitment``).

Rule 1: the MPPS SOP class is proposed in two contexts, Explicit and Implicit VR Little
        Endian; a message goes on the context of its own transfer syntax, its data set
        the modality's bytes, when the archive accepted it, and is re-encoded
        (``rawdataset`` → ``fastencode``) otherwise. The answer's data set is returned
        in the message's syntax (the modality's context).
Rule 2: every step is bounded by the archive's ``timeout`` (connect, negotiation, the
        response: ``ArchiveClient.link``).
Rule 3: no answer raises ``Unanswered`` with the reason and hint in words; ``sent`` says
        whether the request may have reached the archive (it was being written, then a
        timeout, abort or close) — a redelivered N-CREATE may then meet its own
        Duplicate SOP Instance (``policy`` Rule 4).
Rule 4: the answer keeps the response elements the archive sent (Affected SOP Instance
        UID, Error Comment, Error ID, Offending Element, Attribute Identifier List), so
        the modality sees them as it would from the archive directly.
Rule 5: DICOM only: no logging, no counting (callers emit the ``upstream`` events).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.presentation import PresentationContext, build_context

from proxy.contexts import MPPS_SOP_CLASS
from proxy.dicom import commands, pdu
from proxy.dicom.commands import Command
from proxy.fastencode import encode
from proxy.rawdataset import decode
from proxy.ul.link import Link, LinkClosed
from proxy.upstream import ArchiveClient, UpstreamError
from proxy.workflow.journal import Message

# The response elements relayed as the archive sent them (Rule 4).
KEPT = (commands.AFFECTED_SOP_INSTANCE, commands.ERROR_COMMENT, commands.ERROR_ID,
        commands.OFFENDING_ELEMENT, commands.ATTRIBUTE_IDENTIFIER_LIST)
_RSP = {"N-CREATE": commands.N_CREATE_RSP, "N-SET": commands.N_SET_RSP}
_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True)
class Answer:
    status: int
    elements: Command = field(default_factory=dict)
    data: bytes | None = None         # in the message's transfer syntax


class Unanswered(Exception):
    """The archive gave no answer (Rule 3)."""

    def __init__(self, reason: str, hint: str | None, kind: str, sent: bool) -> None:
        super().__init__(reason)
        self.reason, self.hint, self.kind, self.sent = reason, hint, kind, sent

    @classmethod
    def of(cls, error: UpstreamError, sent: bool) -> Unanswered:
        return cls(error.reason, error.hint, error.kind, sent)


def contexts() -> list[PresentationContext]:
    return [build_context(MPPS_SOP_CLASS, [syntax]) for syntax in _SYNTAXES]


@contextmanager
def connect(client: ArchiveClient, proposed: list[PresentationContext] | None = None,
            roles: Sequence[Any] = ()) -> Iterator[Link]:
    """An association to the archive (for MPPS messages unless ``proposed`` says what
    for); ``Unanswered`` when none opens."""
    opened = False
    try:
        with client.link(contexts() if proposed is None else proposed, roles) as link:
            opened = True
            yield link
    except UpstreamError as exc:
        if opened:
            raise
        raise Unanswered.of(exc, sent=False) from None


def exchange(client: ArchiveClient, link: Link, message: Message, msg_id: int) -> Answer:
    """Send ``message`` and read its response (Rules 1-4)."""
    cx, syntax = context_for(client, link, MPPS_SOP_CLASS, message.transfer_syntax,
                             "Modality Performed Procedure Step", "enable MPPS (N-CREATE/"
                             "N-SET SCP) on the RIS for the proxy's calling AE title")
    data = convert(message.data, message.transfer_syntax, syntax)
    if message.operation == "N-CREATE":
        command = commands.n_create_rq(msg_id, message.sop_class, message.sop_instance,
                                       data is not None)
    else:
        command = commands.n_set_rq(msg_id, message.sop_class, message.sop_instance,
                                    data is not None)
    answer = call(client, link, cx, message.operation, command, data,
                  _RSP[message.operation], msg_id)
    return replace(answer, data=convert(answer.data, syntax, message.transfer_syntax))


def call(client: ArchiveClient, link: Link, cx: int, operation: str, command: bytes,
         data: bytes | None, rsp_field: int, msg_id: int) -> Answer:
    """Send one N-operation request and read its response (``rsp_field``, answering
    ``msg_id``); the answer's data set in the context's syntax (Rules 2-4)."""
    sent = time.monotonic()
    try:
        link.send_message(cx, command, data)
        rsp = link.read_message()
    except TimeoutError:
        link.abort()
        raise Unanswered.of(client.no_response(operation, time.monotonic() - sent),
                            True) from None
    except (LinkClosed, OSError, pdu.PduError):
        link.abort()
        raise Unanswered.of(client.no_response(operation, 0.0), True) from None
    status = rsp.command.get(commands.STATUS)
    if (rsp.command.get(commands.COMMAND_FIELD) != rsp_field
            or rsp.command.get(commands.RESPONDED_TO) != msg_id or not isinstance(status, int)):
        link.abort()
        raise Unanswered(f"the archive answered the {operation} with something else; "
                         "the proxy aborted the association", "see the archive's log",
                         "aborted", True)
    elements = {k: rsp.command[k] for k in KEPT if k in rsp.command}
    return Answer(status, elements, rsp.data if rsp.data else None)


def context_for(client: ArchiveClient, link: Link, sop_class: str, syntax: str,
                name: str, hint: str) -> tuple[int, str]:
    """The accepted context of ``sop_class`` in ``syntax``, else any accepted one (Rule 1);
    ``Unanswered`` (nothing sent) naming the SOP class and what to enable when none."""
    accepted = sorted((cx, ts) for cx, ts in link.accept.accepted.items()
                      if link.abstract.get(cx) == sop_class)
    for cx, ts in accepted:
        if ts == syntax:
            return cx, ts
    if accepted:
        return accepted[0]
    raise Unanswered.of(UpstreamError(
        client.peer.name, f"archive {client.peer.ae_title} did not accept {name}", hint,
        kind="no_context"), sent=False)


def convert(data: bytes | None, source: str, target: str) -> bytes | None:
    """A little-endian data set in another little-endian syntax (Explicit <-> Implicit)."""
    if data is None or source == target:
        return data
    out = encode(decode(data, source == ImplicitVRLittleEndian),
                 target == ImplicitVRLittleEndian, True)
    if out is None:
        raise ValueError("the data set could not be re-encoded")
    return out
