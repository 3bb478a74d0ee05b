"""MPPS peers for the modality-workflow tests: a RIS (MPPS SCP) and a modality (SCU).

Nothing common ships an MPPS SCP, so both are pynetdicom (allowed here: a test peer,
never part of the proxy).

- ``Ris``: answers N-CREATE and N-SET as PS3.4 F.7 asks — an N-CREATE without Affected
  SOP Instance UID gets one, a second N-CREATE of an instance 0x0111, an N-SET of an
  instance it does not hold 0x0112, an N-SET once the step is COMPLETED or DISCONTINUED
  0x0110 — and records every message it received: operation, instance, transfer
  syntax, the data set's bytes as they arrived.
  ``silent_creates`` keeps that many N-CREATEs without answering them (until
  ``released``): a RIS that got the message but whose answer never came.
- ``Modality``: one association, N-CREATE then N-SETs, every status and response kept.

Rule 1: both bind 127.0.0.1 only; ``Ris`` can be started, stopped and started again on
        the same port (a RIS that is down, then back).
Rule 2: ``Ris.wait_for(n)`` waits on a condition the handlers notify: no sleeps.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS
from pynetdicom.sop_class import Verification

from tests.e2e.ports import LOOPBACK

SUCCESS, DUPLICATE, NO_SUCH_INSTANCE, PROCESSING_FAILURE = 0x0000, 0x0111, 0x0112, 0x0110


@dataclass(frozen=True)
class Received:
    operation: str
    sop_instance: str
    transfer_syntax: str
    data: bytes


class Ris:
    """A pynetdicom MPPS SCP (see the module docstring)."""

    def __init__(self, aet: str = "RIS", port: int = 0) -> None:
        self.aet = aet
        self.port = port
        self.received: list[Received] = []
        self.instances: dict[str, Dataset] = {}
        self.calling_aets: list[str] = []
        self.silent_creates = 0           # this many N-CREATEs are kept, never answered ...
        self.released = threading.Event()  # ... until this is set (by the test, or stop)
        self._changed = threading.Condition()
        self._server: Any = None

    def start(self) -> Ris:
        ae = AE(ae_title=self.aet)
        ae.add_supported_context(MPPS, [ExplicitVRLittleEndian, "1.2.840.10008.1.2"])
        ae.add_supported_context(Verification)
        ae.dimse_timeout = ae.acse_timeout = ae.network_timeout = 30
        self._server = ae.start_server((LOOPBACK, self.port), block=False, evt_handlers=[
            (evt.EVT_N_CREATE, self._on_create), (evt.EVT_N_SET, self._on_set),
            (evt.EVT_REQUESTED, self._on_rq)])
        self.port = int(self._server.server_address[1])
        return self

    def stop(self) -> None:
        self.released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def reset(self) -> None:
        with self._changed:
            self.received.clear()
            self.instances.clear()
            self.calling_aets.clear()

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the RIS received {len(self.received)} of {count} "
                                       f"messages: {self.received}")
                self._changed.wait(left)
            return list(self.received)

    def _record(self, op: str, uid: str, event: Any, data: Any) -> None:
        raw = data.getvalue() if data is not None else b""
        with self._changed:
            self.received.append(Received(op, uid, str(event.context.transfer_syntax), raw))
            self._changed.notify_all()

    def _on_rq(self, event: Any) -> None:
        self.calling_aets.append(str(event.assoc.requestor.primitive.calling_ae_title).strip())

    def _on_create(self, event: Any) -> tuple[int, Dataset | None]:
        req = event.request
        uid = str(req.AffectedSOPInstanceUID or "") or generate_uid(prefix=None)
        self._record("N-CREATE", uid, event, req.AttributeList)
        if uid in self.instances:
            return DUPLICATE, None
        ds = event.attribute_list
        self.instances[uid] = ds
        if self.silent_creates > 0:          # kept, but the answer never comes in time
            self.silent_creates -= 1
            self.released.wait(30)
        answer = Dataset()
        answer.update(ds)
        if not req.AffectedSOPInstanceUID:
            answer.AffectedSOPInstanceUID = uid
        return SUCCESS, answer

    def _on_set(self, event: Any) -> tuple[int, Dataset | None]:
        req = event.request
        uid = str(req.RequestedSOPInstanceUID)
        self._record("N-SET", uid, event, req.ModificationList)
        held = self.instances.get(uid)
        if held is None:
            return NO_SUCH_INSTANCE, None
        if held.get("PerformedProcedureStepStatus") in ("COMPLETED", "DISCONTINUED"):
            return PROCESSING_FAILURE, None        # F.7.2.2.2: may no longer be updated
        held.update(event.modification_list)
        return SUCCESS, event.modification_list


def mpps_create(uid_seed: int = 1) -> Dataset:
    """An MPPS N-CREATE attribute list (IN PROGRESS), as a modality sends it (F.7.2.1)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Hans"
    ds.PatientID = f"MPPS{uid_seed:04d}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    step = Dataset()
    step.StudyInstanceUID = f"1.2.826.0.1.3680043.10.543.77.{uid_seed}"
    step.AccessionNumber = f"ACC{uid_seed}"
    step.RequestedProcedureID = "RP1"
    step.ScheduledProcedureStepID = "SPS1"
    step.ScheduledProcedureStepDescription = "CT head"
    ds.ScheduledStepAttributesSequence = Sequence([step])
    ds.PerformedProcedureStepID = f"PPS{uid_seed}"
    ds.PerformedStationAETitle = "MODALITY"
    ds.PerformedProcedureStepStartDate = "20240102"
    ds.PerformedProcedureStepStartTime = "101500"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = "CT head"
    ds.Modality = "CT"
    ds.PerformedProcedureStepEndDate = None
    ds.PerformedProcedureStepEndTime = None
    ds.PerformedSeriesSequence = Sequence()
    return ds


def mpps_set(status: str, series: int = 0) -> Dataset:
    """An N-SET modification list: more series while IN PROGRESS, then the final status."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    if status != "IN PROGRESS":
        ds.PerformedProcedureStepEndDate = "20240102"
        ds.PerformedProcedureStepEndTime = "103000"
    items = []
    for k in range(series):
        item = Dataset()
        item.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.543.78.{k}"
        item.PerformingPhysicianName = ""
        item.ProtocolName = "HEAD"
        item.OperatorsName = ""
        item.SeriesDescription = f"series {k}"
        item.RetrieveAETitle = ""
        item.ReferencedImageSequence = Sequence()
        items.append(item)
    ds.PerformedSeriesSequence = Sequence(items)
    return ds


@dataclass
class Answer:
    status: int
    comment: str | None
    affected: str | None
    data: Dataset | None


@dataclass
class Modality:
    """A pynetdicom MPPS SCU (see the module docstring)."""

    aet: str = "MODALITY"
    syntax: str = ExplicitVRLittleEndian
    answers: list[Answer] = field(default_factory=list)

    def report(self, port: int, called: str,
               steps: list[tuple[str, str | None, Dataset]]) -> list[Answer]:
        """``steps``: (operation, instance UID or None, data set), on one association."""
        ae = AE(ae_title=self.aet)
        ae.add_requested_context(MPPS, [self.syntax])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        responses: list[Dataset] = []          # each response's command set, as received

        def on_dimse(event: Any) -> None:
            responses.append(event.message.command_set)

        assoc = ae.associate(LOOPBACK, port, ae_title=called,
                             evt_handlers=[(evt.EVT_DIMSE_RECV, on_dimse)])
        assert assoc.is_established, f"association to {called} at port {port} failed"
        out: list[Answer] = []
        try:
            for operation, uid, ds in steps:
                if operation == "N-CREATE":
                    status, data = assoc.send_n_create(ds, MPPS, uid)
                elif operation == "N-SET":
                    status, data = assoc.send_n_set(ds, MPPS, uid)
                else:
                    status, data = assoc.send_n_get([0x00400252], MPPS, uid)
                assert "Status" in status and responses, f"no response to {operation}"
                command = responses[-1]
                out.append(Answer(int(status.Status), status.get("ErrorComment"),
                                  command.get("AffectedSOPInstanceUID"), data))
        finally:
            assoc.release()
        self.answers.extend(out)
        return out
