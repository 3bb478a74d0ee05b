"""The acceptor honours the workstation's transfer syntax preference (contexts Rules 2-4),
negotiated by the proxy's own stack (``proxy.dicom.negotiation``)."""

from __future__ import annotations

from collections.abc import Mapping

from pydicom.uid import (
    JPEG2000,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
)

from proxy.config import parse
from proxy.contexts import offers_for_inbound, offers_for_route
from proxy.dicom.items import PresentationContextRQ, RoleSelection, UserInformation
from proxy.dicom.negotiation import Offer, Policy, accepted_contexts, negotiate
from proxy.dicom.pdu import AssociateAC, AssociateRQ

CONFIG = parse({"proxy": {"ae_title": "QR_PROXY"},
                "archives": {"a": {"ae_title": "PACS", "host": "h", "port": 1}},
                "routes": [{"called_ae": "R", "archives": ["a"]}]})


def rq(*contexts: tuple[str, list[str]], roles: tuple[RoleSelection, ...] = ()) -> AssociateRQ:
    return AssociateRQ("R", "WS", tuple(
        PresentationContextRQ(2 * i + 1, abstract, tuple(syntaxes))
        for i, (abstract, syntaxes) in enumerate(contexts)), UserInformation(16384, "1.2",
                                                                             roles=roles))


def accepted(request: AssociateRQ, offers: Mapping[str, Offer]) -> dict[str, str]:
    ac = negotiate(request, Policy(offers))
    assert isinstance(ac, AssociateAC)
    return {cx.abstract_syntax: cx.transfer_syntax
            for cx in accepted_contexts(request, ac).values()}


def test_the_requestors_first_choice_wins() -> None:
    proposed = rq((CTImageStorage, [JPEG2000, ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
                  (MRImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    assert accepted(proposed, offers_for_route(CONFIG.routes[0], CONFIG)) == {
        CTImageStorage: JPEG2000, MRImageStorage: ExplicitVRLittleEndian}


def test_a_c_get_workstation_gets_the_scp_role_for_storage() -> None:
    proposed = rq((CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
                  roles=(RoleSelection(CTImageStorage, False, True),))
    ac = negotiate(proposed, Policy(offers_for_route(CONFIG.routes[0], CONFIG)))
    assert isinstance(ac, AssociateAC)
    [ct] = accepted_contexts(proposed, ac).values()
    assert (ct.transfer_syntax, ct.scu, ct.scp) == (ExplicitVRLittleEndian, False, True)


def test_an_archive_delivering_a_move_is_accepted_in_what_the_receiver_took() -> None:
    """contexts Rule 4: the archive converts for the receiver, as it does directly."""
    proposed = rq((CTImageStorage, [JPEG2000, ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
                  (MRImageStorage, [JPEG2000, ExplicitVRLittleEndian]))
    receivers = {CTImageStorage: [ImplicitVRLittleEndian]}
    assert accepted(proposed, offers_for_inbound(receivers)) == {
        CTImageStorage: ImplicitVRLittleEndian,      # narrowed to the receiver's
        MRImageStorage: JPEG2000}                    # a class it did not say: as proposed
    assert accepted(proposed, offers_for_inbound(None))[CTImageStorage] == JPEG2000


def test_mpps_is_accepted_on_a_route_with_mpps_to_only() -> None:
    """contexts Rule 5: N-CREATE/N-SET go somewhere on that route alone."""
    mpps = "1.2.840.10008.3.1.2.3.3"
    config = parse({"proxy": {"ae_title": "QR_PROXY"},
                    "archives": {"a": {"ae_title": "PACS", "host": "h", "port": 1}},
                    "routes": [{"called_ae": "R", "archives": ["a"]},
                               {"called_ae": "M", "archives": ["a"], "mpps_to": ["a"]}]})
    proposed = rq((mpps, [ImplicitVRLittleEndian, ExplicitVRLittleEndian]))
    assert accepted(proposed, offers_for_route(config.routes[0], config)) == {}
    assert accepted(proposed, offers_for_route(config.routes[1], config)) == {
        mpps: ImplicitVRLittleEndian}                  # the requestor's first choice
    assert config.routes[1].mpps_to == ("a",)


def test_storage_commitment_is_accepted_where_a_route_has_an_archive_for_it() -> None:
    """contexts Rule 6: commit_to, or store_to's first (the default); the modality's role
    selection granted; the proxy's own AE title takes the archive's report (SCP role)."""
    commitment = "1.2.840.10008.1.20.1"
    config = parse({"proxy": {"ae_title": "QR_PROXY"},
                    "archives": {"a": {"ae_title": "PACS", "host": "h", "port": 1},
                                 "b": {"ae_title": "PACS2", "host": "h", "port": 2}},
                    "routes": [{"called_ae": "R", "archives": ["a"]},
                               {"called_ae": "S", "archives": ["a"], "store_to": ["b", "a"]},
                               {"called_ae": "C", "archives": ["a"], "commit_to": "a"}]})
    assert [r.commitment_archive for r in config.routes] == [None, "b", "a"]
    proposed = rq((commitment, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
                  roles=(RoleSelection(commitment, True, True),))
    assert accepted(proposed, offers_for_route(config.routes[0], config)) == {}
    for route in config.routes[1:]:
        ac = negotiate(proposed, Policy(offers_for_route(route, config)))
        assert isinstance(ac, AssociateAC)
        [sc] = accepted_contexts(proposed, ac).values()
        assert (sc.abstract_syntax, sc.scu, sc.scp) == (commitment, True, True)
    from_archive = rq((commitment, [ImplicitVRLittleEndian]),
                      roles=(RoleSelection(commitment, False, True),))
    ac = negotiate(from_archive, Policy(offers_for_inbound(None)))
    assert isinstance(ac, AssociateAC)
    [sc] = accepted_contexts(from_archive, ac).values()
    assert (sc.transfer_syntax, sc.scu, sc.scp) == (ImplicitVRLittleEndian, False, True)
    plain = rq((commitment, [ExplicitVRLittleEndian]))      # no role selection: defaults
    assert accepted(plain, offers_for_inbound(None)) == {commitment: ExplicitVRLittleEndian}
