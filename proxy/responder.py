"""Run one DIMSE request's handler and send what it answers, as PS3.7 shapes responses.

Job: between the listener (which received the request and runs this in a worker) and
the operation handlers (``proxy.app.HANDLERS``, ``handle(request, services)``): turn
what a handler returns or yields into response messages on the request's context.

Rule 1: the handler shapes are the DIMSE services': C-ECHO and C-STORE return one status
        (an int, or a status ``Dataset``); C-FIND yields ``(status, identifier)`` per
        match and may end without a final one (then Success is sent); C-MOVE and
        C-GET yield status ``Dataset``s (Status, the four sub-operation counts, Error
        Comment, and a Failed SOP Instance UID List that goes in the identifier) until
        the first that is not Pending.
Rule 2: a handler that raises, or a C-MOVE/C-GET that ends without a final status, gets
        a failure sent for it — 0xC000 (Unable to process, PS3.4 C.4.2.1.5) for Q/R,
        0x0110 (Processing failure, PS3.7 C.4.2) otherwise — never silence. A command
        this proxy does not serve gets 0x0211 (Unrecognized operation, PS3.7 C.5.3),
        reported as one ``operation`` named by its command field (``N-ACTION``; a field
        that names no DIMSE operation: ``unknown``, the field in ``command_field``).
Rule 3: identifiers are written with ``proxy.fastencode`` in the context's transfer
        syntax: a match's raw elements go out as the archive's bytes.
Rule 4: once the workstation's association is gone (``LinkClosed``) the handler's
        generator is closed — it stops relaying and reports what happened — and
        nothing more is sent.
Rule 5: N-CREATE and N-SET handlers return a ``Reply`` (PS3.7 10.3.3.2, 10.3.5.2): the
        status, the response's own elements (Affected SOP Instance UID, Error Comment,
        Error ID, Offending Element, Attribute Identifier List, as the archive sent them)
        and its data set, already in the context's transfer syntax. Every response to an
        N-operation names the Affected SOP Class and Instance UID — for N-SET the
        Requested ones of the request (PS3.7 10.1.1.1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from proxy.dicom import commands
from proxy.dicom.commands import Command
from proxy.dicom.events import SendMessage
from proxy.dicom.link import LinkClosed
from proxy.fastencode import encode
from proxy.session import Request
from proxy.status import PENDING, Status

C_ECHO_RQ, C_MOVE_RQ = 0x0030, 0x0021
UNRECOGNIZED_OPERATION = Status.UNRECOGNIZED_OPERATION
_COUNTS = {"NumberOfRemainingSuboperations": commands.REMAINING,
           "NumberOfCompletedSuboperations": commands.COMPLETED,
           "NumberOfFailedSuboperations": commands.FAILED,
           "NumberOfWarningSuboperations": commands.WARNING}
Handler = Callable[[Request, Any], Any]


@dataclass(frozen=True)
class Reply:
    """A response an N-operation handler composed (Rule 5)."""

    status: int
    elements: Command = field(default_factory=dict)   # beyond field, IDs, status, type
    data: bytes | None = None                         # in the request's transfer syntax


def respond(request: Request, handler: Handler | None, services: Any) -> None:
    """Run ``handler`` for ``request`` and send its responses (Rules 1-4)."""
    field = request.command_field
    try:
        if handler is None:
            _unrecognized(request, services)
        elif field == commands.C_FIND_RQ:
            _stream(request, handler(request, services), final_default=Status.SUCCESS)
        elif field in (C_MOVE_RQ, commands.C_GET_RQ):
            _stream(request, handler(request, services), final_default=None)
        else:
            _send(request, handler(request, services), None)
    except LinkClosed:
        pass                                    # the association is gone (Rule 4)
    except Exception:
        _fail(request, "the proxy could not process the request")


def _unrecognized(request: Request, services: Any) -> None:
    """0x0211 for a command the proxy does not serve, reported as its operation (Rule 2)."""
    if services is None:
        _send(request, UNRECOGNIZED_OPERATION, None)
        return
    field = request.command_field
    # A name a peer cannot choose freely (a metric label): a DIMSE operation, or unknown.
    name = commands.OPERATIONS.get(field, "unknown")
    with services.operation(request, name) as record:
        record.status = UNRECOGNIZED_OPERATION
        record.details["command_field"] = f"0x{field:04X}"
        record.hint = f"the proxy does not serve {commands.operation_name(field)} on this route"
        _send(request, UNRECOGNIZED_OPERATION, None)


def _fail(request: Request, comment: str) -> None:
    qr = request.command_field in (commands.C_FIND_RQ, C_MOVE_RQ, commands.C_GET_RQ)
    failure = Dataset()
    failure.Status = int(Status.UNABLE_TO_PROCESS if qr else Status.PROCESSING_FAILURE)
    failure.ErrorComment = comment
    try:
        _send(request, failure, None)
    except Exception:
        pass                                    # gone, or not even a response fits


def _stream(request: Request, responses: Iterator[Any], final_default: int | None) -> None:
    try:
        for item in responses:
            status, identifier = item if isinstance(item, tuple) else (item, None)
            code = _send(request, status, identifier)
            if code not in PENDING:
                return
    except LinkClosed:
        raise
    except Exception:
        _fail(request, "the proxy could not complete the request")
        return
    finally:
        close = getattr(responses, "close", None)
        if close is not None:
            close()                             # Rule 4: the handler reports and stops
    if final_default is not None:
        _send(request, int(final_default), None)
    else:
        _fail(request, "the proxy could not complete the retrieve")


def _send(request: Request, status: int | Dataset | Reply,
          identifier: Dataset | None) -> int:
    """One response to ``request``; its status code."""
    command: Command = {
        commands.COMMAND_FIELD: request.command_field | 0x8000,
        commands.RESPONDED_TO: request.message_id,
        commands.DATA_SET_TYPE: commands.NO_DATA_SET,
    }
    sop_class, sop_instance = _affected(request)
    if sop_class:
        command[commands.AFFECTED_SOP_CLASS] = sop_class
    if sop_instance:
        command[commands.AFFECTED_SOP_INSTANCE] = sop_instance
    if isinstance(status, Reply):
        command.update(status.elements)
        command[commands.STATUS] = status.status
        if status.data is not None:
            command[commands.DATA_SET_TYPE] = 0x0000
        request.send(SendMessage(request.context_id, command, status.data))
        return status.status
    if isinstance(status, Dataset):
        code = int(status.Status)
        identifier = _status_elements(status, command) or identifier
    else:
        code = int(status)
    command[commands.STATUS] = code
    data = _encoded(request, identifier) if identifier is not None else None
    if data is not None:
        command[commands.DATA_SET_TYPE] = 0x0000
    request.send(SendMessage(request.context_id, command, data))
    return code


def _affected(request: Request) -> tuple[str, str]:
    """The Affected SOP Class and Instance UID a response names (Rule 5)."""
    field = request.command_field
    if field in (commands.N_SET_RQ, commands.N_GET_RQ, commands.N_ACTION_RQ,
                 commands.N_DELETE_RQ):
        return (str(request.command.get(commands.REQUESTED_SOP_CLASS, "")),
                str(request.command.get(commands.REQUESTED_SOP_INSTANCE, "")))
    if field in (commands.C_STORE_RQ, commands.N_CREATE_RQ, commands.N_EVENT_REPORT_RQ):
        return request.sop_class, request.sop_instance
    return request.sop_class, ""


def _status_elements(status: Dataset, command: Command) -> Dataset | None:
    """Status Dataset elements into ``command``; the identifier they call for, if any."""
    if "ErrorComment" in status and status.ErrorComment:
        command[commands.ERROR_COMMENT] = str(status.ErrorComment)[:64]
    if "ErrorID" in status and status.ErrorID is not None:
        command[commands.ERROR_ID] = int(status.ErrorID)
    if "OffendingElement" in status and status.OffendingElement is not None:
        value = status.OffendingElement
        tags = list(value) if isinstance(value, list | tuple | MultiValue) else [value]
        command[commands.OFFENDING_ELEMENT] = "\\".join(f"{int(t):08X}" for t in tags)
    for keyword, element in _COUNTS.items():
        if keyword in status and status[keyword].value is not None:
            command[element] = int(status[keyword].value)
    if "FailedSOPInstanceUIDList" in status:
        identifier = Dataset()
        identifier.FailedSOPInstanceUIDList = status.FailedSOPInstanceUIDList
        return identifier
    return None


def _encoded(request: Request, identifier: Dataset) -> bytes:
    syntax = request.transfer_syntax
    data = encode(identifier, syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian)
    if data is None:
        raise ValueError("the response identifier could not be encoded")
    return data
