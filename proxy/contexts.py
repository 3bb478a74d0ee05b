"""Presentation contexts the proxy accepts from workstations, per route: the offers of
its negotiation policy (``proxy.dicom.negotiation.Offer``).

Rule 1: accept only what the proxy can serve: Verification, the Q/R models it
        relays (Patient Root, Study Root), Modality Worklist C-FIND, and storage SOP
        classes (C-STORE in, and C-STORE sub-operations back to a C-GET requester, with
        SCP/SCU role selection accepted).
Rule 2: transfer syntaxes are accepted as proposed for storage, so pixel data
        passes through in its original encoding — never decoded by the proxy.
        When one context offers several, the peer's own order decides
        (``Offer.requestor_order``): a modality or a C-GET workstation lists the syntax
        it prefers (normally the one its data is in) first.
Rule 3: Deflated transfer syntaxes are never accepted: inflating is unbounded
        work for a few bytes on the wire (a zlib bomb); peers fall back to an
        uncompressed syntax in the same negotiation.
Rule 4: an archive delivering a move-mode retrieve is accepted in what the retrieve's
        receiver accepted (``contexts_for_inbound``), as C-GET asks (``proxy.retrieve.
        sopclasses.for_receiver``).
Rule 5: a route with ``mpps_to`` also accepts Modality Performed Procedure Step
        (N-CREATE/N-SET, PS3.4 F.7) in Explicit/Implicit VR Little Endian, the syntaxes
        a RIS takes; a route without it does not, so a modality learns at negotiation
        that MPPS is not served there.
Rule 6: a route that asks an archive for Storage Commitment (``commit_to``, or
        ``store_to``: ``RouteConfig.commitment_archive``) accepts the Storage Commitment
        Push Model (PS3.4 J.3) in Explicit/Implicit VR Little Endian, with the role
        selection a modality proposes (it may take the SCP role to hear the
        N-EVENT-REPORT on its own association); the proxy's own AE title accepts it from
        archives with the archive in the SCP role (its N-EVENT-REPORT on a new
        association, PS3.4 J.3.3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydicom.uid import (
    AllTransferSyntaxes,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AllStoragePresentationContexts
from pynetdicom.sop_class import (
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from proxy.config import Config, RouteConfig
from proxy.dicom.negotiation import DEFLATED, Offer

__all__ = ["DEFLATED", "FIND_MODELS", "FIND_MODEL_FOR", "GET_MODELS", "MOVE_MODELS",
           "MPPS_SOP_CLASS", "MPPS_SYNTAXES", "QUERY_SOP_CLASSES", "STORAGE_COMMITMENT",
           "STORAGE_COMMITMENT_INSTANCE", "offers_for_inbound", "offers_for_route"]

QUERY_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)
STORAGE_SYNTAXES = tuple(str(ts) for ts in AllTransferSyntaxes if ts not in DEFLATED)

FIND_MODELS = {
    PatientRootQueryRetrieveInformationModelFind: "PATIENT",
    StudyRootQueryRetrieveInformationModelFind: "STUDY",
    ModalityWorklistInformationFind: "WORKLIST",     # no Query/Retrieve Level (PS3.4 K.6)
}
MOVE_MODELS = {
    PatientRootQueryRetrieveInformationModelMove: "PATIENT",
    StudyRootQueryRetrieveInformationModelMove: "STUDY",
}
GET_MODELS = {
    PatientRootQueryRetrieveInformationModelGet: "PATIENT",
    StudyRootQueryRetrieveInformationModelGet: "STUDY",
}
# The FIND model that answers for each MOVE/GET model (to count or locate instances).
FIND_MODEL_FOR = {
    PatientRootQueryRetrieveInformationModelMove: PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet: PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove: StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet: StudyRootQueryRetrieveInformationModelFind,
}
QUERY_SOP_CLASSES = (Verification, *FIND_MODELS, *MOVE_MODELS, *GET_MODELS)
STORAGE_SOP_CLASSES = tuple(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)

_QUERY = {uid: Offer(QUERY_SYNTAXES, requestor_order=True) for uid in QUERY_SOP_CLASSES}
_STORAGE_OFFER = Offer(STORAGE_SYNTAXES, requestor_order=True, roles=(True, True))
_STORAGE = dict.fromkeys(STORAGE_SOP_CLASSES, _STORAGE_OFFER)
_ALL: Mapping[str, Offer] = {**_QUERY, **_STORAGE}
MPPS_SOP_CLASS = str(ModalityPerformedProcedureStep)      # 1.2.840.10008.3.1.2.3.3
MPPS_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
STORAGE_COMMITMENT = str(StorageCommitmentPushModel)       # 1.2.840.10008.1.20.1
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"     # its well-known instance (J.3.5)
_MPPS = {MPPS_SOP_CLASS: Offer(MPPS_SYNTAXES, requestor_order=True)}
_COMMITMENT = {STORAGE_COMMITMENT: Offer(MPPS_SYNTAXES, requestor_order=True,
                                         roles=(True, True))}
_ROUTE_OFFERS: Mapping[tuple[bool, bool], Mapping[str, Offer]] = {
    (mpps, commit): {**_ALL, **(_MPPS if mpps else {}), **(_COMMITMENT if commit else {})}
    for mpps in (False, True) for commit in (False, True)}
_INBOUND: Mapping[str, Offer] = {
    Verification: Offer(QUERY_SYNTAXES, requestor_order=True), **_STORAGE,
    # Explicit VR first, whatever the archive's order: what a modality takes by
    # preference, so the report usually reaches it as the archive's bytes (Rule 6).
    STORAGE_COMMITMENT: Offer(MPPS_SYNTAXES, roles=(False, True))}


def offers_for_route(route: RouteConfig, config: Config) -> Mapping[str, Offer]:
    """What the acceptor offers on this route: Q/R and storage (Rules 1-3), MPPS when it
    has ``mpps_to`` (Rule 5), Storage Commitment when it has an archive for it (Rule 6);
    shared."""
    del config
    return _ROUTE_OFFERS[bool(route.mpps_to), route.commitment_archive is not None]


def offers_for_inbound(
        receivers: Mapping[str, Sequence[str]] | None = None) -> Mapping[str, Offer]:
    """What an archive delivering C-MOVE sub-operations to the proxy's own AE title gets:
    Verification and storage (any non-deflated syntax, so instances keep their encoding),
    and Storage Commitment reports (Rule 6).

    ``receivers``: per SOP class, the syntaxes the receivers of that archive's retrieves
    accepted (Rule 4): those classes are accepted in those syntaxes only, so the archive
    converts for the receiver as it would when sending to it directly."""
    if not receivers:
        return _INBOUND
    out = dict(_INBOUND)
    for uid, taken in receivers.items():
        syntaxes = tuple(str(ts) for ts in taken if ts not in DEFLATED)
        if syntaxes and uid in out:
            out[uid] = Offer(syntaxes, requestor_order=True, roles=(True, True))
    return out
