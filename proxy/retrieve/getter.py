"""C-GET from an archive over a lean association, instances straight into the buffer.

The bulk half of ``retrieve = "get"``: the proxy's association to the archive runs on
``proxy.ul.link`` rather than pynetdicom, so each 16 KB data fragment the archive
sends is copied from the read buffer into its place in the retrieve buffer (memory
or file), with no per-PDU thread hand-off or re-assembly (measured: with pynetdicom
the retrieve was CPU-bound there, at 0.13-0.25 of direct).

Rule 1 (negotiation): the query/retrieve model with both Little Endian syntaxes, then
        the storage contexts and SCP role selections ``puller`` chose; an archive that
        accepts no context for the model is an ``UpstreamError`` (kind no_context).
Rule 2 (sub-operations): each C-STORE the archive sends goes to
        ``InstanceBuffer.receive`` fragment by fragment and is answered with the
        status the buffer gives (Success, duplicate Success, 0xA700 when the retrieve
        is over); a C-STORE on a context the proxy did not accept for storage is
        answered 0x0122 (SOP class not supported, PS3.7 C.5.12) and dropped.
Rule 3 (responses): every C-GET response is yielded as (Status, its sub-operation counts
        by keyword), final included; an archive sends one after every sub-operation,
        so nothing is decoded beyond the command set (the proxy keeps its own count
        of what arrived, ``tally``).
Rule 4 (ending): C-CANCEL goes upstream once the token fires; a timeout (no PDU for
        the archive's ``timeout``) or the archive closing/aborting raises the
        ``UpstreamError`` every archive request raises (``ArchiveClient.no_response``);
        a half-received instance is deleted and forgotten so another archive may
        still deliver it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.presentation import PresentationContext, build_context

from proxy.cancel import CancelToken
from proxy.dicom import commands as cmd
from proxy.dicom import pdu
from proxy.fastencode import encode
from proxy.retrieve.buffer import InstanceBuffer
from proxy.retrieve.reception import Reception
from proxy.status import PENDING, Status
from proxy.ul.link import Link, LinkClosed
from proxy.upstream import ArchiveClient, UpstreamError, cancel_on

_COUNTS = {cmd.REMAINING: "NumberOfRemainingSuboperations",
           cmd.COMPLETED: "NumberOfCompletedSuboperations",
           cmd.FAILED: "NumberOfFailedSuboperations",
           cmd.WARNING: "NumberOfWarningSuboperations"}


def get(client: ArchiveClient, identifier: Dataset, model: str,
        storage: Sequence[PresentationContext], roles: Sequence[Any],
        buffer: InstanceBuffer, archive: str,
        cancelled: CancelToken | None = None) -> Iterator[tuple[int, dict[str, int]]]:
    """C-GET ``identifier``; yields (status, sub-operation counts) for every response."""
    contexts = [build_context(model, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
                *storage]
    with client.link(contexts, roles) as link:
        cx = client.link_context(link, model)
        implicit = link.accept.accepted[cx] == ImplicitVRLittleEndian
        query = encode(identifier, implicit, True)
        if query is None:
            raise UpstreamError(client.peer.name, "the C-GET identifier could not be encoded")
        try:
            link.send_message(cx, cmd.c_get_rq(1, model), query)
            with (cancelled or CancelToken()).on_cancel(lambda: cancel_on(link, cx)):
                yield from _responses(link, buffer, archive)
        except TimeoutError:
            raise client.no_response("C-GET", client.peer.timeout) from None
        except (LinkClosed, OSError, pdu.PduError):
            raise client.no_response("C-GET", 0.0) from None


def _responses(link: Link, buffer: InstanceBuffer, archive: str
               ) -> Iterator[tuple[int, dict[str, int]]]:
    incoming: list[Reception] = []

    def target(cx: int, command: cmd.Command) -> Reception | None:
        if command.get(cmd.COMMAND_FIELD) != cmd.C_STORE_RQ:
            return None
        syntax = link.accept.accepted.get(cx)
        sop_class = str(command.get(cmd.AFFECTED_SOP_CLASS, ""))
        if syntax is None or link.abstract.get(cx) != sop_class:
            reception = buffer.refuse(str(command.get(cmd.AFFECTED_SOP_INSTANCE, "")),
                                      sop_class, Status.SOP_CLASS_NOT_SUPPORTED)
        else:
            reception = buffer.receive(str(command.get(cmd.AFFECTED_SOP_INSTANCE, "")),
                                       sop_class, syntax, archive)
        incoming.append(reception)
        return reception

    try:
        while True:
            message = link.read_message(target)
            command = message.command
            kind = command.get(cmd.COMMAND_FIELD)
            if kind == cmd.C_STORE_RQ:
                reception = incoming.pop()
                status = reception.finish()
                link.send_message(message.context_id, cmd.c_store_rsp(
                    int(command.get(cmd.MESSAGE_ID, 0)), reception.sop_class, reception.uid,
                    status))
            elif kind == cmd.C_GET_RSP:
                code = int(command.get(cmd.STATUS, Status.PROCESSING_FAILURE))
                yield code, _counts(command)
                if code not in PENDING:
                    return
            else:
                raise pdu.PduError(f"unexpected DIMSE command 0x{kind or 0:04X} during C-GET")
    finally:
        for reception in incoming:           # the link ended inside an instance
            reception.abandon()


def _counts(command: cmd.Command) -> dict[str, int]:
    return {keyword: int(command[elem]) for elem, keyword in _COUNTS.items()
            if isinstance(command.get(elem), int)}


def counts_of(response: Dataset) -> dict[str, int]:
    """The sub-operation counts a pynetdicom C-GET/C-MOVE response carries."""
    return {keyword: int(response.get(keyword)) for keyword in _COUNTS.values()
            if response.get(keyword) is not None}
