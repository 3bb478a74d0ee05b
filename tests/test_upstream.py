"""proxy.upstream: C-ECHO and C-MOVE over the lean link against a real pynetdicom archive.

The archive is a pynetdicom Q/R SCP whose C-MOVE handler a test scripts, storing to a
pynetdicom destination that refuses the instances a test names. Every C-MOVE answer
is compared with what pynetdicom's own requestor (``send_c_move``, the proxy's client
before the lean link) reports for the same request: same statuses, counts, Error
Comment, Offending Element and Failed SOP Instance UID List. Faults (silence, abort,
rejection, a missing context) must come out as the same ``UpstreamError`` kinds.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from proxy.cancel import CancelToken
from proxy.upstream import QUERY_TRANSFER_SYNTAXES, ArchiveClient, Peer, UpstreamError

MOVE = StudyRootQueryRetrieveInformationModelMove
PENDING, CANCEL, SUCCESS = 0xFF00, 0xFE00, 0x0000
LOOPBACK = "127.0.0.1"
MoveScript = Callable[["Archive", Any], Iterator[Any]]
Responses = list[tuple[int, Dataset]]


def instances(n: int) -> list[Dataset]:
    study = generate_uid()
    out: list[Dataset] = []
    for _ in range(n):
        ds = dcmread(str(get_testdata_file("CT_small.dcm")))
        ds.StudyInstanceUID = study
        ds.SOPInstanceUID = generate_uid()
        out.append(ds)
    return out


class Destination:
    """A storage SCP that refuses (0xA700) the SOP Instance UIDs in ``refuse``."""

    def __init__(self) -> None:
        self.refuse: set[str] = set()
        self.received: list[tuple[str, int | None]] = []     # (SOP UID, Move Originator ID)
        ae = AE("DEST")
        ae.add_supported_context(CTImageStorage)
        self.server = ae.start_server((LOOPBACK, 0), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = int(self.server.server_address[1])

    def _on_store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        self.received.append((uid, event.request.MoveOriginatorMessageID))
        return 0xA700 if uid in self.refuse else 0x0000


class Archive:
    """A Q/R SCP whose C-MOVE answer is ``script``; it records who called and any C-CANCEL."""

    def __init__(self, destination: Destination, verification: bool = True) -> None:
        self.destination = destination
        self.script: MoveScript = deliver
        self.datasets = instances(3)
        self.callers: list[str] = []
        self.cancelled = threading.Event()
        self.sent_first = threading.Event()
        self.closing = threading.Event()
        ae = AE("ARCHIVE")
        ae.require_called_aet = True
        ae.add_supported_context(MOVE, QUERY_TRANSFER_SYNTAXES)
        if verification:
            ae.add_supported_context(Verification)
        ae.add_requested_context(CTImageStorage)
        self.server = ae.start_server((LOOPBACK, 0), block=False, evt_handlers=[
            (evt.EVT_C_MOVE, self._on_move), (evt.EVT_C_ECHO, self._on_echo)])
        self.port = int(self.server.server_address[1])
        self.echo: Callable[[Any], int] = lambda _event: 0x0000

    def _on_move(self, event: Any) -> Iterator[Any]:
        self.callers.append(str(event.assoc.requestor.ae_title))
        if event.move_destination.strip() != "DEST":
            yield None, None                              # unknown: 0xA801
            return
        yield LOOPBACK, self.destination.port
        yield from self.script(self, event)

    def _on_echo(self, event: Any) -> int:
        self.callers.append(str(event.assoc.requestor.ae_title))
        return self.echo(event)

    def cancelled_within(self, event: Any, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.closing.is_set():
            if event.is_cancelled:
                self.cancelled.set()
                return True
            self.closing.wait(0.01)
        return False

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()


def deliver(archive: Archive, event: Any) -> Iterator[Any]:
    yield len(archive.datasets)
    for ds in archive.datasets:
        yield PENDING, ds


def failing_with(status: Dataset, identifier: Dataset | None) -> MoveScript:
    def script(archive: Archive, event: Any) -> Iterator[Any]:
        yield len(archive.datasets)
        yield PENDING, archive.datasets[0]
        yield status, identifier
    return script


def until_cancelled(archive: Archive, event: Any) -> Iterator[Any]:
    yield len(archive.datasets)
    yield PENDING, archive.datasets[0]
    archive.sent_first.set()
    for ds in archive.datasets[1:]:
        if archive.cancelled_within(event, 15):
            yield CANCEL, None
            return
        yield PENDING, ds


def silent_after_one(archive: Archive, event: Any) -> Iterator[Any]:
    yield len(archive.datasets)
    yield PENDING, archive.datasets[0]
    archive.sent_first.set()
    archive.closing.wait(30)


def aborting_after_one(archive: Archive, event: Any) -> Iterator[Any]:
    yield len(archive.datasets)
    yield PENDING, archive.datasets[0]
    event.assoc.abort()


@pytest.fixture(scope="module")
def peers() -> Iterator[tuple[Archive, Destination]]:
    dest = Destination()
    arch = Archive(dest)
    yield arch, dest
    arch.close()
    dest.server.shutdown()


@pytest.fixture
def destination(peers: tuple[Archive, Destination]) -> Destination:
    _arch, dest = peers
    dest.refuse.clear()
    dest.received.clear()
    return dest


@pytest.fixture
def archive(peers: tuple[Archive, Destination], destination: Destination) -> Iterator[Archive]:
    """The module's archive, as new: delivering every instance, answering C-ECHO."""
    arch, _dest = peers
    arch.script = deliver
    arch.echo = lambda _event: 0x0000
    arch.callers.clear()
    arch.cancelled.clear()
    arch.sent_first.clear()
    yield arch
    arch.closing.set()                   # ends a handler a test left waiting
    arch.closing = threading.Event()


def client(port: int, timeout: float = 5.0, called: str = "ARCHIVE") -> ArchiveClient:
    return ArchiveClient(Peer("pacs", called, LOOPBACK, port, "QR_PROXY", timeout),
                         network_timeout=timeout)


def study_identifier(archive: Archive) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = archive.datasets[0].StudyInstanceUID
    return ds


def pynetdicom_move(archive: Archive, destination: str, msg_id: int,
                    cancel_after: int | None = None) -> Responses:
    """The same C-MOVE by pynetdicom's requestor, responses as the proxy's client reported
    them before the lean link: the identifier's Failed SOP Instance UID List in the status."""
    ae = AE("QR_PROXY")
    ae.add_requested_context(MOVE, QUERY_TRANSFER_SYNTAXES)
    assoc = ae.associate(LOOPBACK, archive.port, ae_title="ARCHIVE")
    assert assoc.is_established
    out: Responses = []
    try:
        for status, identifier in assoc.send_c_move(study_identifier(archive), destination,
                                                    MOVE, msg_id=msg_id):
            assert "Status" in status, "pynetdicom got no response"
            if identifier is not None and "FailedSOPInstanceUIDList" in identifier:
                status.FailedSOPInstanceUIDList = identifier.FailedSOPInstanceUIDList
            out.append((int(status.Status), status))
            if cancel_after == len(out):
                assoc.send_c_cancel(msg_id, assoc.accepted_contexts[0].context_id)
    finally:
        assoc.release()
    return out


def proxy_move(archive: Archive, destination: str, msg_id: int,
               cancelled: CancelToken | None = None) -> Responses:
    return list(client(archive.port).move(study_identifier(archive), MOVE, destination,
                                          msg_id, cancelled))


# -- C-MOVE: the archive's answers, as pynetdicom reported them ---------------------------


@pytest.mark.parametrize("refused", [0, 1, 3])
def test_move_responses_equal_pynetdicoms(archive: Archive, destination: Destination,
                                          refused: int) -> None:
    destination.refuse = {str(ds.SOPInstanceUID) for ds in archive.datasets[:refused]}
    direct = pynetdicom_move(archive, "DEST", 11)
    destination.received.clear()
    through = proxy_move(archive, "DEST", 12)
    assert through == direct
    assert [code for code, _ in through] == [PENDING] * 3 + [direct[-1][0]]
    final = through[-1][1]
    assert final.NumberOfCompletedSuboperations == 3 - refused
    assert final.NumberOfFailedSuboperations == refused
    if refused:
        listed = final.FailedSOPInstanceUIDList
        assert sorted([listed] if isinstance(listed, str) else listed) == sorted(
            destination.refuse)
    else:
        assert "FailedSOPInstanceUIDList" not in final
    # msg_id comes back in every C-STORE the archive makes for this C-MOVE
    assert {originator for _uid, originator in destination.received} == {12}


@pytest.mark.parametrize(("status", "failed"), [
    ({"Status": 0xC000, "ErrorComment": "archive database offline"}, None),
    ({"Status": 0xA900, "OffendingElement": [0x00100020, 0x0020000D]}, None),
    ({"Status": 0xA702, "ErrorComment": "out of resources"}, ["1.2.3.4", "1.2.3.5"]),
    ({"Status": 0xB000}, ["1.2.3.6"]),
])
def test_a_failure_with_error_comment_and_offending_element_equals_pynetdicoms(
        archive: Archive, status: dict[str, Any], failed: list[str] | None) -> None:
    ds = Dataset()
    for keyword, value in status.items():
        setattr(ds, keyword, value)
    identifier = None
    if failed is not None:
        identifier = Dataset()
        identifier.FailedSOPInstanceUIDList = failed
    archive.script = failing_with(ds, identifier)
    direct = pynetdicom_move(archive, "DEST", 3)
    through = proxy_move(archive, "DEST", 3)
    assert through == direct
    final = through[-1][1]
    assert final.Status == status["Status"]
    assert final.NumberOfCompletedSuboperations == 1
    for keyword in ("ErrorComment", "OffendingElement"):
        if keyword in status:
            assert final.get(keyword) == status[keyword], keyword
    if failed is not None:
        listed = final.FailedSOPInstanceUIDList
        assert ([listed] if isinstance(listed, str) else list(listed)) == failed


def test_an_unknown_move_destination_equals_pynetdicoms(archive: Archive) -> None:
    direct = pynetdicom_move(archive, "NOBODY", 1)
    through = proxy_move(archive, "NOBODY", 1)
    assert through == direct
    assert [code for code, _ in through] == [0xA801]


def test_a_cancelled_move_sends_c_cancel_for_its_message_id(
        archive: Archive, destination: Destination) -> None:
    archive.script = until_cancelled
    direct = pynetdicom_move(archive, "DEST", 21, cancel_after=1)
    assert archive.cancelled.is_set()
    archive.cancelled.clear()
    token = CancelToken()
    through: Responses = []
    for code, status in client(archive.port).move(study_identifier(archive), MOVE, "DEST",
                                                  21, token):
        through.append((code, status))
        token.cancel()                       # after the first response, as directly
    assert archive.cancelled.is_set()        # pynetdicom matches the C-CANCEL's message ID
    assert through == direct
    assert [code for code, _ in through] == [PENDING, CANCEL]
    assert through[-1][1].NumberOfRemainingSuboperations == 2


# -- C-MOVE faults ------------------------------------------------------------------------


def test_an_archive_silent_mid_move_is_a_timeout(archive: Archive) -> None:
    archive.script = silent_after_one
    started = time.monotonic()
    seen: list[int] = []
    with pytest.raises(UpstreamError) as raised:
        for code, _ in client(archive.port, timeout=1.0).move(
                study_identifier(archive), MOVE, "DEST", 1):
            seen.append(code)
    assert seen == [PENDING]
    assert raised.value.kind == "timeout"
    assert "no C-MOVE response within timeout (1s)" in raised.value.reason
    assert raised.value.hint is not None and "archives.pacs.timeout" in raised.value.hint
    assert 0.9 < time.monotonic() - started < 5


def test_an_archive_aborting_mid_move_is_aborted(archive: Archive) -> None:
    archive.script = aborting_after_one
    seen: list[int] = []
    with pytest.raises(UpstreamError) as raised:
        for code, _ in proxy_move(archive, "DEST", 1):
            seen.append(code)
    assert raised.value.kind == "aborted"
    assert "aborted or closed the association during C-MOVE" in raised.value.reason


def test_abort_all_ends_a_move_in_flight(archive: Archive) -> None:
    archive.script = silent_after_one
    owner = client(archive.port, timeout=30.0)
    workstation = owner.calling_as("WS1")            # its links are in the owner's record
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["codes"] = [c for c, _ in workstation.move(study_identifier(archive), MOVE,
                                                               "DEST", 1)]
        except UpstreamError as exc:
            outcome["error"] = exc

    mover = threading.Thread(target=run)
    mover.start()
    assert archive.sent_first.wait(10)       # the link was recorded before the request went
    assert owner.abort_all() == 1
    mover.join(10)
    assert not mover.is_alive()
    assert outcome["error"].kind == "aborted"
    assert not owner._active
    assert archive.callers == ["WS1"]


def test_a_move_model_the_archive_lacks_is_no_context(archive: Archive) -> None:
    with pytest.raises(UpstreamError) as raised:
        list(client(archive.port).move(study_identifier(archive), CTImageStorage, "DEST", 1))
    assert raised.value.kind == "no_context"
    assert not client(archive.port)._active


# -- C-ECHO -------------------------------------------------------------------------------


def test_echo_returns_the_archives_status_with_the_calling_ae_chosen(archive: Archive) -> None:
    assert client(archive.port).echo() == SUCCESS
    archive.echo = lambda _event: 0x0110
    assert client(archive.port).calling_as("WS1").echo() == 0x0110
    assert archive.callers == ["QR_PROXY", "WS1"]


def test_echo_to_an_archive_without_verification_is_no_context(
        destination: Destination) -> None:
    arch = Archive(destination, verification=False)
    try:
        with pytest.raises(UpstreamError) as raised:
            client(arch.port).echo()
    finally:
        arch.close()
    assert raised.value.kind == "no_context"
    assert raised.value.hint is not None and "Verification" in raised.value.hint


def test_echo_unanswered_is_a_timeout(archive: Archive) -> None:
    def unanswered(_event: Any) -> int:
        archive.closing.wait(30)
        return 0x0000

    archive.echo = unanswered
    started = time.monotonic()
    with pytest.raises(UpstreamError) as raised:
        client(archive.port, timeout=1.0).echo()
    assert raised.value.kind == "timeout"
    assert "no C-ECHO response within timeout (1s)" in raised.value.reason
    assert 0.9 < time.monotonic() - started < 5


def test_echo_aborted_by_the_archive_is_aborted(archive: Archive) -> None:
    def abort(event: Any) -> int:
        event.assoc.abort()
        return 0x0000

    archive.echo = abort
    with pytest.raises(UpstreamError) as raised:
        client(archive.port).echo()
    assert raised.value.kind == "aborted"
    assert "during C-ECHO" in raised.value.reason


def test_echo_rejected_for_a_workstations_title_names_pass_calling_ae(
        archive: Archive) -> None:
    with pytest.raises(UpstreamError) as raised:
        client(archive.port, called="NOTARCHIVE").echo()
    assert raised.value.kind == "rejected"
    assert raised.value.rejection == (1, 1, 7)
    ae = AE("PICKY")
    ae.require_calling_aet = ["QR_PROXY"]
    ae.add_supported_context(Verification)
    server = ae.start_server((LOOPBACK, 0), block=False)
    try:
        picky = client(int(server.server_address[1]), called="PICKY")
        assert picky.echo() == SUCCESS
        with pytest.raises(UpstreamError) as raised:
            picky.calling_as("STRANGER").echo()
    finally:
        server.shutdown()
    assert raised.value.kind == "rejected"
    assert "calling AE STRANGER" in raised.value.reason
    assert raised.value.hint is not None and "pass_calling_ae" in raised.value.hint


def test_echo_with_nothing_listening_is_refused() -> None:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port = s.getsockname()[1]
    with pytest.raises(UpstreamError) as raised:
        client(port).echo()
    assert raised.value.kind == "refused"
