"""The C-MOVE/C-GET response pump (proxy.retrieve.scp), in process with pynetdicom peers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

from proxy.retrieve import scp
from proxy.retrieve.tally import Tally, response
from proxy.status import Status


def serve(handler: Any, pump: bool) -> tuple[Any, int]:
    ae = AE("SCP")
    ae.add_supported_context(MOVE)
    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_C_MOVE, handler)])
    if pump:
        scp.install(ae)
    return server, server.server_address[1]


def move(port: int) -> list[Dataset]:
    ae = AE("SCU")
    ae.add_requested_context(MOVE)
    assoc = ae.associate("127.0.0.1", port, ae_title="SCP")
    assert assoc.is_established
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = "1.2.3"
    out = []
    for status, identifier in assoc.send_c_move(ident, "DEST", MOVE):
        if identifier is not None and "FailedSOPInstanceUIDList" in identifier:
            status.FailedSOPInstanceUIDList = identifier.FailedSOPInstanceUIDList
        out.append(status)
    assoc.release()
    return out


@pytest.fixture
def stopping() -> Iterator[list[Any]]:
    servers: list[Any] = []
    yield servers
    for server in servers:
        scp.uninstall(server.ae)
        server.shutdown()


def test_the_handlers_responses_are_sent_as_they_are(stopping: list[Any]) -> None:
    def handler(event: evt.Event) -> Iterator[Dataset]:
        t = Tally()
        t.expect(["1", "2", "3"])
        t.record("1", Status.SUCCESS)
        yield response(Status.PENDING, t, remaining=True)
        t.record("2", None, "destination refused")
        t.settle("archive aborted")
        yield response(Status.WARNING_SUBOPS_FAILED, t, "archive aborted")

    server, port = serve(handler, pump=True)
    stopping.append(server)
    pending, final = move(port)
    assert pending.Status == Status.PENDING
    assert pending.NumberOfRemainingSuboperations == 2
    assert final.Status == Status.WARNING_SUBOPS_FAILED
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (1, 2)
    assert list(final.FailedSOPInstanceUIDList) == ["2", "3"]


def test_a_handler_that_raises_still_gets_an_answer(stopping: list[Any]) -> None:
    def handler(event: evt.Event) -> Iterator[Dataset]:
        raise RuntimeError("boom")
        yield Dataset()  # pragma: no cover

    server, port = serve(handler, pump=True)
    stopping.append(server)
    (final,) = move(port)
    assert final.Status == Status.UNABLE_TO_PROCESS


def test_other_aes_keep_pynetdicoms_behaviour(stopping: list[Any]) -> None:
    def handler(event: evt.Event) -> Iterator[Any]:
        yield None, None       # pynetdicom's protocol: unknown destination

    server, port = serve(handler, pump=False)
    stopping.append(server)
    scp.install(AE("SOMEONE_ELSE"))   # the swap is process-wide, the pump is per AE
    (final,) = move(port)
    assert final.Status == Status.MOVE_DESTINATION_UNKNOWN
