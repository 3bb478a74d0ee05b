"""Storage Commitment (Push Model, PS3.4 J.3): the proxy's pure decisions.

Rule 1: an N-ACTION is served only for the Storage Commitment Push Model SOP class
        (else 0x0118 No such SOP class), its well-known instance (else 0x0112 No such SOP
        Instance, J.3.5) and Action Type 1 (else 0x0123 No such action type, J.3.2.1);
        its Action Information needs a Transaction UID and a Referenced SOP Sequence whose
        items each name a SOP class and instance (else 0x0120 Missing attribute). An
        empty sequence is the archive's to judge (Orthanc reports it, all committed).
Rule 2: a commitment goes to its archive only when none of the instances it references
        is still pending for that archive in the spool (``ready``): asked earlier, the
        archive would rightly report them missing.
Rule 3: the archive's answer to the forwarded N-ACTION decides like an MPPS message's
        (``policy.verdict``): success or warning → forwarded; no answer or a resource
        shortage → retried; any other failure → dead letter.
Rule 4: an N-EVENT-REPORT is taken for Event Type 1 (all committed) or 2 (failures
        exist) only (else 0x0113 No such event type), with a Transaction UID (else 0x0120)
        that names a pending commitment (else 0x0115 Invalid argument value: the proxy
        never asked for it).
Rule 5: the report goes to the modality found by its calling AE title in
        ``[destinations]`` (``target``); none there: dead letter, naming the AE to add.
Rule 6: a commitment forwarded more than ``[spool] commitment_overdue`` seconds after its
        N-ACTION came and still without a report is overdue (``overdue``): said once, as a
        warning, since the modality is waiting for it and only a person can tell why.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from pydicom import Dataset

from proxy.config import Config, DestinationConfig
from proxy.contexts import STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
from proxy.status import Status
from proxy.workflow.policy import Verdict, verdict

__all__ = ["STORAGE_COMMITMENT", "STORAGE_COMMITMENT_INSTANCE", "Action", "Refusal",
           "check_action", "check_report", "forward_verdict", "overdue", "read_action",
           "ready", "target"]

REQUEST_COMMIT = 1                              # Action Type ID (J.3.2.1)
ALL_COMMITTED, FAILURES_EXIST = 1, 2            # Event Type ID (J.3.3.1)


@dataclass(frozen=True)
class Refusal:
    """Why a request is not served: the status and its Error Comment (<= 64 chars)."""

    status: int
    comment: str


@dataclass(frozen=True)
class Action:
    """What the proxy needs of an N-ACTION's Action Information."""

    transaction_uid: str
    instances: tuple[str, ...]                  # Referenced SOP Instance UIDs, in order


def overdue(forwarded: Iterable[tuple[str, float]], now: float, after: float,
            said: Collection[str]) -> list[str]:
    """Rule 6: of (id, N-ACTION received at) forwarded without a report, the ids overdue
    at ``now`` and not said before."""
    return [item_id for item_id, received in forwarded
            if now - received > after and item_id not in said]


def check_action(sop_class: str, sop_instance: str, action_type: object) -> Refusal | None:
    """Rule 1: the N-ACTION command's fields."""
    if sop_class != STORAGE_COMMITMENT:
        return Refusal(Status.NO_SUCH_SOP_CLASS, "only Storage Commitment Push Model")
    if sop_instance != STORAGE_COMMITMENT_INSTANCE:
        return Refusal(Status.NO_SUCH_SOP_INSTANCE, "not the well-known instance")
    if action_type != REQUEST_COMMIT:
        return Refusal(Status.NO_SUCH_ACTION_TYPE, "Action Type ID must be 1")
    return None


def read_action(ds: Dataset) -> Action | Refusal:
    """Rule 1: the Action Information."""
    uid = str(ds.get("TransactionUID", "") or "").strip()
    if not uid:
        return Refusal(Status.MISSING_ATTRIBUTE, "no Transaction UID")
    items = ds.get("ReferencedSOPSequence")
    if items is None:
        return Refusal(Status.MISSING_ATTRIBUTE, "no Referenced SOP Sequence")
    instances: list[str] = []
    for item in items:
        instance = str(item.get("ReferencedSOPInstanceUID", "") or "").strip()
        if not instance or not str(item.get("ReferencedSOPClassUID", "") or "").strip():
            return Refusal(Status.MISSING_ATTRIBUTE, "a Referenced SOP item without UIDs")
        instances.append(instance)
    return Action(uid, tuple(instances))


def ready(instances: Iterable[str], held: Collection[str]) -> bool:
    """Rule 2: whether a commitment may go to its archive, ``held`` being the instances
    the spool still holds pending for that archive."""
    return not any(uid in held for uid in instances)


def forward_verdict(status: int | None) -> Verdict:
    """Rule 3."""
    return verdict("N-ACTION", status, False)


def check_report(event_type: object, transaction_uid: str, known: bool) -> Refusal | None:
    """Rule 4: an archive's N-EVENT-REPORT."""
    if event_type not in (ALL_COMMITTED, FAILURES_EXIST):
        return Refusal(Status.NO_SUCH_EVENT_TYPE, "Event Type ID must be 1 or 2")
    if not transaction_uid:
        return Refusal(Status.MISSING_ATTRIBUTE, "no Transaction UID")
    if not known:
        return Refusal(Status.INVALID_ARGUMENT_VALUE, "unknown Transaction UID")
    return None


def target(config: Config, modality: str) -> DestinationConfig | None:
    """Rule 5: where the report for ``modality`` (a calling AE title) goes."""
    return config.destination_by_ae(modality)
