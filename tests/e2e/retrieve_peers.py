"""Test data and the two pynetdicom peers the retrieve tests need a fault from.

- ``encoded_study``: the real-world encodings bundled with pydicom (JPEG baseline,
  extended and lossless, JPEG 2000, JPEG-LS lossless and near-lossless, RLE, big
  endian, deflated, an implicit-VR RT Plan) re-identified into one study, so each
  file's pixel data can be compared byte for byte after a trip through the proxy.
- ``RecordingSCP``: a storage SCP accepting only the SOP classes it is given (a
  destination that rejects the others) and recording every data set it received.
- ``AbortingArchive``: a Q/R SCP that answers the survey C-FIND truthfully, then
  sends ``deliver`` instances of the C-GET and aborts the association.
- ``CancellableMoveArchive``: a Q/R SCP for ``retrieve = "move"`` that C-STOREs one
  instance to the proxy, then waits for a C-CANCEL naming its C-MOVE (and records it).

Rule: everything binds 127.0.0.1 port 0 and is shut down by ``close()``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import AllTransferSyntaxes, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from tests.e2e.ports import LOOPBACK

PENDING = 0xFF00
ENCODED_FILES = (
    "SC_rgb_jpeg_dcmtk.dcm",          # JPEG Baseline (Process 1)
    "JPEG-lossy.dcm",                 # JPEG Extended (Process 2 & 4)
    "SC_rgb_jpeg_gdcm.dcm",           # JPEG Lossless SV1 (Process 14)
    "JPEG2000.dcm",                   # JPEG 2000
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS Lossless
    "JPEGLSNearLossless_16.dcm",      # JPEG-LS Near-lossless
    "MR_small_RLE.dcm",               # RLE Lossless
    "SC_rgb_rle.dcm",                 # RLE Lossless, RGB
    "MR_small_bigendian.dcm",         # Explicit VR Big Endian
    "CT_small.dcm",                   # Explicit VR Little Endian
    "rtplan.dcm",                     # Implicit VR Little Endian, no pixel data
)
DEFLATED_FILE = "image_dfl.dcm"     # Deflated Explicit VR Little Endian


# Syntaxes the direct reference C-GET offers, one context each (``direct_get``).
DIRECT_SYNTAXES = (ExplicitVRLittleEndian, "1.2.840.10008.1.2", "1.2.840.10008.1.2.5",
                   "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70",
                   "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")


def direct_get(port: int, aet: str, study_uid: str, classes: set[str]) -> dict[str, Dataset]:
    """A study by C-GET straight from an archive (pynetdicom as the workstation): the
    reference a proxied retrieve is compared with. One context per class and syntax, so
    the archive sends each instance as it holds it instead of converting to the first
    syntax offered; each data set keeps the file meta it came with."""
    ae = AE("WS_DIRECT")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for uid in classes:
        for syntax in DIRECT_SYNTAXES:
            ae.add_requested_context(uid, syntax)
    got: dict[str, Dataset] = {}

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        got[str(ds.SOPInstanceUID)] = ds
        return 0x0000

    assoc = ae.associate(LOOPBACK, port, ae_title=aet,
                         ext_neg=[build_role(uid, scp_role=True) for uid in classes],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    statuses = [s.Status for s, _ in assoc.send_c_get(
        query, StudyRootQueryRetrieveInformationModelGet) if s]
    assoc.release()
    assert statuses[-1] == 0x0000
    return got


def reidentify(ds: Dataset, study_uid: str, patient_id: str) -> Dataset:
    """New Study/Series/SOP Instance UIDs (the bundled files share some); pixels untouched."""
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = patient_id
    ds.PatientName = "ENCODED^TEST"
    return ds


def encoded_study(directory: Path, names: Sequence[str] = ENCODED_FILES,
                  patient_id: str = "ENC0001") -> tuple[str, list[Path]]:
    """Write the bundled encodings as one study in ``directory``; (study UID, paths)."""
    directory.mkdir(parents=True, exist_ok=True)
    study_uid = generate_uid()
    paths = []
    for name in names:
        ds = reidentify(dcmread(get_testdata_file(name)), study_uid, patient_id)
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study_uid, paths


class RecordingSCP:
    """A storage SCP that accepts only ``sop_classes`` and records what it received."""

    def __init__(self, aet: str, sop_classes: Sequence[str],
                 gate: threading.Event | None = None) -> None:
        self.aet = aet
        self.gate = gate                   # C-STOREs wait until it is set (a stalled peer)
        self.received: dict[str, Dataset] = {}
        self._lock = threading.Lock()
        ae = AE(aet)
        for uid in sop_classes:
            ae.add_supported_context(uid, list(AllTransferSyntaxes))
        self._server = ae.start_server(("127.0.0.1", 0), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = int(self._server.server_address[1])

    def _on_store(self, event: evt.Event) -> int:
        if self.gate is not None:
            self.gate.wait(60)
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self._lock:
            self.received[str(ds.SOPInstanceUID)] = ds
        return 0x0000

    def close(self) -> None:
        self._server.shutdown()


class AbortingArchive:
    """A Study Root Q/R SCP holding ``datasets``; its C-GET aborts after ``deliver`` of them
    (or, given ``stall``, falls silent: no PDU at all until the event is set)."""

    def __init__(self, aet: str, datasets: Sequence[Dataset], deliver: int,
                 stall: threading.Event | None = None) -> None:
        self.aet = aet
        self.datasets = list(datasets)
        self.deliver = deliver
        self.stall = stall          # when given: go silent after ``deliver`` until it is set
        self.get_requests = 0
        ae = AE(aet)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
        for cx in StoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, list(AllTransferSyntaxes),
                                     scu_role=True, scp_role=True)
        self._server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
            (evt.EVT_C_FIND, self._on_find), (evt.EVT_C_GET, self._on_get)])
        self.port = int(self._server.server_address[1])

    def _on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        yield from image_matches(self.datasets)

    def _on_get(self, event: evt.Event) -> Iterator[Any]:
        self.get_requests += 1
        yield len(self.datasets)
        for ds in self.datasets[:self.deliver]:
            yield PENDING, ds
        if self.stall is not None:
            self.stall.wait(60)
            return
        event.assoc.abort()

    @property
    def dicom_port(self) -> int:          # as OrthancArchive names it (``archive_entry``)
        return self.port

    def close(self) -> None:
        self._server.shutdown()


def image_matches(datasets: Sequence[Dataset]) -> Iterator[tuple[int, Dataset | None]]:
    """Every instance of ``datasets`` as an IMAGE-level C-FIND match, then Success."""
    for ds in datasets:
        match = Dataset()
        match.QueryRetrieveLevel = "IMAGE"
        match.StudyInstanceUID = ds.StudyInstanceUID
        match.SeriesInstanceUID = ds.SeriesInstanceUID
        match.SOPInstanceUID = ds.SOPInstanceUID
        match.SOPClassUID = ds.SOPClassUID
        yield PENDING, match
    yield 0x0000, None


class CancellableMoveArchive:
    """A Study Root Q/R SCP holding ``datasets`` that C-MOVEs to ``proxy`` (AE title → port):
    one instance (no pending response), then nothing until a C-CANCEL naming that C-MOVE
    arrives (answered 0xFE00, ``cancelled`` set) or ``close()``. ``move_ids`` records each
    C-MOVE's Message ID."""

    def __init__(self, aet: str, datasets: Sequence[Dataset], proxy: tuple[str, int]) -> None:
        self.aet = aet
        self.datasets = list(datasets)
        self.proxy = proxy
        self.move_ids: list[int] = []
        self.cancelled = threading.Event()
        self._closing = threading.Event()
        ae = AE(aet)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
        for sop_class in sorted({str(ds.SOPClassUID) for ds in self.datasets}):
            ae.add_requested_context(sop_class)
        self._server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
            (evt.EVT_C_FIND, lambda event: image_matches(self.datasets)),
            (evt.EVT_C_MOVE, self._on_move)])
        self.port = int(self._server.server_address[1])

    def _on_move(self, event: evt.Event) -> Iterator[Any]:
        self.move_ids.append(int(event.request.MessageID))
        if event.move_destination.strip() != self.proxy[0]:
            yield None, None
            return
        yield "127.0.0.1", self.proxy[1]
        yield len(self.datasets)
        self._deliver_first(event)
        while not self._closing.is_set():       # pynetdicom has no wait-for-cancel: poll
            if event.is_cancelled:
                self.cancelled.set()
                yield 0xFE00, None
                return
            self._closing.wait(0.01)

    def _deliver_first(self, event: evt.Event) -> None:
        """C-STORE the first instance to the proxy as an archive does: from its own AE title,
        naming the C-MOVE's requestor and Message ID as Move Originator (pynetdicom's own
        sub-operations name the archive itself, which the proxy rightly refuses)."""
        ae = AE(self.aet)
        first = self.datasets[0]
        ae.add_requested_context(first.SOPClassUID, first.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", self.proxy[1], ae_title=self.proxy[0])
        if assoc.is_established:
            assoc.send_c_store(first, originator_aet=event.assoc.requestor.ae_title,
                               originator_id=int(event.request.MessageID))
            assoc.release()

    @property
    def dicom_port(self) -> int:
        return self.port

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
