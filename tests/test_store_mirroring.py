"""proxy.store.mirroring: the A-ASSOCIATE-AC the workstation gets answers each mirrored
context exactly as the archive answered it — every PS3.8 result, the archive's syntax —
read back the way a requestor reads an AC (``negotiation.accepted_contexts``)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)
from pynetdicom.sop_class import (
    CTImageStorage,
    ModalityWorklistInformationFind,
    MRImageStorage,
    Verification,
)

from proxy.contexts import QUERY_SOP_CLASSES
from proxy.dicom.items import PresentationContextRQ, RoleSelection, UserInformation
from proxy.dicom.negotiation import Offer, Policy, accepted_contexts, negotiate
from proxy.dicom.pdu import AssociateAC, AssociateRQ
from proxy.store import mirroring

EXPL, IMPL, BIG, JPEG, RLE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                              ExplicitVRBigEndian, JPEGBaseline8Bit, RLELossless)
# What a route offers before mirroring: storage in the two little-endian syntaxes only.
ROUTE = Policy({Verification: Offer((IMPL,)),
                CTImageStorage: Offer((EXPL, IMPL), roles=(True, True)),
                MRImageStorage: Offer((EXPL, IMPL), roles=(True, True))})


def proposal(*contexts: tuple[str, list[str]],
             roles: tuple[RoleSelection, ...] = ()) -> AssociateRQ:
    return AssociateRQ("RELAY", "WS", tuple(
        PresentationContextRQ(2 * i + 1, abstract, tuple(syntaxes))
        for i, (abstract, syntaxes) in enumerate(contexts)), UserInformation(16384, "1.2",
                                                                             roles=roles))


def downstream(rq: AssociateRQ, accepted: Mapping[int, str],
               refused: Mapping[int, int]) -> dict[int, tuple[int, str | None]]:
    """Index -> (result, accepted syntax) as the workstation reads the mirrored AC."""
    ac = negotiate(rq, ROUTE)
    assert isinstance(ac, AssociateAC)
    upstream = mirroring.to_mirror(rq.contexts)
    mirrored = mirroring.mirrored(ac, upstream, accepted, refused)
    taken = accepted_contexts(rq, mirrored)
    results = {cx.context_id: cx.result for cx in mirrored.contexts}
    return {i: (results[2 * i + 1], taken[2 * i + 1].transfer_syntax
                if 2 * i + 1 in taken else None) for i in range(len(rq.contexts))}


CASES = {
    # the archive picks its own preference inside one context, not the proposer's first
    "archive-choice-within-a-context": (
        [(CTImageStorage, [EXPL, IMPL])], {0: IMPL}, {}),
    # two contexts of one SOP class, each answered with a different syntax — one the
    # route's own policy would not even have offered (JPEG)
    "one-syntax-per-context": (
        [(CTImageStorage, [JPEG]), (CTImageStorage, [EXPL, IMPL]), (CTImageStorage, [IMPL])],
        {0: JPEG, 1: EXPL, 2: IMPL}, {}),
    "chosen-before-offered": (
        [(MRImageStorage, [EXPL, BIG]), (MRImageStorage, [BIG, IMPL]), (MRImageStorage, [IMPL])],
        {0: BIG, 1: IMPL, 2: IMPL}, {}),
    # the same syntaxes offered twice, answered differently (pynetdicom could not say this)
    "archive-contradicting-itself": (
        [(CTImageStorage, [EXPL, IMPL]), (CTImageStorage, [EXPL, IMPL])], {0: EXPL, 1: IMPL}, {}),
    "refused-0x03-next-to-accepted": (
        [(CTImageStorage, [JPEG]), (CTImageStorage, [EXPL])], {1: EXPL}, {0: 0x03}),
    "refused-0x04-alone": (
        [(CTImageStorage, [RLE]), (MRImageStorage, [EXPL])], {1: EXPL}, {0: 0x04}),
    "refused-0x04-next-to-accepted": (
        [(CTImageStorage, [RLE]), (CTImageStorage, [EXPL])], {1: EXPL}, {0: 0x04}),
    # user rejection and no reason: reasons pynetdicom's acceptor cannot give
    "refused-0x01": ([(CTImageStorage, [EXPL])], {}, {0: 0x01}),
    "refused-0x02-next-to-accepted": (
        [(CTImageStorage, [EXPL]), (MRImageStorage, [EXPL])], {1: EXPL}, {0: 0x02}),
}


@pytest.mark.parametrize(("contexts", "accepted", "refused"), list(CASES.values()),
                         ids=list(CASES))
def test_the_workstation_gets_the_archives_answer_for_every_context(
        contexts: list[tuple[str, list[str]]], accepted: dict[int, str],
        refused: dict[int, int]) -> None:
    answers = downstream(proposal(*contexts), accepted, refused)
    expected = {i: (0, accepted[i]) if i in accepted else (refused[i], None)
                for i in range(len(contexts))}
    assert answers == expected


def test_the_proxys_own_contexts_keep_the_routes_answer() -> None:
    rq = proposal((Verification, [IMPL]), (CTImageStorage, [EXPL]))
    answers = downstream(rq, {}, {0: 0x03})      # index 0 of the mirrored list: CT
    assert answers == {0: (0, IMPL), 1: (0x03, None)}


def test_only_storage_and_unknown_sop_classes_go_to_the_archive() -> None:
    rq = proposal((Verification, [IMPL]), (CTImageStorage, [EXPL]),
                  ("1.2.3.4.5.6", [EXPL]), (ModalityWorklistInformationFind, [EXPL]),
                  *[(uid, [EXPL]) for uid in QUERY_SOP_CLASSES])
    assert [cx.abstract_syntax for cx in mirroring.to_mirror(rq.contexts)] == [
        CTImageStorage, "1.2.3.4.5.6"]


def test_classes_a_c_get_workstation_wants_to_receive_are_not_mirrored() -> None:
    """A C-GET workstation proposes storage with the SCP role only (PS3.7 D.3.3.4): the
    proxy sends it those sub-operations itself, so the store_to archive is not asked."""
    roles = (RoleSelection(CTImageStorage, False, True),
             RoleSelection(MRImageStorage, True, True))
    receiving = mirroring.receiving_classes(roles)
    assert receiving == {CTImageStorage}
    rq = proposal((CTImageStorage, [EXPL]), (MRImageStorage, [EXPL]), roles=roles)
    assert [cx.abstract_syntax for cx in mirroring.to_mirror(rq.contexts, receiving)] == [
        MRImageStorage]
