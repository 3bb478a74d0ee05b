"""proxy.store.mirroring: what pynetdicom's acceptor answers with the mirrored contexts is what
the archive answered, context by context (checked with pynetdicom's own negotiation)."""

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
from pynetdicom.presentation import PresentationContext, build_context, negotiate_as_acceptor
from pynetdicom.sop_class import (
    CTImageStorage,
    ModalityWorklistInformationFind,
    MRImageStorage,
    Verification,
)

from proxy.contexts import query_contexts
from proxy.store import mirroring

EXPL, IMPL, BIG, JPEG, RLE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                              ExplicitVRBigEndian, JPEGBaseline8Bit, RLELossless)


def proposal(*contexts: tuple[str, list[str]]) -> list[PresentationContext]:
    out = []
    for i, (abstract, syntaxes) in enumerate(contexts):
        cx = build_context(abstract, syntaxes)
        cx.context_id = 2 * i + 1
        out.append(cx)
    return out


def downstream(proposed: list[PresentationContext], accepted: Mapping[int, str],
               refused: Mapping[int, int]) -> tuple[dict[int, tuple[int, str | None]], bool]:
    """Index -> (result, accepted syntax) as pynetdicom answers the workstation."""
    plan = mirroring.mirrored(proposed, accepted, refused, [])
    for i in plan.hide:
        proposed[i].abstract_syntax = mirroring.HIDDEN_ABSTRACT_SYNTAX
    result, _roles = negotiate_as_acceptor(proposed, plan.contexts)
    by_id = {cx.context_id: cx for cx in result}
    return ({i: (by_id[2 * i + 1].result,
                 str(by_id[2 * i + 1].transfer_syntax[0]) if by_id[2 * i + 1].result == 0
                 else None) for i in range(len(proposed))}, plan.exact)


CASES = {
    # the archive picks its own preference inside one context, not the proposer's first
    "archive-choice-within-a-context": (
        [(CTImageStorage, [EXPL, IMPL])], {0: IMPL}, {}),
    # two contexts of one SOP class, each answered with a different syntax
    "one-syntax-per-context": (
        [(CTImageStorage, [JPEG]), (CTImageStorage, [EXPL, IMPL]), (CTImageStorage, [IMPL])],
        {0: JPEG, 1: EXPL, 2: IMPL}, {}),
    # orders that only a topological sort gets right
    "chosen-before-offered": (
        [(MRImageStorage, [EXPL, BIG]), (MRImageStorage, [BIG, IMPL]), (MRImageStorage, [IMPL])],
        {0: BIG, 1: IMPL, 2: IMPL}, {}),
    # refused as "abstract syntax not supported" while another context of it is accepted
    "refused-0x03-next-to-accepted": (
        [(CTImageStorage, [JPEG]), (CTImageStorage, [EXPL])], {1: EXPL}, {0: 0x03}),
    # refused as "transfer syntaxes not supported", nothing of the SOP class accepted
    "refused-0x04-alone": (
        [(CTImageStorage, [RLE]), (MRImageStorage, [EXPL])], {1: EXPL}, {0: 0x04}),
    "refused-0x04-next-to-accepted": (
        [(CTImageStorage, [RLE]), (CTImageStorage, [EXPL])], {1: EXPL}, {0: 0x04}),
    "refused-0x03-alone": (
        [(CTImageStorage, [EXPL]), (MRImageStorage, [EXPL])], {1: EXPL}, {0: 0x03}),
}


@pytest.mark.parametrize(("contexts", "accepted", "refused"), list(CASES.values()),
                         ids=list(CASES))
def test_the_workstation_gets_the_archives_answer_for_every_context(
        contexts: list[tuple[str, list[str]]], accepted: dict[int, str],
        refused: dict[int, int]) -> None:
    answers, exact = downstream(proposal(*contexts), accepted, refused)
    expected = {i: (0, accepted[i]) if i in accepted else (refused[i], None)
                for i in range(len(contexts))}
    assert answers == expected
    assert exact


def test_an_archive_contradicting_itself_is_flagged_not_exact() -> None:
    # Same two syntaxes offered twice, answered differently: no single order satisfies both.
    _answers, exact = downstream(proposal((CTImageStorage, [EXPL, IMPL]),
                                          (CTImageStorage, [EXPL, IMPL])), {0: EXPL, 1: IMPL}, {})
    assert not exact


def test_reasons_pynetdicom_cannot_give_are_flagged_not_exact() -> None:
    answers, exact = downstream(proposal((CTImageStorage, [EXPL])), {}, {0: 0x01})
    assert answers == {0: (0x03, None)} and not exact


def test_only_storage_and_unknown_sop_classes_go_to_the_archive() -> None:
    proposed = proposal((Verification, [IMPL]), (CTImageStorage, [EXPL]),
                        ("1.2.3.4.5.6", [EXPL]), (ModalityWorklistInformationFind, [EXPL]),
                        *[(str(cx.abstract_syntax), [EXPL]) for cx in query_contexts()])
    assert [str(cx.abstract_syntax) for cx in mirroring.to_mirror(proposed)] == [
        CTImageStorage, "1.2.3.4.5.6"]


def test_classes_a_c_get_workstation_wants_to_receive_are_not_mirrored() -> None:
    """A C-GET workstation proposes storage with the SCP role only (PS3.7 D.3.3.4): the
    proxy sends it those sub-operations itself, so the store_to archive is not asked."""
    from pydicom.uid import CTImageStorage, MRImageStorage
    from pynetdicom.presentation import build_role

    from proxy.store.mirroring import receiving_classes, to_mirror

    roles = {CTImageStorage: build_role(CTImageStorage, scp_role=True),
             MRImageStorage: build_role(MRImageStorage, scu_role=True, scp_role=True)}
    receiving = receiving_classes(roles)
    assert receiving == {CTImageStorage}
    proposed = [build_context(CTImageStorage), build_context(MRImageStorage)]
    assert [str(cx.abstract_syntax) for cx in to_mirror(proposed, receiving)] == [MRImageStorage]
