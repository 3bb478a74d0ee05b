"""C-STORE on a ``store = "relay"`` route: forwarded while the workstation waits.

Rule 1: the data set goes to the archive exactly as received (as it arrives, or the
        bytes after the file meta the listener put in front of them), over the archive
        context with the same SOP class and transfer syntax (``proxy.store.relay``: the
        workstation was only offered those). Message ID, priority and Move Originator are the
        workstation's own; Affected SOP Class/Instance UID are the request's.
Rule 2: the workstation gets the archive's Status, Error Comment, Error ID and Offending
        Element unchanged, so a refusal reads as it would without the proxy. Nothing is
        written to the spool.
Rule 3: when no answer can come from the archive (its association is gone, lost or
        timed out), the answer is 0xA700 (Refused: Out of Resources, PS3.4 B.2.3): the
        instance is not held anywhere, the sender may retry. A C-STORE on a context the
        archive has no counterpart for (it was not mirrored) is 0x0122 (Refused: SOP
        Class Not Supported, PS3.7 C.5.12). Never Success without the archive's.
Rule 4: one ``upstream`` event per forwarded C-STORE (``Services.upstream_call``); the
        ``operation`` event is the caller's (``proxy.operations.store``).
Rule 5: an instance with no workstation association behind it (STOW-RS, ``forward_file``)
        goes over an association of its own, proposing exactly its SOP class and transfer
        syntax, calling as the archive's ``calling_ae``; its answer is the archive's, and
        an archive that cannot be reached or accepts no such context is 0xA700 / 0x0122.
"""

from __future__ import annotations

from io import BufferedIOBase
from pathlib import Path

from pynetdicom.presentation import build_context

from proxy.dicom import commands
from proxy.inflow import Inflow
from proxy.services import OperationRecord, Services
from proxy.session import Request
from proxy.status import Status, hex_status
from proxy.store.relay import SESSION_KEY, Upstream
from proxy.store.spool import data_offset
from proxy.ul.link import LinkClosed
from proxy.upstream import UpstreamError

Reply = tuple[int, str | None]


def forward(event: Request, services: Services, record: OperationRecord,
            received: Path | None, encoded: bytes | None, inflow: Inflow | None = None
            ) -> Reply:
    """Send the instance to the route's archive (from the file ``received``, the bytes
    ``encoded``, or as it arrives: ``inflow``); its answer is the workstation's."""
    session = services.session(event)
    upstream: Upstream | None = session.data.get(SESSION_KEY)
    sop_class = event.sop_class
    syntax = str(event.transfer_syntax)
    if upstream is None:      # cannot happen: a storage context is only accepted mirrored
        return Status.SOP_CLASS_NOT_SUPPORTED, "no archive association for this context"
    record.archives = [upstream.archive]
    cx = upstream.context_for(sop_class, syntax)
    if cx is None:
        record.hint = f"archive {upstream.archive} accepted no context for this SOP class " \
                      f"in {syntax}"
        return Status.SOP_CLASS_NOT_SUPPORTED, "the archive does not accept this context"
    command = commands.c_store_rq(
        event.message_id, sop_class, event.sop_instance, event.move_originator_ae,
        event.move_originator_id, event.priority)
    with services.upstream_call(upstream.archive, "C-STORE", event) as result:
        try:
            rsp = _send(upstream, cx, command, event.message_id, received, encoded, inflow)
        except UpstreamError as exc:
            result["error"], result["hint"] = exc.reason, exc.hint
            record.hint = exc.hint
            record.details["error"] = exc.reason
            return Status.REFUSED_OUT_OF_RESOURCES, "archive unreachable, not stored"
        status = int(rsp[commands.STATUS])
        result["status"] = status
        comment = rsp.get(commands.ERROR_COMMENT)
        if comment:
            record.details["archive_comment"] = str(comment)
        if isinstance(rsp.get(commands.ERROR_ID), int):
            record.response["ErrorID"] = rsp[commands.ERROR_ID]
        if rsp.get(commands.OFFENDING_ELEMENT):
            record.response["OffendingElement"] = [
                int(tag, 16) for tag in str(rsp[commands.OFFENDING_ELEMENT]).split("\\")]
        record.details["archive_status"] = hex_status(status)
        return status, str(comment) if comment else None


def forward_file(services: Services, archive: str, record: OperationRecord,
                 path: Path, sop_class: str, sop_instance: str, syntax: str,
                 msg_id: int = 1) -> Reply:
    """Rule 5: one C-STORE of the Part-10 file ``path`` over its own association."""
    client = services.archive(archive, None)
    record.archives = [archive]
    with services.upstream_call(archive, "C-STORE") as result:
        try:
            with client.link([build_context(sop_class, [syntax])]) as link:
                cx = next((c for c, ts in link.accept.accepted.items()
                           if ts == syntax and link.abstract.get(c) == sop_class), None)
                if cx is None:
                    result["error"] = f"no context for {sop_class} in {syntax}"
                    return Status.SOP_CLASS_NOT_SUPPORTED, "the archive does not accept it"
                with path.open("rb") as source:
                    offset = data_offset(source.read(1024))
                    source.seek(offset)
                    link.send_message(cx, commands.c_store_rq(msg_id, sop_class, sop_instance),
                                      source=_buffered(source),
                                      length=path.stat().st_size - offset)
                rsp = link.read_message().command
        except (UpstreamError, LinkClosed, OSError) as exc:
            reason = exc.reason if isinstance(exc, UpstreamError) else str(exc)
            result["error"] = reason
            record.details["error"] = reason
            return Status.REFUSED_OUT_OF_RESOURCES, "archive unreachable, not stored"
        status = int(rsp.get(commands.STATUS, Status.PROCESSING_FAILURE))
        result["status"] = status
        comment = rsp.get(commands.ERROR_COMMENT)
        record.details["archive_status"] = hex_status(status)
        return status, str(comment) if comment else None


def _send(upstream: Upstream, cx: int, command: bytes, msg_id: int,
          received: Path | None, encoded: bytes | None, inflow: Inflow | None
          ) -> commands.Command:
    if inflow is not None:
        return upstream.store(cx, command, msg_id, None, None, 0, inflow)
    if received is not None:
        with received.open("rb") as source:
            offset = data_offset(source.read(1024))
            size = received.stat().st_size
            source.seek(offset)
            return upstream.store(cx, command, msg_id, _buffered(source), None, size - offset)
    data = encoded or b""
    return upstream.store(cx, command, msg_id, None, data[data_offset(data[:1024]):], 0)


def _buffered(source: object) -> BufferedIOBase:
    assert isinstance(source, BufferedIOBase)
    return source
