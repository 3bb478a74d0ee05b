"""proxy.dicom.negotiation: the acceptor's AC/RJ decision table by table, and — on
generated proposals — the same per-context results, transfer syntaxes and role replies
as pynetdicom's ``negotiate_as_acceptor``; the requestor's reading of the AC."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from proxy.contexts import DEFLATED
from proxy.dicom import negotiation as neg
from proxy.dicom import pdu
from proxy.dicom.items import (
    ExtendedNegotiation,
    PresentationContextRQ,
    RoleSelection,
    UserIdentityRQ,
    UserInformation,
)

VERIFICATION, CT, MR = "1.2.840.10008.1.1", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
FIND = "1.2.840.10008.5.1.4.1.2.2.1"
IMPLICIT, EXPLICIT, BIG = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"
JPEG, DEFLATE = "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.1.99"
POLICY = neg.Policy({VERIFICATION: neg.Offer((IMPLICIT,)),
                     CT: neg.Offer((EXPLICIT, IMPLICIT, DEFLATE), roles=(True, True)),
                     MR: neg.Offer((JPEG, EXPLICIT, IMPLICIT), requestor_order=True)},
                    called_aes=frozenset({"PROXY"}), calling_aes=frozenset({"WS1", "WS2"}),
                    max_pdu=65536)


def rq(*contexts: PresentationContextRQ, called: str = "PROXY", calling: str = "WS1",
       **user: object) -> pdu.AssociateRQ:
    return pdu.AssociateRQ(called, calling, contexts, UserInformation(max_length=16384,
                                                                      **user))  # type: ignore[arg-type]


def results(answer: pdu.AssociateAC | pdu.AssociateRJ) -> list[tuple[int, int, str]]:
    assert isinstance(answer, pdu.AssociateAC)
    return [(cx.context_id, cx.result, cx.transfer_syntax) for cx in answer.contexts]


@pytest.mark.parametrize(("request_", "expected"), [
    (pdu.AssociateRQ("PROXY", "WS1", (), protocol_version=2), neg.PROTOCOL_VERSION_NOT_SUPPORTED),
    (pdu.AssociateRQ("PROXY", "WS1", (), application_context="1.2.3"),
     neg.APPLICATION_CONTEXT_NOT_SUPPORTED),
    (rq(called="OTHER"), neg.CALLED_AE_NOT_RECOGNIZED),
    (rq(calling="STRANGER"), neg.CALLING_AE_NOT_RECOGNIZED),
])
def test_association_rejections(request_: pdu.AssociateRQ, expected: pdu.AssociateRJ) -> None:
    assert neg.negotiate(request_, POLICY) == expected


def test_rejection_codes_are_ps38_table_9_21() -> None:
    assert pdu.AssociateRJ(1, 1, 7) == neg.CALLED_AE_NOT_RECOGNIZED
    assert pdu.AssociateRJ(1, 1, 3) == neg.CALLING_AE_NOT_RECOGNIZED
    assert pdu.AssociateRJ(1, 2, 2) == neg.PROTOCOL_VERSION_NOT_SUPPORTED
    assert pdu.AssociateRJ(2, 3, 2) == neg.LOCAL_LIMIT_EXCEEDED
    assert neg.negotiate(rq(), POLICY, at_capacity=True) == neg.LOCAL_LIMIT_EXCEEDED


def test_context_results_table() -> None:
    answer = neg.negotiate(rq(
        PresentationContextRQ(1, VERIFICATION, (EXPLICIT, IMPLICIT)),
        PresentationContextRQ(3, CT, (IMPLICIT, EXPLICIT)),       # ours first: explicit
        PresentationContextRQ(5, MR, (IMPLICIT, EXPLICIT)),       # requestor's first
        PresentationContextRQ(7, FIND, (IMPLICIT,)),              # not offered
        PresentationContextRQ(9, VERIFICATION, (BIG,)),           # no common syntax
        PresentationContextRQ(11, CT, (DEFLATE,)),                # deflated: never
        PresentationContextRQ(13, CT, ()),                        # no syntaxes
        PresentationContextRQ(13, MR, (IMPLICIT,))), POLICY)      # ID proposed twice
    assert results(answer) == [
        (1, neg.ACCEPTANCE, IMPLICIT), (3, neg.ACCEPTANCE, EXPLICIT),
        (5, neg.ACCEPTANCE, IMPLICIT), (7, neg.ABSTRACT_SYNTAX_NOT_SUPPORTED, IMPLICIT),
        (9, neg.TRANSFER_SYNTAXES_NOT_SUPPORTED, BIG),
        (11, neg.TRANSFER_SYNTAXES_NOT_SUPPORTED, DEFLATE), (13, neg.NO_REASON, ""),
        (13, neg.NO_REASON, IMPLICIT)]
    assert isinstance(answer, pdu.AssociateAC)
    assert answer.user.max_length == 65536
    assert answer.user.implementation_class_uid == neg.IMPLEMENTATION_CLASS_UID
    assert answer.user.async_window is None and answer.user.roles == ()
    # the AC goes on the wire and comes back the same
    assert pdu.parse(pdu.encode(answer)) == answer


@pytest.mark.parametrize(("proposed", "allowed", "granted", "result"), [
    ((True, True), (True, True), (True, True), neg.ACCEPTANCE),
    ((False, True), (True, True), (False, True), neg.ACCEPTANCE),    # C-GET storage
    ((True, True), (True, False), (True, False), neg.ACCEPTANCE),
    ((False, True), (True, False), None, neg.USER_REJECTION),
    ((False, False), (True, True), None, neg.USER_REJECTION),
])
def test_role_selection(proposed: tuple[bool, bool], allowed: tuple[bool, bool],
                        granted: tuple[bool, bool] | None, result: int) -> None:
    policy = neg.Policy({CT: neg.Offer((IMPLICIT,), roles=allowed)})
    request = rq(PresentationContextRQ(1, CT, (IMPLICIT,)), roles=(RoleSelection(CT, *proposed),))
    answer = neg.negotiate(request, policy)
    assert results(answer) == [(1, result, IMPLICIT)]
    assert isinstance(answer, pdu.AssociateAC)
    assert answer.user.roles == (() if granted is None else (RoleSelection(CT, *granted),))
    if granted is not None:
        assert neg.accepted_contexts(request, answer) == {
            1: neg.Accepted(CT, IMPLICIT, *granted)}


def test_roles_not_negotiated_without_policy_or_proposal() -> None:
    request = rq(PresentationContextRQ(1, VERIFICATION, (IMPLICIT,)),
                 PresentationContextRQ(3, CT, (IMPLICIT,)),
                 roles=(RoleSelection(VERIFICATION, False, True),))
    answer = neg.negotiate(request, POLICY)
    assert isinstance(answer, pdu.AssociateAC) and answer.user.roles == ()
    assert neg.accepted_contexts(request, answer) == {
        1: neg.Accepted(VERIFICATION, IMPLICIT), 3: neg.Accepted(CT, IMPLICIT)}


@pytest.mark.parametrize(("proposed", "ours", "answered"), [
    (None, (1, 1), None), ((5, 3), (1, 1), (1, 1)), ((0, 0), (4, 2), (4, 2)),
    ((2, 0), (0, 8), (2, 8)), ((0, 0), (0, 0), (0, 0))])
def test_async_window(proposed: tuple[int, int] | None, ours: tuple[int, int],
                      answered: tuple[int, int] | None) -> None:
    policy = neg.Policy({}, async_window=ours)
    answer = neg.negotiate(rq(async_window=proposed), policy)
    assert isinstance(answer, pdu.AssociateAC) and answer.user.async_window == answered


def test_user_identity_answered_refused_or_ignored() -> None:
    identity = UserIdentityRQ(2, True, b"alice", b"secret")
    def check(idn: UserIdentityRQ) -> bytes | None:
        return b"token" if idn.secondary == b"secret" else None
    answered = neg.negotiate(rq(identity_rq=identity), neg.Policy({}, identity=check))
    assert isinstance(answered, pdu.AssociateAC)
    assert answered.user.identity_ac is not None
    assert answered.user.identity_ac.server_response == b"token"
    quiet = neg.negotiate(rq(identity_rq=UserIdentityRQ(2, False, b"alice", b"secret")),
                          neg.Policy({}, identity=check))
    assert isinstance(quiet, pdu.AssociateAC) and quiet.user.identity_ac is None
    refused = neg.negotiate(rq(identity_rq=UserIdentityRQ(2, True, b"alice", b"wrong")),
                            neg.Policy({}, identity=check))
    assert refused == neg.REJECTED_NO_REASON
    ignored = neg.negotiate(rq(identity_rq=identity), neg.Policy({}))
    assert isinstance(ignored, pdu.AssociateAC) and ignored.user.identity_ac is None


def test_extended_negotiation_only_for_accepted_classes() -> None:
    request = rq(PresentationContextRQ(1, CT, (IMPLICIT,)),
                 PresentationContextRQ(3, FIND, (IMPLICIT,)),
                 extended=(ExtendedNegotiation(CT, b"\x01"), ExtendedNegotiation(FIND, b"\x01")))
    policy = neg.Policy({CT: neg.Offer((IMPLICIT,))}, extended=lambda ext: ext.info[:1])
    answer = neg.negotiate(request, policy)
    assert isinstance(answer, pdu.AssociateAC)
    assert answer.user.extended == (ExtendedNegotiation(CT, b"\x01"),)
    plain = neg.negotiate(request, neg.Policy({CT: neg.Offer((IMPLICIT,))}))
    assert isinstance(plain, pdu.AssociateAC) and plain.user.extended == ()


def test_requestor_ignores_contexts_it_did_not_propose() -> None:
    request = rq(PresentationContextRQ(1, CT, (IMPLICIT,)))
    ac = pdu.AssociateAC("PROXY", "WS1", (pdu.PresentationContextAC(1, 0, IMPLICIT),
                                          pdu.PresentationContextAC(3, 0, IMPLICIT),
                                          pdu.PresentationContextAC(5, 3, IMPLICIT)))
    assert neg.accepted_contexts(request, ac) == {1: neg.Accepted(CT, IMPLICIT)}


# -- against pynetdicom ----------------------------------------------------------------
ABSTRACTS = [VERIFICATION, CT, MR, FIND]
SYNTAXES = [IMPLICIT, EXPLICIT, BIG, JPEG, DEFLATE]
roles_st = st.one_of(st.none(), st.tuples(st.booleans(), st.booleans()))
offer_st = st.builds(neg.Offer, st.lists(st.sampled_from(SYNTAXES), min_size=1, max_size=4,
                                         unique=True).map(tuple), st.just(False), roles_st)
policy_st = st.dictionaries(st.sampled_from(ABSTRACTS), offer_st, max_size=4)
proposal_st = st.lists(st.tuples(st.sampled_from(ABSTRACTS),
                                 st.lists(st.sampled_from(SYNTAXES), min_size=1, max_size=4,
                                          unique=True)), min_size=1, max_size=8)
proposed_roles_st = st.dictionaries(st.sampled_from(ABSTRACTS),
                                    st.tuples(st.booleans(), st.booleans()), max_size=4)


def _pynetdicom_cx(cx_id: int | None, abstract: str, syntaxes: list[str],
                   roles: tuple[bool, bool] | None = None) -> PresentationContext:
    cx = PresentationContext()
    if cx_id is not None:
        cx.context_id = cx_id
    cx.abstract_syntax = abstract
    cx.transfer_syntax = syntaxes
    if roles is not None:
        cx.scu_role, cx.scp_role = roles
    return cx


@settings(max_examples=300, deadline=None)
@given(policy_st, proposal_st, proposed_roles_st)
def test_same_answers_as_pynetdicom(offers: dict[str, neg.Offer],
                                    proposal: list[tuple[str, list[str]]],
                                    proposed_roles: dict[str, tuple[bool, bool]]) -> None:
    contexts = tuple(PresentationContextRQ(2 * i + 1, ab, tuple(ts))
                     for i, (ab, ts) in enumerate(proposal))
    request = rq(*contexts, roles=tuple(RoleSelection(uid, *r)
                                        for uid, r in proposed_roles.items()))
    answer = neg.negotiate(request, neg.Policy(offers))
    oracle, oracle_roles = negotiate_as_acceptor(
        [_pynetdicom_cx(cx.context_id, cx.abstract_syntax, list(cx.transfer_syntaxes))
         for cx in contexts],
        [_pynetdicom_cx(None, ab, [ts for ts in o.transfer_syntaxes if ts not in DEFLATED],
                        o.roles) for ab, o in offers.items()],
        dict(proposed_roles) or None)
    assert results(answer) == [(cx.context_id, cx.result, cx.transfer_syntax[0])
                               for cx in oracle]
    assert isinstance(answer, pdu.AssociateAC)
    assert sorted(answer.user.roles, key=lambda r: r.sop_class_uid) == [
        RoleSelection(r.sop_class_uid, bool(r.scu_role), bool(r.scp_role)) for r in oracle_roles]
    for accepted in neg.accepted_contexts(request, answer).values():
        assert accepted.transfer_syntax not in DEFLATED


@settings(max_examples=200, deadline=None)
@given(policy_st, proposal_st)
def test_requestor_order_picks_the_requestors_first_acceptable(
        offers: dict[str, neg.Offer], proposal: list[tuple[str, list[str]]]) -> None:
    policy = neg.Policy({ab: neg.Offer(o.transfer_syntaxes, True) for ab, o in offers.items()})
    contexts = tuple(PresentationContextRQ(2 * i + 1, ab, tuple(ts))
                     for i, (ab, ts) in enumerate(proposal))
    answer = neg.negotiate(rq(*contexts), policy)
    for cx, (cx_id, result, ts) in zip(contexts, results(answer), strict=True):
        assert cx_id == cx.context_id
        ours = [t for t in policy.offers.get(cx.abstract_syntax, neg.Offer(())).transfer_syntaxes
                if t not in DEFLATED]
        common = [t for t in cx.transfer_syntaxes if t in ours]
        if result == neg.ACCEPTANCE:
            assert ts == common[0]
        else:
            assert not common


def test_the_proxy_names_itself_with_its_own_implementation_uid() -> None:
    from pydicom.uid import UID

    from proxy.dicom.negotiation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
    from proxy.part10 import file_meta
    assert UID(IMPLEMENTATION_CLASS_UID).is_valid and IMPLEMENTATION_CLASS_UID.startswith("2.25.")
    assert 1 <= len(IMPLEMENTATION_VERSION) <= 16          # PS3.7 D.3.3.2.2: SH, 16 chars
    meta = file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.840.10008.1.2.1")
    assert IMPLEMENTATION_CLASS_UID.encode() in meta and IMPLEMENTATION_VERSION.encode() in meta
