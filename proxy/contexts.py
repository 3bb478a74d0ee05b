"""Presentation contexts the proxy accepts from workstations, per route.

Rule 1: accept only what the proxy can serve: Verification, the Q/R models it
        relays (Patient Root, Study Root), and storage SOP classes (C-STORE in,
        and C-STORE sub-operations back to a C-GET requester, with SCP/SCU role
        selection accepted).
Rule 2: transfer syntaxes are accepted as proposed for storage, so pixel data
        passes through in its original encoding — never decoded by the proxy.
Rule 3: Deflated transfer syntaxes are never accepted: inflating is unbounded
        work for a few bytes on the wire (a zlib bomb); peers fall back to an
        uncompressed syntax in the same negotiation.
"""

from __future__ import annotations

from pydicom.uid import (
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPIPHTJ2KReferencedDeflate,
)
from pynetdicom import AllStoragePresentationContexts
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from proxy.config import Config, RouteConfig

# JPIP Referenced Deflate (1.2.840.10008.1.2.4.95) is not in pydicom's list; name it by UID.
DEFLATED = frozenset({DeflatedExplicitVRLittleEndian, JPIPHTJ2KReferencedDeflate,
                      "1.2.840.10008.1.2.4.95"})
QUERY_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
STORAGE_SYNTAXES = [ts for ts in AllTransferSyntaxes if ts not in DEFLATED]

FIND_MODELS = {
    PatientRootQueryRetrieveInformationModelFind: "PATIENT",
    StudyRootQueryRetrieveInformationModelFind: "STUDY",
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


def query_contexts() -> list[PresentationContext]:
    uids = [Verification, *FIND_MODELS, *MOVE_MODELS, *GET_MODELS]
    return [build_context(uid, QUERY_SYNTAXES) for uid in uids]


def storage_contexts() -> list[PresentationContext]:
    """Every storage SOP class, any non-deflated syntax, both roles allowed (C-GET)."""
    out = []
    for cx in AllStoragePresentationContexts:
        context = build_context(cx.abstract_syntax, STORAGE_SYNTAXES)
        context.scu_role = True
        context.scp_role = True
        out.append(context)
    return out


_QUERY = query_contexts()
_STORAGE = storage_contexts()


def contexts_for_route(route: RouteConfig, config: Config) -> list[PresentationContext]:
    """What the acceptor offers on this route (fresh copies: pynetdicom mutates them)."""
    del route, config  # every route serves Q/R and storage today; kept for per-route policy
    return [_copy(cx) for cx in (*_QUERY, *_STORAGE)]


def _copy(cx: PresentationContext) -> PresentationContext:
    new = build_context(cx.abstract_syntax, list(cx.transfer_syntax))
    new.scu_role = cx.scu_role
    new.scp_role = cx.scp_role
    return new
