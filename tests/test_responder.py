"""proxy.responder: what a handler returns or yields becomes exactly these DIMSE responses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import decode
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from proxy.dicom import commands
from proxy.dicom.events import SendMessage
from proxy.dicom.link import LinkClosed
from proxy.dicom.negotiation import Accepted
from proxy.observe.events import AssocInfo
from proxy.responder import C_MOVE_RQ, Reply, respond
from proxy.services import OperationRecord
from proxy.session import Request, Session

FIND, MOVE = StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelMove


def request(field: int, sop_class: str, syntax: str = ExplicitVRLittleEndian,
            fail_after: int | None = None) -> tuple[Request, list[SendMessage]]:
    session = Session(AssocInfo("a1", "WS", "RELAY", "127.0.0.1:1"),
                      contexts={3: Accepted(sop_class, syntax)})
    sent: list[SendMessage] = []

    def send(message: SendMessage) -> None:
        if fail_after is not None and len(sent) >= fail_after:
            raise LinkClosed("gone")
        sent.append(message)

    command: commands.Command = {commands.COMMAND_FIELD: field, commands.MESSAGE_ID: 7,
                                 commands.AFFECTED_SOP_CLASS: sop_class}
    if field == commands.C_STORE_RQ:
        command[commands.AFFECTED_SOP_INSTANCE] = "1.2.3"
    return Request(session, 3, command, send=send), sent


def identifier(message: SendMessage, implicit: bool = False) -> Dataset:
    assert message.data is not None
    ds: Dataset = decode(BytesIO(bytes(message.data)), implicit, True)
    return ds


def match(uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = uid
    return ds


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_c_find_matches_then_success_when_the_handler_just_ends(syntax: str) -> None:
    rq, sent = request(commands.C_FIND_RQ, FIND, syntax)

    def handler(req: Request, services: Any) -> Iterator[tuple[int, Dataset]]:
        yield 0xFF00, match("1.1")
        yield 0xFF00, match("1.2")

    respond(rq, handler, None)
    assert [m.command[commands.STATUS] for m in sent] == [0xFF00, 0xFF00, 0x0000]
    assert all(m.context_id == 3 and m.command[commands.RESPONDED_TO] == 7
               and m.command[commands.COMMAND_FIELD] == 0x8020 for m in sent)
    implicit = syntax == ImplicitVRLittleEndian
    assert [identifier(m, implicit).StudyInstanceUID for m in sent[:2]] == ["1.1", "1.2"]
    assert sent[2].data is None and sent[2].command[commands.DATA_SET_TYPE] == 0x0101


def test_a_status_dataset_carries_its_comment_error_id_and_offending_element() -> None:
    rq, sent = request(commands.C_STORE_RQ, CTImageStorage)
    status = Dataset()
    status.Status = 0xA900
    status.ErrorComment = "x" * 80
    status.ErrorID = 12
    status.OffendingElement = [0x00100010, 0x00100020]
    respond(rq, lambda req, services: status, None)
    [rsp] = sent
    assert rsp.command[commands.STATUS] == 0xA900
    assert rsp.command[commands.ERROR_COMMENT] == "x" * 64
    assert rsp.command[commands.ERROR_ID] == 12
    assert rsp.command[commands.OFFENDING_ELEMENT] == "00100010\\00100020"
    assert rsp.command[commands.AFFECTED_SOP_INSTANCE] == "1.2.3"
    assert rsp.command[commands.COMMAND_FIELD] == 0x8001


def test_c_move_counts_and_the_failed_list_go_where_ps3_7_puts_them() -> None:
    rq, sent = request(C_MOVE_RQ, MOVE)
    pending, final = Dataset(), Dataset()
    pending.Status = 0xFF00
    pending.NumberOfRemainingSuboperations = 2
    pending.NumberOfCompletedSuboperations = 1
    final.Status = 0xB000
    final.NumberOfCompletedSuboperations = 2
    final.NumberOfFailedSuboperations = 1
    final.NumberOfWarningSuboperations = 0
    final.FailedSOPInstanceUIDList = ["1.2.3.4"]
    after = Dataset()
    after.Status = 0x0000

    def handler(req: Request, services: Any) -> Iterator[Dataset]:
        yield pending
        yield final
        yield after            # never sent: the final status ends the stream

    respond(rq, handler, None)
    assert [m.command[commands.STATUS] for m in sent] == [0xFF00, 0xB000]
    assert sent[0].command[commands.REMAINING] == 2 and sent[0].data is None
    assert (sent[1].command[commands.COMPLETED], sent[1].command[commands.FAILED],
            sent[1].command[commands.WARNING]) == (2, 1, 0)
    assert identifier(sent[1]).FailedSOPInstanceUIDList == "1.2.3.4"


def test_a_retrieve_without_a_final_status_gets_unable_to_process() -> None:
    rq, sent = request(C_MOVE_RQ, MOVE)

    def handler(req: Request, services: Any) -> Iterator[Dataset]:
        yield from ()

    respond(rq, handler, None)
    [rsp] = sent
    assert rsp.command[commands.STATUS] == 0xC000 and rsp.command[commands.ERROR_COMMENT]


@pytest.mark.parametrize(("field", "sop_class", "expected"), [
    (commands.C_FIND_RQ, FIND, 0xC000), (C_MOVE_RQ, MOVE, 0xC000),
    (commands.C_STORE_RQ, CTImageStorage, 0x0110)])
def test_a_handler_that_raises_still_gets_an_answer(field: int, sop_class: str,
                                                    expected: int) -> None:
    rq, sent = request(field, sop_class)

    def handler(req: Request, services: Any) -> Any:
        raise RuntimeError("boom")

    respond(rq, handler, None)
    assert [m.command[commands.STATUS] for m in sent] == [expected]


def test_a_gone_workstation_closes_the_handler_and_nothing_more_is_sent() -> None:
    rq, sent = request(commands.C_FIND_RQ, FIND, fail_after=1)
    seen: list[str] = []

    def handler(req: Request, services: Any) -> Iterator[tuple[int, Dataset]]:
        try:
            for i in range(10):
                yield 0xFF00, match(f"1.{i}")
        except GeneratorExit:
            seen.append("closed")
            raise

    respond(rq, handler, None)
    assert len(sent) == 1 and seen == ["closed"]


def test_an_operation_the_proxy_does_not_serve_is_unrecognized() -> None:
    rq, sent = request(0x0140, CTImageStorage)           # N-CREATE-RQ
    respond(rq, None, None)
    [rsp] = sent
    assert rsp.command[commands.STATUS] == 0x0211 and rsp.command[commands.COMMAND_FIELD] == 0x8140


def test_an_n_set_reply_names_the_requested_instance_and_carries_its_elements() -> None:
    mpps, instance = "1.2.840.10008.3.1.2.3.3", "1.2.826.0.1.3680043.10.543.1"
    rq, sent = request(0x0120, mpps)                      # N-SET-RQ: Requested SOP ...
    del rq.command[commands.AFFECTED_SOP_CLASS]
    rq.command[commands.REQUESTED_SOP_CLASS] = mpps
    rq.command[commands.REQUESTED_SOP_INSTANCE] = instance
    reply = Reply(0x0112, {commands.ERROR_COMMENT: "no such instance"}, b"\x08\x00")
    respond(rq, lambda req, services: reply, None)
    [rsp] = sent
    assert rsp.command[commands.COMMAND_FIELD] == 0x8120 and rsp.command[commands.STATUS] == 0x0112
    assert rsp.command[commands.AFFECTED_SOP_CLASS] == mpps
    assert rsp.command[commands.AFFECTED_SOP_INSTANCE] == instance
    assert rsp.command[commands.ERROR_COMMENT] == "no such instance"
    assert rsp.command[commands.DATA_SET_TYPE] == 0x0000 and rsp.data == b"\x08\x00"


def test_an_n_create_reply_may_name_the_instance_the_proxy_chose() -> None:
    rq, sent = request(0x0140, "1.2.840.10008.3.1.2.3.3")   # no Affected SOP Instance UID
    respond(rq, lambda req, services: Reply(0x0000, {commands.AFFECTED_SOP_INSTANCE: "2.25.7"}),
            None)
    [rsp] = sent
    assert rsp.command[commands.AFFECTED_SOP_INSTANCE] == "2.25.7"
    assert rsp.command[commands.DATA_SET_TYPE] == 0x0101 and rsp.data is None


class Recorded:
    """Services' ``operation`` alone: what an unserved command reports."""

    def __init__(self) -> None:
        self.records: list[tuple[str, int | None, str | None]] = []

    @contextmanager
    def operation(self, event: Request, name: str) -> Iterator[Any]:
        record = OperationRecord(name)
        try:
            yield record
        finally:
            self.records.append((name, record.status, record.hint))


def test_an_unserved_command_is_reported_as_one_operation_named_by_its_field() -> None:
    rq, sent = request(0x0130, CTImageStorage)            # N-ACTION-RQ
    services = Recorded()
    respond(rq, None, services)
    [rsp] = sent
    assert rsp.command[commands.STATUS] == 0x0211 and rsp.command[commands.COMMAND_FIELD] == 0x8130
    [(name, status, hint)] = services.records
    assert (name, status) == ("N-ACTION", 0x0211) and hint
