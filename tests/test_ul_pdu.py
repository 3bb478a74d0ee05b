"""proxy.ul.pdu: our A-ASSOCIATE-RQ reads back with pynetdicom's decoder, pynetdicom's
A-ASSOCIATE-AC/RJ parse with ours, and malformed input raises PduError (never
IndexError/struct.error)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pynetdicom.pdu import (
    A_ABORT_RQ,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    P_DATA_TF,
)
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    P_DATA,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext

from proxy.ul import pdu

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
GET_STUDY = "1.2.840.10008.5.1.4.1.2.2.3"
IMPLICIT, EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
IMPL_UID = "1.2.826.0.1.3680043.9.3811.3.0.4"

REQUEST = pdu.AssociateRequest(
    called_ae="ARCHIVE", calling_ae="QR_PROXY",
    contexts=[pdu.ProposedContext(1, GET_STUDY, (EXPLICIT, IMPLICIT)),
              pdu.ProposedContext(3, CT, (IMPLICIT,)),
              pdu.ProposedContext(255, MR, (EXPLICIT, IMPLICIT))],
    max_pdu_length=262_144, implementation_class_uid=IMPL_UID,
    implementation_version="PYNETDICOM_304",
    roles=[pdu.RoleSelection(CT, scu_role=False, scp_role=True),
           pdu.RoleSelection(MR, scu_role=True, scp_role=False)])


def decoded_rq(request: pdu.AssociateRequest) -> A_ASSOCIATE_RQ:
    raw = pdu.encode_associate_rq(request)
    rq = A_ASSOCIATE_RQ()
    rq.decode(raw)
    return rq


# -- A-ASSOCIATE-RQ ------------------------------------------------------------------------


def test_associate_rq_header_and_ae_titles() -> None:
    raw = pdu.encode_associate_rq(REQUEST)
    kind, length = struct.unpack_from(">BxL", raw)
    assert kind == 0x01
    assert length == len(raw) - 6
    assert raw[6:8] == b"\x00\x01"                       # protocol version 1
    assert raw[10:26] == b"ARCHIVE         "             # called, space padded to 16
    assert raw[26:42] == b"QR_PROXY        "             # calling
    assert raw[42:74] == b"\x00" * 32
    rq = decoded_rq(REQUEST)
    assert rq.protocol_version == 1
    assert rq.called_ae_title == "ARCHIVE"
    assert rq.calling_ae_title == "QR_PROXY"
    assert rq.application_context_name == "1.2.840.10008.3.1.1.1"
    assert rq.pdu_length == length                        # pynetdicom re-derives the same


def test_associate_rq_contexts_decode_with_pynetdicom() -> None:
    rq = decoded_rq(REQUEST)
    got = [(cx.context_id, cx.abstract_syntax, list(cx.transfer_syntax))
           for cx in rq.presentation_context]
    assert got == [(1, GET_STUDY, [EXPLICIT, IMPLICIT]), (3, CT, [IMPLICIT]),
                   (255, MR, [EXPLICIT, IMPLICIT])]


def test_associate_rq_user_information_decodes_with_pynetdicom() -> None:
    ui = decoded_rq(REQUEST).user_information
    assert ui is not None
    assert ui.maximum_length == 262_144
    assert ui.implementation_class_uid == IMPL_UID
    assert ui.implementation_version_name == "PYNETDICOM_304"
    roles = {uid: (item.scu_role, item.scp_role) for uid, item in ui.role_selection.items()}
    assert roles == {CT: (False, True), MR: (True, False)}
    # PS3.7 D.3.3: sub-items in ascending type order (0x51, 0x52, 0x54, 0x54, 0x55)
    assert [item.item_type for item in ui.user_data] == [0x51, 0x52, 0x54, 0x54, 0x55]


def test_associate_rq_minimal_user_information() -> None:
    request = pdu.AssociateRequest("A", "B", [pdu.ProposedContext(7, VERIFICATION, (IMPLICIT,))],
                                   0, "1.2.3")
    rq = decoded_rq(request)
    ui = rq.user_information
    assert ui is not None
    assert ui.maximum_length == 0
    assert ui.implementation_class_uid == "1.2.3"
    assert ui.implementation_version_name is None
    assert ui.role_selection == {}
    assert [cx.context_id for cx in rq.presentation_context] == [7]
    assert (rq.called_ae_title, rq.calling_ae_title) == ("A", "B")


def test_associate_rq_version_name_is_cut_to_16_bytes() -> None:
    request = pdu.AssociateRequest("A", "B", [pdu.ProposedContext(1, VERIFICATION, (IMPLICIT,))],
                                   16384, "1.2.3", "V" * 20)
    ui = decoded_rq(request).user_information
    assert ui is not None
    assert ui.implementation_version_name == "V" * 16


@pytest.mark.parametrize("title", ["", "A" * 17, "ÄRCHIVE", "AR\\CH", "AR\nCH", " " * 16])
@pytest.mark.parametrize("which", ["called", "calling"])
def test_invalid_ae_titles_raise(title: str, which: str) -> None:
    fields = {"called_ae": "ARCHIVE", "calling_ae": "QR_PROXY", f"{which}_ae": title}
    request = pdu.AssociateRequest(contexts=REQUEST.contexts, max_pdu_length=16384,
                                   implementation_class_uid=IMPL_UID, **fields)
    with pytest.raises(pdu.PduError, match="AE title"):
        pdu.encode_associate_rq(request)


def test_sixteen_character_ae_title_is_not_padded() -> None:
    request = pdu.AssociateRequest("A" * 16, "B", REQUEST.contexts, 16384, IMPL_UID)
    raw = pdu.encode_associate_rq(request)
    assert raw[10:26] == b"A" * 16
    assert decoded_rq(request).called_ae_title == "A" * 16


@pytest.mark.parametrize("context_id", [0, 2, 254, 256, -1])
def test_even_or_out_of_range_context_ids_raise(context_id: int) -> None:
    request = pdu.AssociateRequest(
        "A", "B", [pdu.ProposedContext(context_id, VERIFICATION, (IMPLICIT,))], 0, "1.2.3")
    with pytest.raises(pdu.PduError, match=f"context ID {context_id}"):
        pdu.encode_associate_rq(request)


# -- A-ASSOCIATE-AC ------------------------------------------------------------------------


def _context(cx_id: int, result: int, syntax: str) -> PresentationContext:
    cx = PresentationContext()
    cx.context_id = cx_id
    cx.result = result
    cx.add_transfer_syntax(syntax)
    return cx


def pynetdicom_ac(contexts: list[PresentationContext], max_length: int | None = 32768,
                  roles: tuple[tuple[str, bool, bool], ...] = ()) -> bytes:
    """An A-ASSOCIATE-AC PDU as pynetdicom encodes it, header included."""
    primitive = A_ASSOCIATE()
    primitive.called_ae_title = "ARCHIVE"
    primitive.calling_ae_title = "QR_PROXY"
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.result = 0
    primitive.presentation_context_definition_results_list = contexts
    user: list[object] = []
    if max_length is not None:
        ml = MaximumLengthNotification()
        ml.maximum_length_received = max_length
        user.append(ml)
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = IMPL_UID
    user.append(impl)
    for uid, scu, scp in roles:
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = uid
        role.scu_role = scu
        role.scp_role = scp
        user.append(role)
    primitive.user_information = user
    encoded: bytes = A_ASSOCIATE_AC(primitive).encode()
    return encoded


def test_parse_associate_ac_from_pynetdicom() -> None:
    raw = pynetdicom_ac(
        [_context(1, 0, EXPLICIT), _context(3, 0, IMPLICIT), _context(5, 3, IMPLICIT),
         _context(7, 4, IMPLICIT), _context(9, 1, IMPLICIT), _context(11, 2, IMPLICIT)],
        max_length=16384, roles=((CT, False, True), (MR, True, False)))
    assert raw[0] == pdu.A_ASSOCIATE_AC
    ac = pdu.parse_associate_ac(raw[6:])
    assert ac.max_pdu_length == 16384
    assert ac.accepted == {1: EXPLICIT, 3: IMPLICIT}
    assert ac.refused == {5: 3, 7: 4, 9: 1, 11: 2}
    assert ac.scp_roles == {CT: True, MR: False}


def test_parse_associate_ac_without_max_length_means_no_limit() -> None:
    ac = pdu.parse_associate_ac(pynetdicom_ac([_context(1, 0, IMPLICIT)], max_length=None)[6:])
    assert ac.max_pdu_length == 0
    assert ac.accepted == {1: IMPLICIT}
    assert ac.refused == {}
    assert ac.scp_roles == {}


def test_parse_associate_ac_rejects_a_body_shorter_than_its_fixed_fields() -> None:
    with pytest.raises(pdu.PduError, match="fixed fields"):
        pdu.parse_associate_ac(b"\x00" * 67)


def test_parse_associate_ac_item_overrunning_the_pdu_raises() -> None:
    body = bytearray(pynetdicom_ac([_context(1, 0, IMPLICIT)])[6:])
    assert body[68] == 0x10                                  # application context item
    struct.pack_into(">H", body, 70, len(body))              # claims more than is there
    with pytest.raises(pdu.PduError, match="0x10 claims"):
        pdu.parse_associate_ac(bytes(body))


def test_parse_associate_ac_truncated_item_header_raises() -> None:
    body = pynetdicom_ac([_context(1, 0, IMPLICIT)])[6:] + b"\x21\x00\x00"
    with pytest.raises(pdu.PduError, match="truncated item header"):
        pdu.parse_associate_ac(body)


def test_parse_associate_ac_short_presentation_context_item_raises() -> None:
    body = b"\x00" * 68 + b"\x21\x00\x00\x02\x01\x00"
    with pytest.raises(pdu.PduError, match="presentation context item too short"):
        pdu.parse_associate_ac(body)


def test_parse_associate_ac_transfer_syntax_sub_item_overrun_raises() -> None:
    sub = b"\x40\x00\x00\x30" + IMPLICIT.encode()            # claims 48 bytes, has 17
    item = b"\x21\x00" + struct.pack(">H", 4 + len(sub)) + b"\x01\x00\x00\x00" + sub
    with pytest.raises(pdu.PduError, match="0x40 claims"):
        pdu.parse_associate_ac(b"\x00" * 68 + item)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_parse_associate_ac_random_bytes_never_crash_otherwise(tail: bytes) -> None:
    try:
        ac = pdu.parse_associate_ac(b"\x00" * 68 + tail)
    except pdu.PduError:
        return
    assert isinstance(ac, pdu.AssociateAccept)


# -- A-ASSOCIATE-RJ, A-ABORT, A-RELEASE ----------------------------------------------------


@pytest.mark.parametrize(("result", "source", "diagnostic"),
                         [(1, 1, 7), (2, 3, 2), (1, 2, 2), (1, 1, 3)])
def test_parse_associate_rj_from_pynetdicom(result: int, source: int, diagnostic: int) -> None:
    rj = A_ASSOCIATE_RJ()
    rj.result, rj.source, rj.reason_diagnostic = result, source, diagnostic
    raw = rj.encode()
    assert raw[0] == pdu.A_ASSOCIATE_RJ
    assert pdu.parse_associate_rj(raw[6:]) == pdu.AssociateReject(result, source, diagnostic)


def test_parse_associate_rj_too_short_raises() -> None:
    with pytest.raises(pdu.PduError, match="shorter than 4"):
        pdu.parse_associate_rj(b"\x00\x01\x01")


@pytest.mark.parametrize(("source", "reason"), [(0, 0), (2, 6), (2, 0)])
def test_abort_decodes_with_pynetdicom(source: int, reason: int) -> None:
    raw = pdu.abort(source, reason)
    ab = A_ABORT_RQ()
    ab.decode(raw)
    assert raw[0] == pdu.A_ABORT
    assert (ab.source, ab.reason_diagnostic) == (source, reason)
    assert len(raw) == 10


def test_release_pdus_match_pynetdicom() -> None:
    assert A_RELEASE_RQ().encode() == pdu.RELEASE_RQ
    assert A_RELEASE_RP().encode() == pdu.RELEASE_RP


# -- P-DATA-TF -----------------------------------------------------------------------------


def test_pdv_items_of_a_pynetdicom_p_data_tf_with_several_pdvs() -> None:
    primitive = P_DATA()
    primitive.presentation_data_value_list = [
        [1, b"\x03" + b"command"], [1, b"\x00" + b"data-1"], [3, b"\x02" + b"data-2!"],
        [5, b"\x00"]]                                        # an empty fragment
    raw = P_DATA_TF(primitive).encode()
    assert raw[0] == pdu.P_DATA_TF
    items = pdu.pdv_items(memoryview(raw)[6:])
    got = [(cx, control, bytes(fragment)) for cx, control, fragment in items]
    assert got == [(1, 3, b"command"), (1, 0, b"data-1"), (3, 2, b"data-2!"), (5, 0, b"")]
    assert all(isinstance(fragment, memoryview) for _cx, _c, fragment in items)


def test_pdv_items_of_an_empty_body() -> None:
    assert pdu.pdv_items(memoryview(b"")) == []


@pytest.mark.parametrize(("body", "message"), [
    (b"\x00\x00\x00\x04\x01\x03ab" + b"\x00\x00\x00", "truncated PDV item header"),
    (b"\x00\x00\x00\x04\x01", "truncated PDV item header"),
    (b"\x00\x00\x00\x09\x01\x03abc", "length 9 does not fit"),
    (b"\x00\x00\x00\x04\x01\x03ab" + b"\xff\xff\xff\xff\x01\x03", "length 4294967295"),
    (b"\x00\x00\x00\x01\x01\x03", "length 1 does not fit"),
    (b"\x00\x00\x00\x00\x01\x03", "length 0 does not fit"),
])
def test_malformed_pdv_items_raise(body: bytes, message: str) -> None:
    with pytest.raises(pdu.PduError, match=message):
        pdu.pdv_items(memoryview(body))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_pdv_items_random_bytes_parse_or_raise_pdu_error(body: bytes) -> None:
    try:
        items = pdu.pdv_items(memoryview(body))
    except pdu.PduError:
        return
    assert sum(len(fragment) + 6 for _cx, _c, fragment in items) == len(body)


@pytest.mark.parametrize("size", [0, 1, 16378])
def test_pdata_header_layout(size: int) -> None:
    fragment = bytes(range(256)) * (size // 256) + bytes(size % 256)
    header = pdu.pdata_header(5, 0x03, size)
    assert len(header) == 12
    assert header == (bytes((0x04, 0)) + struct.pack(">L", size + 6)
                      + struct.pack(">L", size + 2) + bytes((5, 0x03)))
    decoded = P_DATA_TF()
    decoded.decode(header + fragment)
    assert [(item.presentation_context_id, item.presentation_data_value)
            for item in decoded.presentation_data_value_items] == [(5, b"\x03" + fragment)]
    items = pdu.pdv_items(memoryview(header + fragment)[6:])
    assert [(cx, control, bytes(f)) for cx, control, f in items] == [(5, 3, fragment)]
