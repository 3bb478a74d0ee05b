"""The acceptor honours the workstation's transfer syntax preference (contexts Rule 2)."""

from __future__ import annotations

from pydicom.uid import (
    JPEG2000,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
)
from pynetdicom.presentation import build_context, negotiate_as_acceptor

from proxy.config import parse
from proxy.contexts import contexts_for_inbound, contexts_for_route, in_requestor_order

CONFIG = parse({"proxy": {"ae_title": "QR_PROXY"},
                "archives": {"a": {"ae_title": "PACS", "host": "h", "port": 1}},
                "routes": [{"called_ae": "R", "archives": ["a"]}]})


def accepted(proposed: list, ours: list) -> dict[str, str]:
    for i, cx in enumerate(proposed):
        cx.context_id = 2 * i + 1
    result, _ = negotiate_as_acceptor(proposed, in_requestor_order(ours, proposed))
    return {str(cx.abstract_syntax): str(cx.transfer_syntax[0])
            for cx in result if cx.result == 0}


def test_the_requestors_first_choice_wins() -> None:
    proposed = [build_context(CTImageStorage, [JPEG2000, ExplicitVRLittleEndian,
                                               ImplicitVRLittleEndian]),
                build_context(MRImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
    ours = contexts_for_route(CONFIG.routes[0], CONFIG)
    assert accepted(proposed, ours) == {CTImageStorage: JPEG2000,
                                        MRImageStorage: ExplicitVRLittleEndian}


def test_roles_survive_the_reordering() -> None:
    proposed = [build_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
    (ct,) = [cx for cx in in_requestor_order(contexts_for_inbound(), proposed)
             if cx.abstract_syntax == CTImageStorage]
    assert list(ct.transfer_syntax)[:2] == [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    assert ct.scp_role and ct.scu_role


def test_an_archive_delivering_a_move_is_accepted_in_what_the_receiver_took() -> None:
    """contexts Rule 4: the archive converts for the receiver, as it does directly."""
    proposed = [build_context(CTImageStorage, [JPEG2000, ExplicitVRLittleEndian,
                                               ImplicitVRLittleEndian]),
                build_context(MRImageStorage, [JPEG2000, ExplicitVRLittleEndian])]
    receivers = {CTImageStorage: [ImplicitVRLittleEndian]}
    assert accepted(proposed, contexts_for_inbound(receivers)) == {
        CTImageStorage: ImplicitVRLittleEndian,      # narrowed to the receiver's
        MRImageStorage: JPEG2000}                    # a class it did not say: as proposed
    assert accepted(proposed, contexts_for_inbound(None))[CTImageStorage] == JPEG2000
