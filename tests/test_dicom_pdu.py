"""proxy.dicom.pdu / items: all seven PDUs both ways. Oracles: pynetdicom's public PDU
classes (``pynetdicom.pdu``) decode our bytes and re-encode them byte for byte, and
PDUs pynetdicom builds from its primitives parse with ours and re-encode identically.
Properties: parse(encode(p)) == p; random and mutated bytes raise only PduError."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pynetdicom import pdu as pn
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import PresentationContext

from proxy.dicom import items, pdu
from proxy.dicom.items import (
    CommonExtendedNegotiation,
    ExtendedNegotiation,
    PresentationContextAC,
    PresentationContextRQ,
    RoleSelection,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
)

VERIFICATION, CT, MR = "1.2.840.10008.1.1", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
IMPLICIT, EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
STORAGE_SERVICE = "1.2.840.10008.4.2"
IMPL_UID = "1.2.826.0.1.3680043.9.3811.3.0.4"

FULL_USER = UserInformation(
    max_length=16384, implementation_class_uid=IMPL_UID, implementation_version="PROXY_1",
    async_window=(5, 3), roles=(RoleSelection(CT, False, True), RoleSelection(MR, True, False)),
    extended=(ExtendedNegotiation(CT, b"\x01\x00\x01"),),
    common_extended=(CommonExtendedNegotiation(MR, STORAGE_SERVICE, (CT, VERIFICATION)),),
    identity_rq=UserIdentityRQ(2, True, b"alice", b"s3cret"))
REQUEST = pdu.AssociateRQ("ARCHIVE", "QR_PROXY", (
    PresentationContextRQ(1, VERIFICATION, (IMPLICIT,)),
    PresentationContextRQ(3, CT, (EXPLICIT, IMPLICIT)),
    PresentationContextRQ(255, MR, (IMPLICIT,))), FULL_USER)
ACCEPT = pdu.AssociateAC("ARCHIVE", "QR_PROXY", (
    PresentationContextAC(1, 0, IMPLICIT), PresentationContextAC(3, 3, EXPLICIT),
    PresentationContextAC(255, 4, IMPLICIT)),
    UserInformation(max_length=0, implementation_class_uid=IMPL_UID,
                    roles=(RoleSelection(CT, False, True),),
                    identity_ac=UserIdentityAC(b"ticket")))
SIMPLE = [pdu.AssociateRJ(1, 3, 2), pdu.ReleaseRQ(), pdu.ReleaseRP(), pdu.Abort(2, 6),
          pdu.Abort(), pdu.PData((pdu.Pdv(1, True, True, b"\x00" * 10),
                                  pdu.Pdv(3, False, False, b"xy")))]
PYNETDICOM = {pdu.A_ASSOCIATE_RQ: pn.A_ASSOCIATE_RQ, pdu.A_ASSOCIATE_AC: pn.A_ASSOCIATE_AC,
              pdu.A_ASSOCIATE_RJ: pn.A_ASSOCIATE_RJ, pdu.P_DATA_TF: pn.P_DATA_TF,
              pdu.A_RELEASE_RQ: pn.A_RELEASE_RQ, pdu.A_RELEASE_RP: pn.A_RELEASE_RP,
              pdu.A_ABORT: pn.A_ABORT_RQ}


def pynetdicom_reencodes(raw: bytes) -> bytes:
    theirs = PYNETDICOM[raw[0]]()
    theirs.decode(raw)
    out: bytes = theirs.encode()
    return out


@pytest.mark.parametrize("value", [REQUEST, ACCEPT, *SIMPLE], ids=lambda v: type(v).__name__)
def test_round_trip_and_pynetdicom_reencodes_byte_for_byte(value: pdu.Pdu) -> None:
    raw = pdu.encode(value)
    assert pdu.parse(raw) == value
    assert pynetdicom_reencodes(raw) == raw


def test_pynetdicom_reads_our_fields() -> None:
    rq = pn.A_ASSOCIATE_RQ()
    rq.decode(pdu.encode(REQUEST))
    assert (rq.called_ae_title, rq.calling_ae_title) == ("ARCHIVE", "QR_PROXY")
    assert [(c.context_id, c.abstract_syntax, list(c.transfer_syntax))
            for c in rq.presentation_context] == [
        (1, VERIFICATION, [IMPLICIT]), (3, CT, [EXPLICIT, IMPLICIT]), (255, MR, [IMPLICIT])]
    ui = rq.user_information
    assert ui.maximum_length == 16384
    assert ui.implementation_class_uid == IMPL_UID
    assert ui.implementation_version_name == "PROXY_1"
    assert ui.async_ops_window.maximum_number_operations_invoked == 5
    assert {u: (r.scu_role, r.scp_role) for u, r in ui.role_selection.items()} == {
        CT: (False, True), MR: (True, False)}
    assert ui.ext_neg[0].sop_class_uid == CT
    assert ui.ext_neg[0].service_class_application_information == b"\x01\x00\x01"
    common = ui.common_ext_neg[0]
    assert (common.sop_class_uid, common.service_class_uid) == (MR, STORAGE_SERVICE)
    assert list(common.related_general_sop_class_identification) == [CT, VERIFICATION]
    assert ui.user_identity.primary_field == b"alice"
    assert ui.user_identity.secondary_field == b"s3cret"
    assert ui.user_identity.positive_response_requested


def _primitive_rq() -> A_ASSOCIATE:
    primitive = A_ASSOCIATE()
    primitive.called_ae_title, primitive.calling_ae_title = "ARCHIVE", "STATION_7"
    primitive.application_context_name = pdu.APPLICATION_CONTEXT
    contexts = []
    for cx_id, uid, syntaxes in ((1, VERIFICATION, [IMPLICIT]), (5, CT, [EXPLICIT, IMPLICIT])):
        cx = PresentationContext()
        cx.context_id, cx.abstract_syntax = cx_id, uid
        for ts in syntaxes:
            cx.add_transfer_syntax(ts)
        contexts.append(cx)
    primitive.presentation_context_definition_list = contexts
    ml = MaximumLengthNotification()
    ml.maximum_length_received = 32768
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = IMPL_UID
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked, window.maximum_number_operations_performed = 2, 7
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid, role.scu_role, role.scp_role = CT, True, True
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = "STATION"
    ext = SOPClassExtendedNegotiation()
    ext.sop_class_uid, ext.service_class_application_information = CT, b"\x02\x00"
    common = SOPClassCommonExtendedNegotiation()
    common.sop_class_uid, common.service_class_uid = MR, STORAGE_SERVICE
    common.related_general_sop_class_identification = [CT]
    identity = UserIdentityNegotiation()
    identity.user_identity_type, identity.positive_response_requested = 5, False
    identity.primary_field = b"eyJhbGciOi.jwt"
    primitive.user_information = [ml, impl, window, role, version, ext, common, identity]
    return primitive


def test_pynetdicom_built_associate_rq_parses_and_reencodes_identically() -> None:
    raw: bytes = pn.A_ASSOCIATE_RQ(_primitive_rq()).encode()
    ours = pdu.parse(raw)
    assert isinstance(ours, pdu.AssociateRQ)
    assert ours.calling_ae == "STATION_7"
    assert ours.contexts == (PresentationContextRQ(1, VERIFICATION, (IMPLICIT,)),
                             PresentationContextRQ(5, CT, (EXPLICIT, IMPLICIT)))
    assert ours.user == UserInformation(
        max_length=32768, implementation_class_uid=IMPL_UID, implementation_version="STATION",
        async_window=(2, 7), roles=(RoleSelection(CT, True, True),),
        extended=(ExtendedNegotiation(CT, b"\x02\x00"),),
        common_extended=(CommonExtendedNegotiation(MR, STORAGE_SERVICE, (CT,)),),
        identity_rq=UserIdentityRQ(5, False, b"eyJhbGciOi.jwt", b""))
    assert pdu.encode(ours) == raw


def test_pynetdicom_built_ac_rj_abort_parse() -> None:
    primitive = _primitive_rq()
    primitive.result = 0
    cx = PresentationContext()
    cx.context_id, cx.result = 5, 0
    cx.add_transfer_syntax(EXPLICIT)
    primitive.presentation_context_definition_results_list = [cx]
    primitive.user_information = primitive.user_information[:2]
    raw: bytes = pn.A_ASSOCIATE_AC(primitive).encode()
    ac = pdu.parse(raw)
    assert isinstance(ac, pdu.AssociateAC)
    assert ac.contexts == (PresentationContextAC(5, 0, EXPLICIT),)
    assert ac.user.max_length == 32768
    assert pdu.encode(ac) == raw
    rj = pn.A_ASSOCIATE_RJ()
    rj.decode(b"\x03\x00\x00\x00\x00\x04\x00\x02\x01\x07")
    assert pdu.parse(rj.encode()) == pdu.AssociateRJ(2, 1, 7)


# -- properties ------------------------------------------------------------------------

uids = st.from_regex(r"[1-9][0-9]{0,3}(\.(0|[1-9][0-9]{0,5})){0,8}", fullmatch=True)
aes = st.from_regex(r"[A-Z0-9_]([A-Z0-9_ ]{0,14}[A-Z0-9_])?", fullmatch=True)
small = st.binary(max_size=40)
users = st.builds(
    UserInformation,
    max_length=st.none() | st.integers(0, 2**32 - 1),
    implementation_class_uid=st.none() | uids,
    implementation_version=st.none() | st.from_regex(r"[A-Z0-9_]{1,16}", fullmatch=True),
    async_window=st.none() | st.tuples(st.integers(0, 65535), st.integers(0, 65535)),
    roles=st.lists(st.builds(RoleSelection, uids, st.booleans(), st.booleans()),
                   max_size=3).map(tuple),
    extended=st.lists(st.builds(ExtendedNegotiation, uids, small), max_size=2).map(tuple),
    common_extended=st.lists(st.builds(CommonExtendedNegotiation, uids, uids,
                                       st.lists(uids, max_size=3).map(tuple)),
                             max_size=2).map(tuple),
    identity_rq=st.none() | st.builds(UserIdentityRQ, st.integers(0, 255), st.booleans(),
                                      small, small),
    identity_ac=st.none() | st.builds(UserIdentityAC, small),
    unknown=st.lists(st.tuples(st.integers(0x5A, 0xFF), small), max_size=2).map(tuple))
contexts_rq = st.lists(st.builds(PresentationContextRQ, st.integers(0, 255), uids,
                                 st.lists(uids, max_size=4).map(tuple)), max_size=5).map(tuple)
contexts_ac = st.lists(st.builds(PresentationContextAC, st.integers(0, 255),
                                 st.integers(0, 255), st.just("") | uids), max_size=5).map(tuple)
pdus: st.SearchStrategy[pdu.Pdu] = st.one_of(
    st.builds(pdu.AssociateRQ, aes, aes, contexts_rq, users, uids, st.integers(0, 65535)),
    st.builds(pdu.AssociateAC, aes, aes, contexts_ac, users, uids, st.integers(0, 65535)),
    st.builds(pdu.AssociateRJ, st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)),
    st.builds(pdu.PData, st.lists(st.builds(pdu.Pdv, st.integers(0, 255), st.booleans(),
                                            st.booleans(), small),
                                  min_size=1, max_size=4).map(tuple)),
    st.just(pdu.ReleaseRQ()), st.just(pdu.ReleaseRP()),
    st.builds(pdu.Abort, st.integers(0, 255), st.integers(0, 255)))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(pdus)
def test_parse_encode_identity(value: pdu.Pdu) -> None:
    raw = pdu.encode(value)
    assert pdu.parse(raw) == value
    assert pdu.frame(raw + b"tail", len(raw)) == (raw[0], len(raw))


def _parse_only_pdu_error(raw: bytes) -> None:
    try:
        pdu.parse(raw)
    except pdu.PduError:
        pass


@settings(max_examples=500)
@given(st.binary(max_size=300))
@example(b"\x01\x00\x00\x00\x00\x44" + b"\x00" * 68 + b"\x10\x00\x00\x02\xff\xfe")
def test_random_bytes_raise_only_pdu_error(raw: bytes) -> None:
    _parse_only_pdu_error(raw)
    try:
        pdu.frame(raw, 1 << 20)
    except pdu.PduError:
        pass


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(pdus, st.data())
def test_mutated_pdus_raise_only_pdu_error(value: pdu.Pdu, data: st.DataObject) -> None:
    raw = bytearray(pdu.encode(value))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    else:
        struct.pack_into(">L", raw, 2, len(raw) - 6)         # a consistent header
    _parse_only_pdu_error(bytes(raw))


# -- malformed input, named -------------------------------------------------------------

@pytest.mark.parametrize(("raw", "message"), [
    (b"\x01\x00", "shorter than its 6-byte header"),
    (b"\x05\x00\x00\x00\x00\x05\x00\x00\x00\x00\x00", "not 4"),
    (b"\x05\x00\x00\x00\x00\x04\x00\x00\x00", "claims 4 bytes but 3 follow"),
    (b"\x09\x00\x00\x00\x00\x04\x00\x00\x00\x00", "unrecognised PDU type 0x09"),
    (b"\x04\x00\x00\x00\x00\x00", "without a PDV"),
    (b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x09\x01\x03", "does not fit"),
    (b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x02\x01\x07", "reserved bits"),
    (b"\x01\x00\x00\x00\x00\x10" + b"\x00" * 16, "fixed fields"),
    (b"\x02\x00\x00\x00\x00\x44" + b"\x00" * 68, "0 application context items"),
])
def test_malformed_pdus_are_named(raw: bytes, message: str) -> None:
    with pytest.raises(pdu.PduError, match=message):
        pdu.parse(raw)


def test_non_ascii_uid_is_a_pdu_error() -> None:
    raw = bytearray(pdu.encode(REQUEST))
    at = raw.index(VERIFICATION.encode())
    raw[at] = 0xC3
    with pytest.raises(pdu.PduError, match="not ASCII"):
        pdu.parse(bytes(raw))


def test_frame_refuses_a_4_gb_header_before_any_body() -> None:
    header = b"\x04\x00\xff\xff\xff\xff"
    with pytest.raises(pdu.PduError, match="exceeds the limit"):
        pdu.frame(header, 16384)
    assert pdu.frame(header[:5], 16384) is None
    assert pdu.frame(b"\x04\x00\x00\x00\x00\x08" + b"\x00" * 7, 16384) is None


def test_encode_refuses_what_cannot_be_written() -> None:
    with pytest.raises(pdu.PduError, match="longer than 16"):
        pdu.encode(pdu.AssociateRQ("A" * 17, "B", ()))
    with pytest.raises(pdu.PduError, match="not ASCII"):
        pdu.encode(pdu.AssociateRQ("ÄRCHIVE", "B", ()))
    with pytest.raises(pdu.PduError, match="2-byte length"):
        items.item(0x56, b"\x00" * 70000)


# pynetdicom 3.0 misreads an empty user identity primary field (PS3.7 D.3.3.7.1 wants one)
identities = st.builds(UserIdentityRQ, st.integers(1, 5), st.booleans(),
                       st.binary(min_size=1, max_size=40), small)
well_formed_users = st.builds(lambda u, idn: UserInformation(
    u.max_length, u.implementation_class_uid, u.implementation_version, u.async_window,
    u.roles, u.extended, u.common_extended, idn, u.identity_ac), users, st.none() | identities)
odd_ids = st.integers(0, 127).map(lambda n: 2 * n + 1)
well_formed: st.SearchStrategy[pdu.Pdu] = st.one_of(
    st.builds(pdu.AssociateRQ, aes, aes, st.lists(st.builds(
        PresentationContextRQ, odd_ids, uids, st.lists(uids, min_size=1, max_size=3).map(tuple)),
        min_size=1, max_size=4).map(tuple), well_formed_users),
    st.builds(pdu.AssociateAC, aes, aes, st.lists(st.builds(
        PresentationContextAC, odd_ids, st.integers(0, 4), uids), min_size=1,
        max_size=4).map(tuple), well_formed_users),
    st.builds(pdu.AssociateRJ, st.integers(1, 2), st.integers(1, 3), st.integers(0, 7)),
    st.builds(pdu.PData, st.lists(st.builds(pdu.Pdv, odd_ids, st.booleans(), st.booleans(),
                                            small), min_size=1, max_size=4).map(tuple)),
    st.builds(pdu.Abort, st.sampled_from([0, 2]), st.integers(0, 6)))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(well_formed)
def test_pynetdicom_reencodes_any_well_formed_pdu(value: pdu.Pdu) -> None:
    raw = pdu.encode(value)
    assert pynetdicom_reencodes(raw) == raw


# -- check_request (Rule 7): what the requestor side refuses to propose ---------------------

_PROPOSAL = pdu.AssociateRQ("ARCHIVE", "QR_PROXY", (
    PresentationContextRQ(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",)),
    PresentationContextRQ(255, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",))))


def test_check_request_passes_a_valid_proposal_and_sixteen_character_titles() -> None:
    pdu.check_request(_PROPOSAL)
    pdu.check_request(dataclasses.replace(_PROPOSAL, called_ae="A" * 16))


@pytest.mark.parametrize("title", ["", "A" * 17, "ÄRCHIVE", "AR\\CH", "AR\nCH", " " * 16])
@pytest.mark.parametrize("which", ["called", "calling"])
def test_check_request_refuses_invalid_ae_titles(title: str, which: str) -> None:
    request = dataclasses.replace(_PROPOSAL, **{f"{which}_ae": title})
    with pytest.raises(pdu.PduError, match=f"{which} AE title"):
        pdu.check_request(request)


@pytest.mark.parametrize("context_id", [0, 2, 254, 256, -1])
def test_check_request_refuses_even_or_out_of_range_context_ids(context_id: int) -> None:
    request = dataclasses.replace(_PROPOSAL, contexts=(
        PresentationContextRQ(context_id, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",)),))
    with pytest.raises(pdu.PduError, match=f"context ID {context_id}"):
        pdu.check_request(request)
