"""A Storage Commitment modality for the modality-workflow tests (pynetdicom: nothing common
ships one; a test peer, never part of the proxy).

- ``CommitModality``: C-STOREs instances, sends an N-ACTION (Storage Commitment Push Model,
  proposing both roles so it may hear the report on that association) and receives the
  N-EVENT-REPORT on its own listener, which can be started late (a modality unreachable
  at first) on a port chosen beforehand.
- ``instances(n)``: small Secondary Capture instances with fresh UIDs.

Rule 1: everything binds 127.0.0.1 only.
Rule 2: ``wait_reports(n)`` waits on a condition the handler notifies: no sleeps.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import SecondaryCaptureImageStorage as SC_IMAGE
from pynetdicom.sop_class import StorageCommitmentPushModel as COMMITMENT

from tests.e2e.ports import LOOPBACK

WELL_KNOWN = "1.2.840.10008.1.20.1.1"
SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


@dataclass(frozen=True)
class Report:
    """One N-EVENT-REPORT as the modality received it."""

    calling_ae: str
    event_type: int
    info: Dataset                     # the Event Information
    raw: bytes                        # ... as it arrived
    transfer_syntax: str

    @property
    def transaction_uid(self) -> str:
        return str(self.info.TransactionUID)

    def lists(self) -> tuple[list[tuple[str, str]], list[tuple[str, str, int]]]:
        """(committed, failed): (class, instance) and (class, instance, Failure Reason)."""
        ok = [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
              for i in self.info.get("ReferencedSOPSequence", [])]
        failed = [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID),
                   int(i.FailureReason)) for i in self.info.get("FailedSOPSequence", [])]
        return ok, failed


def instances(n: int, patient: str = "COMMIT1") -> list[Dataset]:
    study, series = generate_uid(), generate_uid()
    out = []
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = SC_IMAGE
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = SC_IMAGE
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName, ds.PatientID = "Commit^Test", patient
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.InstanceNumber, ds.ConversionType = "OT", k + 1, "WSD"
        out.append(ds)
    return out


def request_info(transaction_uid: str, refs: list[Dataset] | None) -> Dataset:
    """Action Information: Transaction UID and the Referenced SOP Sequence (J.3.2.1);
    ``refs`` None: without the sequence."""
    info = Dataset()
    info.TransactionUID = transaction_uid
    if refs is None:
        return info
    items = []
    for ds in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        items.append(item)
    info.ReferencedSOPSequence = Sequence(items)
    return info


class CommitModality:
    """A pynetdicom Storage Commitment SCU (see the module docstring)."""

    def __init__(self, aet: str, port: int) -> None:
        self.aet, self.port = aet, port
        self.reports: list[Report] = []
        self._changed = threading.Condition()
        self._server: Any = None

    def listen(self) -> CommitModality:
        ae = AE(ae_title=self.aet)
        ae.add_supported_context(COMMITMENT, SYNTAXES, scu_role=True, scp_role=True)
        ae.dimse_timeout = ae.acse_timeout = ae.network_timeout = 30
        self._server = ae.start_server((LOOPBACK, self.port), block=False,
                                       evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_report(self, event: Any) -> tuple[int, None]:
        raw = event.request.EventInformation.getvalue()
        report = Report(str(event.assoc.requestor.ae_title).strip(),
                        int(event.request.EventTypeID), event.event_information, raw,
                        str(event.context.transfer_syntax))
        with self._changed:
            self.reports.append(report)
            self._changed.notify_all()
        return 0x0000, None

    def wait_reports(self, count: int, timeout: float = 60.0) -> list[Report]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.reports) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.aet} got {len(self.reports)} of {count} "
                                       "reports")
                self._changed.wait(left)
            return list(self.reports)

    def report_for(self, transaction_uid: str, timeout: float = 60.0) -> Report:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for report in self.reports:
                    if report.transaction_uid == transaction_uid:
                        return report
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.aet} got no report for {transaction_uid}: "
                                       f"{[r.transaction_uid for r in self.reports]}")
                self._changed.wait(left)

    def _ae(self) -> AE:
        ae = AE(ae_title=self.aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        return ae

    def store(self, port: int, called: str, datasets: list[Dataset]) -> list[int]:
        ae = self._ae()
        ae.add_requested_context(SC_IMAGE, ExplicitVRLittleEndian)
        assoc = ae.associate(LOOPBACK, port, ae_title=called)
        assert assoc.is_established, f"storage association to {called} at {port} failed"
        try:
            return [int(assoc.send_c_store(ds).Status) for ds in datasets]
        finally:
            assoc.release()

    def commit(self, port: int, called: str, transaction_uid: str, refs: list[Dataset] | None,
               syntax: str = ExplicitVRLittleEndian) -> tuple[int, Dataset]:
        """One N-ACTION; (status, the response's command set)."""
        ae = self._ae()
        ae.add_requested_context(COMMITMENT, syntax)
        responses: list[Dataset] = []
        assoc = ae.associate(LOOPBACK, port, ae_title=called,
                             ext_neg=[build_role(COMMITMENT, scu_role=True, scp_role=True)],
                             evt_handlers=[(evt.EVT_DIMSE_RECV, lambda e: responses.append(
                                 e.message.command_set))])
        assert assoc.is_established, f"commitment association to {called} at {port} failed"
        try:
            status, _ = assoc.send_n_action(request_info(transaction_uid, refs), 1,
                                            COMMITMENT, WELL_KNOWN)
        finally:
            assoc.release()
        assert "Status" in status and responses, "no N-ACTION response"
        return int(status.Status), responses[-1]


class SameAssociationArchive:
    """A pynetdicom Storage Commitment SCP that reports on the N-ACTION's own association,
    right after its N-ACTION-RSP (J.3.3 allows it while the association is open); every
    instance is reported committed. ``sent`` is the Event Information as encoded,
    ``answers`` the statuses of the N-EVENT-REPORT-RSPs it got."""

    def __init__(self, aet: str = "SAMEPACS", reports: bool = True) -> None:
        self.aet = aet
        self.reports = reports            # False: takes the N-ACTION, never reports
        self.port = 0
        self.sent: list[bytes] = []
        self.answers: list[int] = []
        self.done = threading.Event()
        self._server: Any = None

    def start(self) -> SameAssociationArchive:
        ae = AE(ae_title=self.aet)
        ae.add_supported_context(COMMITMENT, SYNTAXES)
        ae.dimse_timeout = ae.acse_timeout = ae.network_timeout = 30
        self._server = ae.start_server((LOOPBACK, 0), block=False, evt_handlers=[
            (evt.EVT_N_ACTION, self._on_action), (evt.EVT_DIMSE_SENT, self._on_sent)])
        self.port = int(self._server.server_address[1])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_action(self, event: Any) -> tuple[int, None]:
        action = event.action_information
        info = Dataset()
        info.TransactionUID = action.TransactionUID
        info.ReferencedSOPSequence = action.ReferencedSOPSequence
        assoc, answered = event.assoc, threading.Event()
        assoc.answered = answered                      # set once the N-ACTION-RSP is out
        syntax = str(event.context.transfer_syntax)

        def report() -> None:
            answered.wait(30)
            from pynetdicom.dsutils import encode
            raw = encode(info, syntax == ImplicitVRLittleEndian, True)
            self.sent.append(bytes(raw or b""))
            status, _ = assoc.send_n_event_report(info, 1, COMMITMENT, WELL_KNOWN)
            self.answers.append(int(status.Status) if "Status" in status else -1)
            self.done.set()

        if self.reports:
            threading.Thread(target=report, daemon=True).start()
        else:
            self.done.set()
        return 0x0000, None

    def _on_sent(self, event: Any) -> None:
        if type(event.message).__name__ == "N_ACTION_RSP":
            answered = getattr(event.assoc, "answered", None)
            if answered is not None:
                answered.set()
