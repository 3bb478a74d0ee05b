"""Pull a retrieve's instances from the archive(s) the survey found: C-GET or C-MOVE-to-proxy.

Rule 1: what to negotiate and where the instances are comes from ``survey``; an
        archive whose survey failed is still tried.
Rule 2 (order, "trying each"): archives in the given order; an archive is pulled from
        only while it holds an expected instance not received yet, so in a
        federation the next archive fills in what the previous one could not deliver.
        With no survey at all (every C-FIND failed) the archives are tried in order
        until one answers Success.
Rule 3 (``retrieve = "get"``): C-GET over the proxy's own association, with the storage
        SCP role on the contexts the receiver decides (``sopclasses.for_receiver``: the
        instance's own syntax where the receiver takes it, the receiver's syntaxes where
        it does not, so the archive converts as it would directly); the archive never
        connects to anyone. That association is a lean one (``getter``, ``proxy.ul``):
        the instances' bytes are the bulk of the proxy's work.
Rule 3b (rescue): instances the archive failed to send that way (it could not convert
        them) are asked for once more, by SOP Instance UID at IMAGE level, in their own
        syntaxes (``sopclasses.originals``); the sink converts them (``transcode``) and
        the operation line counts them as ``transcoded``.
Rule 4 (``retrieve = "move"``): C-MOVE to the proxy's own AE title with a Message ID
        unique in the proxy; the archive's C-STOREs arrive on the listener and are
        matched back (``inbound``) by that ID and the Move Originator, the calling AE
        title of the C-MOVE (the workstation's on a ``pass_calling_ae`` route). Exactly
        one C-MOVE per archive pulled from (an archive makes one job of each); after
        its final response the instances it reports Completed/Warning are waited for
        up to the archive's ``timeout`` (an archive running C-MOVEs as jobs answers
        before it sends, inbound Rule 4).
Rule 5: every request to an archive is one ``upstream`` event (``Services.upstream_call``);
        received instances go to the ``InstanceBuffer``, never to memory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import StoragePresentationContexts
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from proxy import rawtext
from proxy.cancel import CancelToken
from proxy.contexts import FIND_MODEL_FOR, GET_MODELS, MOVE_MODELS
from proxy.retrieve import getter, sopclasses
from proxy.retrieve.buffer import InstanceBuffer
from proxy.retrieve.sopclasses import Accepted, Instance
from proxy.retrieve.survey import Survey, list_instances
from proxy.services import Services
from proxy.session import Request
from proxy.status import PENDING, Status, category
from proxy.upstream import UpstreamError

_RETRIEVE_MODELS = {
    ("PATIENT", "get"): PatientRootQueryRetrieveInformationModelGet,
    ("PATIENT", "move"): PatientRootQueryRetrieveInformationModelMove,
    ("STUDY", "get"): StudyRootQueryRetrieveInformationModelGet,
    ("STUDY", "move"): StudyRootQueryRetrieveInformationModelMove,
}
_LEVEL = 0x00080052          # Query/Retrieve Level
Counts = dict[str, int]      # a C-GET/C-MOVE response's sub-operation counts, by keyword


@dataclass
class Pulled:
    """How one request to one archive went."""

    archive: str
    operation: str
    status: int | None
    received: int
    error: str | None = None
    hint: str | None = None


class Puller:
    """Runs the pulls on one thread, feeding ``buffer``; ends with ``buffer.finish()``."""

    def __init__(self, services: Services, event: Request, found: Survey, order: list[str],
                 identifier: Dataset, model: str, buffer: InstanceBuffer, token: CancelToken,
                 phi: list[str], on_total: Callable[[int], None],
                 accepted: Accepted | None = None) -> None:
        self.services = services
        self.model = model
        self.accepted = accepted or {}        # what the receiver took, per SOP class
        self.event = event
        self.survey = found
        self.order = order
        self.identifier = identifier
        self.root = MOVE_MODELS.get(model) or GET_MODELS.get(model) or "STUDY"
        self.buffer = buffer
        self.token = token
        self.phi = phi
        self.on_total = on_total
        self.outcomes: list[Pulled] = []
        # Chosen now, on the workstation's thread: its calling AE title (pass_calling_ae).
        self.clients = {name: services.archive(name, event) for name in order}
        self._thread = threading.Thread(target=self._run, name="retrieve-pull", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            for name in self.order:
                if self.token.is_set:
                    break
                if not self._worth(name):
                    continue
                outcome = self._pull(name)
                self.outcomes.append(outcome)
                if outcome.error is not None and not self.token.is_set:
                    self._rescue(name)
                if not self.survey.instances and outcome.status == Status.SUCCESS:
                    break                    # nothing surveyed: the first Success answers
        finally:
            self.buffer.finish()

    def _rescue(self, name: str) -> None:
        """Rule 3b: ask again, in their own syntaxes, for what the archive did not send."""
        if self.services.config.archives[name].retrieve != "get" or not self.accepted:
            return
        held = self.survey.holdings.get(name)
        if self.survey.fast or held is None:
            level = next(iter(rawtext.text_values(self.identifier, _LEVEL)), "STUDY").upper()
            listed = list_instances(self.services, self.event, [name], self.identifier,
                                    FIND_MODEL_FOR[self.model], self.token, self.phi, level)
            held = listed.holdings.get(name, [])
        missing = [inst for inst in held if not self.buffer.has(inst.uid)
                   and inst.study and inst.series and self.accepted.get(inst.sop_class)]
        series: dict[tuple[str, str], list[Instance]] = {}
        for inst in missing:
            series.setdefault((inst.study, inst.series), []).append(inst)
        for (study, series_uid), instances in series.items():
            if self.token.is_set:
                return
            self.outcomes.append(self._pull(name, _image_identifier(study, series_uid,
                                                                    instances), instances))

    def _worth(self, name: str) -> bool:
        if self.survey.fast:                 # one archive holds the study (survey Rule 1)
            return name in self.survey.holdings and not self.outcomes
        held = self.survey.holdings.get(name)
        if held is None:                     # its survey failed: it may hold the rest
            return not self.survey.instances or any(
                not self.buffer.has(uid) for uid in self.survey.instances)
        return any(not self.buffer.has(inst.uid) for inst in held)

    def _pull(self, name: str, rescue: Dataset | None = None,
              originals: list[Instance] | None = None) -> Pulled:
        mode = self.services.config.archives[name].retrieve
        model = _RETRIEVE_MODELS[("STUDY" if rescue is not None else self.root, mode)]
        operation = "C-GET" if mode == "get" else "C-MOVE"
        before = self.buffer.received
        final: int | None = None
        try:
            with self.services.upstream_call(name, operation, self.event, self.phi) as call:
                responses = (self._get(name, model, rescue, originals) if mode == "get"
                             else self._move(name, model))
                last: Counts = {}
                for code, counts in responses:
                    last = counts
                    if code in PENDING:
                        self.on_total(sum(counts.values()))
                    else:
                        final = code
                call["status"] = final
                call["details"] = {
                    "received": self.buffer.received - before,
                    "completed": last.get("NumberOfCompletedSuboperations", 0),
                    "failed": last.get("NumberOfFailedSuboperations", 0),
                    "warning": last.get("NumberOfWarningSuboperations", 0)}
                hint = self._hint(name, final, self.buffer.received - before)
                if hint:
                    call["hint"] = hint
        except UpstreamError as exc:
            return Pulled(name, operation, None, self.buffer.received - before, exc.reason,
                          exc.hint)
        error = None if final in (Status.SUCCESS, Status.CANCEL) else (
            f"{operation} answered 0x{final or 0:04X}")
        received = self.buffer.received - before
        return Pulled(name, operation, final, received, error,
                      self._hint(name, final, received))

    def _get(self, name: str, model: str, rescue: Dataset | None = None,
             originals: list[Instance] | None = None) -> Iterator[tuple[int, Counts]]:
        limit = sopclasses.MAX_CONTEXTS - 1
        held = self.survey.holdings.get(name) or self.survey.described()
        if originals:
            contexts = sopclasses.originals(originals, self.accepted, limit)
        elif held and all(inst.sop_class for inst in held):
            contexts = (sopclasses.for_receiver(held, self.accepted, limit) if self.accepted
                        else sopclasses.propose(held, limit))
        elif self.accepted:     # classes unknown: whatever the receiver takes, as it takes it
            contexts = sopclasses.for_receiver(
                [Instance("", sop_class) for sop_class in self.accepted], self.accepted, limit)
        else:   # blind or unknown classes: the common storage classes; the archive converts
            contexts = [build_context(cx.abstract_syntax, [ExplicitVRLittleEndian,
                                                           ImplicitVRLittleEndian])
                        for cx in StoragePresentationContexts[:limit]]
        return getter.get(self.clients[name], rescue if rescue is not None else self.identifier,
                          model, contexts, sopclasses.roles(contexts), self.buffer, name,
                          self.token)

    def _move(self, name: str, model: str) -> Iterator[tuple[int, Counts]]:
        registry = self.services.plugins.retrieve_inbound
        assert registry is not None         # proxy.retrieve.install set it
        archive = self.services.config.archives[name]
        held = self.survey.holdings.get(name) or []
        client = self.clients[name]
        # The C-MOVE is the workstation's (its calling AE title with pass_calling_ae: the
        # archive's Move Originator); the Move Destination is always the proxy's own title.
        exp = registry.open(name, archive.ae_title, client.peer.calling_ae,
                            {inst.uid for inst in held}, lambda e: self.buffer.accept(e, name),
                            self.accepted)
        try:
            final: tuple[int, Counts] | None = None
            for code, rsp in client.move(
                    self.identifier, model, self.services.config.proxy.ae_title,
                    exp.message_id, self.token):
                if code in PENDING:
                    yield code, getter.counts_of(rsp)
                else:
                    final = code, getter.counts_of(rsp)
            if final is not None:        # the association is released; now the stragglers
                sent = (final[1].get("NumberOfCompletedSuboperations", 0)
                        + final[1].get("NumberOfWarningSuboperations", 0))
                registry.wait_for(exp, sent, archive.timeout, lambda: self.token.is_set)
                yield final
        finally:
            registry.close(exp)

    def _hint(self, name: str, final: int | None, received: int) -> str | None:
        archive = self.services.config.archives[name]
        failed = final is not None and category(final) == "failure"
        if archive.retrieve == "move" and failed and not received:
            p = self.services.config.proxy
            return (f"archive {archive.ae_title} sent nothing to the proxy: it must know "
                    f"{p.ae_title} (the proxy's address, port {p.port}) as a move destination "
                    f"in its modalities, or set archives.{name}.retrieve = \"get\"")
        return None


def _image_identifier(study: str, series: str, instances: list[Instance]) -> Dataset:
    """A Study Root IMAGE-level identifier for ``instances`` of one series (PS3.4 C.4.3.1.3)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    uids = [inst.uid for inst in instances]
    ds.SOPInstanceUID = uids if len(uids) > 1 else uids[0]
    return ds
