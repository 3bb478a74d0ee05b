"""Peers that misbehave on purpose, for the relay and robustness tests.

Real archives (Orthanc) answer correctly and quickly; these peers exist only
where a fault or a timing must be injected:

- ``ScriptedArchive``: a pynetdicom Q/R SCP whose C-FIND answer a test scripts
  (slow streaming gated on an Event, ignoring the request, many big matches);
  it records what it received and whether a C-CANCEL reached it.
- ``SilentServer``: accepts TCP connections and never says a word.
- raw PDU builders (``associate_rq``, ``find_rq``) for clients that must send
  exactly the bytes a test wants and then misbehave (stop reading, lie about lengths).

Rule 1: everything binds 127.0.0.1 port 0 and is closed by ``close()``; a
        handler that waits does so on an Event that ``close()`` sets, so no
        thread outlives the test.
Rule 2: the peers never sleep to synchronise; tests gate them with Events.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from io import BytesIO
from typing import Any

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_FIND_RQ
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.pdu import A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)
from pynetdicom.transport import AddressInformation

from tests.e2e.ports import LOOPBACK

PENDING, CANCEL = 0xFF00, 0xFE00  # PS3.4 C.4.1.1.4
FindScript = Callable[["ScriptedArchive", Any], Iterator[tuple[int, Dataset | None]]]


def study_match(k: int, pad: int = 0) -> Dataset:
    """A STUDY-level match; ``pad`` bytes of StudyDescription make it as big as wanted."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = f"SLOW{k:05d}"
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.10.543.{k}"
    ds.StudyDate = "20200101"
    if pad:
        ds.StudyDescription = "X" * min(pad, 64)
        ds.AdditionalPatientHistory = "Y" * pad  # LT: up to 10240 chars
    return ds


class ScriptedArchive:
    """A pynetdicom C-FIND SCP on a free loopback port, answering per ``script``.

    ``identifiers`` holds every C-FIND identifier received, ``calling_aets`` every
    calling AE title; ``cancelled`` is set when a C-CANCEL arrived (seen by the script,
    or received by the DIMSE layer after the script had already queued everything:
    pynetdicom reads nothing while it still has PDUs to send);
    ``first_sent`` when the first match left the script; ``gate`` is an Event
    scripts may wait on (set by the test, and by ``close()``). One archive can
    serve several tests: assign ``script`` and call ``reset()`` between them.
    """

    def __init__(self, script: FindScript, aet: str = "SCRIPTED") -> None:
        self.aet = aet
        self.script = script
        self.identifiers: list[Dataset] = []
        self.calling_aets: list[str] = []
        self.cancelled = threading.Event()
        self.first_sent = threading.Event()
        self.finished = threading.Event()
        self.gate = threading.Event()
        self.closing = threading.Event()
        ae = AE(ae_title=aet)
        for model in (StudyRootQueryRetrieveInformationModelFind,
                      PatientRootQueryRetrieveInformationModelFind, Verification):
            ae.add_supported_context(model, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.dimse_timeout = ae.acse_timeout = ae.network_timeout = 60
        self._ae = ae
        self._server = ae.start_server(
            (LOOPBACK, 0), block=False,
            evt_handlers=[(evt.EVT_C_FIND, self._on_find), (evt.EVT_REQUESTED, self._on_rq),
                          (evt.EVT_DIMSE_RECV, self._on_dimse)])
        self.host = LOOPBACK
        self.dicom_port = int(self._server.server_address[1])

    def reset(self, script: FindScript) -> ScriptedArchive:
        self.script = script
        self.identifiers.clear()
        self.calling_aets.clear()
        for flag in (self.cancelled, self.first_sent, self.finished, self.gate):
            flag.clear()
        return self

    def _on_dimse(self, event: Any) -> None:
        if type(event.message).__name__ == "C_CANCEL_RQ":
            self.cancelled.set()

    def _on_rq(self, event: Any) -> None:
        self.calling_aets.append(str(event.assoc.requestor.primitive.calling_ae_title).strip())

    def _on_find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        self.identifiers.append(event.identifier)
        try:
            yield from self.script(self, event)
        finally:
            self.finished.set()

    def wait(self, seconds: float = 30.0) -> bool:
        """Wait on ``gate``; False when the archive is closing."""
        self.gate.wait(seconds)
        return not self.closing.is_set()

    def close(self) -> None:
        self.closing.set()
        self.gate.set()
        self._server.shutdown()
        self._ae.shutdown()


def gated_stream(matches: Sequence[Dataset]) -> FindScript:
    """First match at once; the rest only after ``gate`` is set; honours C-CANCEL."""

    def script(archive: ScriptedArchive, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        for i, ds in enumerate(matches):
            if i == 1 and not archive.wait():
                return
            if event.is_cancelled:
                archive.cancelled.set()
                yield CANCEL, None
                return
            yield PENDING, ds
            archive.first_sent.set()
    return script


def until_cancelled(first: Dataset, limit: float = 15.0) -> FindScript:
    """One match, then nothing until a C-CANCEL arrives (Cancel) or ``limit`` s pass (Success)."""

    def script(archive: ScriptedArchive, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        yield PENDING, first
        archive.first_sent.set()
        if _cancelled_within(archive, event, limit):
            yield CANCEL, None
    return script


def slow_stream(matches: Sequence[Dataset], interval: float) -> FindScript:
    """One match every ``interval`` seconds (polled for C-CANCEL meanwhile)."""

    def script(archive: ScriptedArchive, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        for ds in matches:
            if _cancelled_within(archive, event, interval):
                yield CANCEL, None
                return
            yield PENDING, ds
            archive.first_sent.set()
    return script


def _cancelled_within(archive: ScriptedArchive, event: Any, seconds: float) -> bool:
    """Wait up to ``seconds`` (less if the archive closes), polling for a C-CANCEL;
    True, with ``archive.cancelled`` set, when one came."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not archive.closing.is_set():
        if event.is_cancelled:
            archive.cancelled.set()
            return True
        archive.closing.wait(0.01)
    return False


def never_answers(archive: ScriptedArchive, event: Any) -> Iterator[tuple[int, Dataset | None]]:
    """Accepts the association and the C-FIND, then says nothing until closed."""
    archive.closing.wait(120)
    return
    yield  # pragma: no cover - makes this a generator


def many_matches(count: int, pad: int) -> FindScript:
    """``count`` matches of about ``pad`` bytes each, as fast as the link takes them."""

    def script(archive: ScriptedArchive, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        for k in range(count):
            if archive.closing.is_set():
                return
            if event.is_cancelled:
                archive.cancelled.set()
                yield CANCEL, None
                return
            yield PENDING, study_match(k, pad)
            archive.first_sent.set()
    return script


class SilentServer:
    """Accepts TCP connections on a free loopback port and never sends a byte."""

    def __init__(self) -> None:
        self._sock = socket.create_server((LOOPBACK, 0))
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self.accepted:
            conn.close()
        self._sock.close()


# -- raw PDUs ---------------------------------------------------------------------

def associate_rq(called_ae: str, calling_ae: str,
                 contexts: Sequence[tuple[str, Sequence[str]]],
                 max_pdu: int = 16384) -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing ``(abstract syntax, [transfer syntaxes])`` pairs
    with context IDs 1, 3, 5, ..."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = called_ae
    primitive.calling_presentation_address = AddressInformation(LOOPBACK, 0)
    primitive.called_presentation_address = AddressInformation(LOOPBACK, 0)
    proposed = []
    for i, (abstract, syntaxes) in enumerate(contexts):
        cx = build_context(abstract, list(syntaxes))
        cx.context_id = 2 * i + 1
        proposed.append(cx)
    primitive.presentation_context_definition_list = proposed
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = "1.2.826.0.1.3680043.10.543.1"
    primitive.user_information = [max_length, impl]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def find_rq(identifier: Dataset, context_id: int = 1,
            model: str = StudyRootQueryRetrieveInformationModelFind,
            msg_id: int = 1) -> bytes:
    """The P-DATA-TF PDUs of one C-FIND-RQ (identifier in Implicit VR Little Endian)."""
    req = C_FIND()
    req.MessageID = msg_id
    req.AffectedSOPClassUID = model
    req.Priority = 2
    req.Identifier = BytesIO(encode(identifier, True, True))
    message = C_FIND_RQ()
    message.primitive_to_message(req)
    out = b""
    for primitive in message.encode_msg(context_id, 16384):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        out += pdu.encode()
    return out


def pdu_header(pdu_type: int, length: int) -> bytes:
    """The 6-byte header of a PDU claiming ``length`` bytes of body."""
    return struct.pack(">BBL", pdu_type, 0, length)


def read_pdu(sock: socket.socket, timeout: float = 10.0) -> tuple[int, bytes] | None:
    """(type, body) of the next PDU, or None when the peer closed first."""
    sock.settimeout(timeout)
    head = _read_exact(sock, 6)
    if head is None:
        return None
    pdu_type, _, length = struct.unpack(">BBL", head)
    body = _read_exact(sock, length)
    return None if body is None else (pdu_type, body)


def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except (ConnectionResetError, BrokenPipeError):
            return None
        if not chunk:
            return None
        data += chunk
    return data


def closed_by_peer(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the peer closed ``sock`` (reading and discarding), or None on timeout."""
    start = time.monotonic()
    sock.settimeout(0.1)
    while time.monotonic() - start < timeout:
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - start
    return None
