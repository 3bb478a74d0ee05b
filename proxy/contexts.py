"""Presentation contexts the proxy accepts from workstations, per route.

Rule 1: accept only what the proxy can serve: Verification, the Q/R models it
        relays (Patient Root, Study Root), and storage SOP classes (C-STORE in,
        and C-STORE sub-operations back to a C-GET requester, with SCP/SCU role
        selection accepted).
Rule 2: transfer syntaxes are accepted as proposed for storage, so pixel data
        passes through in its original encoding — never decoded by the proxy.
        When one context offers several, the peer's own order decides
        (``in_requestor_order``): pynetdicom would pick by the acceptor's list,
        which starts with Implicit VR Little Endian.
Rule 3: Deflated transfer syntaxes are never accepted: inflating is unbounded
        work for a few bytes on the wire (a zlib bomb); peers fall back to an
        uncompressed syntax in the same negotiation.
Rule 4: an archive delivering a move-mode retrieve is accepted in what the retrieve's
        receiver accepted (``contexts_for_inbound``), as C-GET asks (``proxy.retrieve.
        sopclasses.for_receiver``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence

from pydicom.uid import (
    UID,
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
_ALL = (*_QUERY, *_STORAGE)
_INBOUND = (build_context(Verification), *_STORAGE)


def contexts_for_route(route: RouteConfig, config: Config) -> list[PresentationContext]:
    """What the acceptor offers on this route.

    The same context objects serve every association: pynetdicom's acceptor only
    reads them (``negotiate_as_acceptor`` builds new result contexts), and
    building 177 fresh ones cost ~190 ms of CPU per association.
    """
    del route, config  # every route serves Q/R and storage today; kept for per-route policy
    return list(_ALL)


def contexts_for_inbound(
        receivers: Mapping[str, Sequence[str]] | None = None) -> list[PresentationContext]:
    """What an archive delivering C-MOVE sub-operations to the proxy's own AE title gets:
    Verification and storage (any non-deflated syntax, so instances keep their encoding).
    Shared, read-only objects, as ``contexts_for_route``'s.

    ``receivers``: per SOP class, the syntaxes the receivers of that archive's retrieves
    accepted (Rule 4): those classes are accepted in those syntaxes only, so the archive
    converts for the receiver as it would when sending to it directly."""
    if not receivers:
        return list(_INBOUND)
    out = []
    for cx in _INBOUND:
        taken = receivers.get(str(cx.abstract_syntax))
        syntaxes = [UID(ts) for ts in taken or () if ts not in DEFLATED]
        out.append(_with_syntaxes(cx, syntaxes) if syntaxes else cx)
    return out


def in_requestor_order(contexts: list[PresentationContext],
                       proposed: Iterable[PresentationContext]) -> list[PresentationContext]:
    """``contexts`` with each transfer syntax list re-ordered as the requestor listed it.

    pynetdicom accepts, per proposed context, the first of the *acceptor's* syntaxes
    the requestor offered; a modality or a C-GET workstation lists the syntax it
    prefers (normally the one its data is in) first, so that one must win (Rule 2).
    """
    preferred: dict[str, list[str]] = {}
    for cx in proposed:
        preferred.setdefault(str(cx.abstract_syntax), [str(ts) for ts in cx.transfer_syntax])
    out = []
    for cx in contexts:
        wanted = preferred.get(str(cx.abstract_syntax))
        if wanted and len(cx.transfer_syntax) > 1:
            ours = cx.transfer_syntax
            first = [ts for ts in ours if ts in wanted]
            first.sort(key=wanted.index)
            cx = _with_syntaxes(cx, first + [ts for ts in ours if ts not in wanted])
        out.append(cx)
    return out


def _with_syntaxes(cx: PresentationContext, syntaxes: list[UID]) -> PresentationContext:
    """A copy of ``cx`` (roles included) with ``syntaxes``, already-validated UIDs.

    ``build_context`` validates every UID again: ~50 ms per association for a C-GET
    workstation's ~120 proposed storage classes x 37 syntaxes. The copy sets
    pynetdicom 3.0's list attribute directly instead.
    """
    new = copy.copy(cx)
    new._transfer_syntax = list(syntaxes)
    return new
