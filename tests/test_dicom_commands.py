"""proxy.dicom.commands: our command sets read back with pynetdicom/pydicom, pynetdicom's
read back with ours, padding follows PS3.5, truncation raises CommandError."""

from __future__ import annotations

import struct
from io import BytesIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pynetdicom.dimse_messages import C_GET_RSP, C_STORE_RSP
from pynetdicom.dimse_primitives import C_GET, C_STORE
from pynetdicom.dsutils import decode as pn_decode
from pynetdicom.dsutils import encode as pn_encode

from proxy.dicom import commands

CT = "1.2.840.10008.5.1.4.1.1.2"
GET_STUDY = "1.2.840.10008.5.1.4.1.2.2.3"
MOVE_STUDY = "1.2.840.10008.5.1.4.1.2.2.2"
INSTANCE = "1.2.826.0.1.3680043.8.498.12345678901234567890"


def pydicom_view(raw: bytes) -> Dataset:
    ds: Dataset = pn_decode(BytesIO(raw), True, True)
    return ds


def element_order(raw: bytes) -> list[int]:
    tags, at = [], 0
    while at < len(raw):
        group, elem, length = struct.unpack_from("<HHL", raw, at)
        assert group == 0
        tags.append(elem)
        at += 8 + length
    return tags


def test_c_store_rq_with_move_originator_decodes_with_pynetdicom() -> None:
    raw = commands.c_store_rq(5, CT, INSTANCE, "MOVER", 9, priority=1)
    ds = pydicom_view(raw)
    assert ds.CommandGroupLength == len(raw) - 12
    assert ds.CommandField == 0x0001
    assert ds.MessageID == 5
    assert ds.AffectedSOPClassUID == CT
    assert ds.AffectedSOPInstanceUID == INSTANCE
    assert ds.Priority == 1
    assert ds.CommandDataSetType != 0x0101
    assert ds.MoveOriginatorApplicationEntityTitle == "MOVER"
    assert ds.MoveOriginatorMessageID == 9
    assert element_order(raw) == sorted(element_order(raw))
    assert element_order(raw)[0] == 0x0000


@pytest.mark.parametrize(("ae", "msg_id"), [(None, None), ("MOVER", None), (None, 3), ("", 3)])
def test_c_store_rq_without_a_full_move_originator_has_neither_element(
        ae: str | None, msg_id: int | None) -> None:
    raw = commands.c_store_rq(1, CT, INSTANCE, ae, msg_id)
    ds = pydicom_view(raw)
    assert "MoveOriginatorApplicationEntityTitle" not in ds
    assert "MoveOriginatorMessageID" not in ds
    assert ds.CommandGroupLength == len(raw) - 12
    assert ds.Priority == 0


def test_c_store_rq_with_originator_id_zero_keeps_it() -> None:
    ds = pydicom_view(commands.c_store_rq(1, CT, INSTANCE, "MOVER", 0))
    assert ds.MoveOriginatorMessageID == 0


def test_c_store_rq_converts_to_a_pynetdicom_primitive() -> None:
    from pynetdicom.dimse_messages import C_STORE_RQ

    msg = C_STORE_RQ()
    msg.command_set = pydicom_view(commands.c_store_rq(11, CT, INSTANCE, "MOVER", 4))
    primitive = msg.message_to_primitive()
    assert isinstance(primitive, C_STORE)
    assert primitive.MessageID == 11
    assert primitive.AffectedSOPClassUID == CT
    assert primitive.AffectedSOPInstanceUID == INSTANCE
    assert primitive.MoveOriginatorApplicationEntityTitle == "MOVER"
    assert primitive.MoveOriginatorMessageID == 4


def test_c_store_rsp_decodes_with_pynetdicom() -> None:
    raw = commands.c_store_rsp(42, CT, INSTANCE, 0xA700)
    ds = pydicom_view(raw)
    assert ds.CommandGroupLength == len(raw) - 12
    assert ds.CommandField == 0x8001
    assert ds.MessageIDBeingRespondedTo == 42
    assert ds.Status == 0xA700
    assert ds.CommandDataSetType == 0x0101
    assert ds.AffectedSOPClassUID == CT
    assert ds.AffectedSOPInstanceUID == INSTANCE
    assert "MessageID" not in ds


def test_c_get_rq_decodes_with_pynetdicom() -> None:
    raw = commands.c_get_rq(1, GET_STUDY, priority=2)
    ds = pydicom_view(raw)
    assert ds.CommandGroupLength == len(raw) - 12
    assert ds.CommandField == 0x0010
    assert ds.MessageID == 1
    assert ds.AffectedSOPClassUID == GET_STUDY
    assert ds.Priority == 2
    assert ds.CommandDataSetType != 0x0101            # the identifier follows
    assert commands.has_data_set(commands.decode(raw))


def test_c_cancel_rq_decodes_with_pynetdicom() -> None:
    raw = commands.c_cancel_rq(17)
    ds = pydicom_view(raw)
    assert ds.CommandGroupLength == len(raw) - 12
    assert ds.CommandField == 0x0FFF
    assert ds.MessageIDBeingRespondedTo == 17
    assert ds.CommandDataSetType == 0x0101
    assert not commands.has_data_set(commands.decode(raw))


def test_c_move_rq_converts_to_a_pynetdicom_primitive() -> None:
    from pynetdicom.dimse_messages import C_MOVE_RQ
    from pynetdicom.dimse_primitives import C_MOVE

    raw = commands.c_move_rq(9, MOVE_STUDY, "QR_PROXY1", priority=1)   # odd AE: space-padded
    ds = pydicom_view(raw)
    assert ds.CommandGroupLength == len(raw) - 12
    assert ds.CommandField == 0x0021
    assert ds.CommandDataSetType != 0x0101            # the identifier follows
    assert element_order(raw) == sorted(element_order(raw))
    msg = C_MOVE_RQ()
    msg.command_set = ds
    primitive = msg.message_to_primitive()
    assert isinstance(primitive, C_MOVE)
    assert primitive.MessageID == 9
    assert primitive.AffectedSOPClassUID == MOVE_STUDY
    assert primitive.Priority == 1
    assert primitive.MoveDestination == "QR_PROXY1"
    assert commands.has_data_set(commands.decode(raw))
    assert commands.decode(raw)[commands.MOVE_DESTINATION] == "QR_PROXY1"


def test_c_echo_rq_converts_to_a_pynetdicom_primitive() -> None:
    from pynetdicom.dimse_messages import C_ECHO_RQ
    from pynetdicom.dimse_primitives import C_ECHO

    raw = commands.c_echo_rq(3)
    msg = C_ECHO_RQ()
    msg.command_set = pydicom_view(raw)
    primitive = msg.message_to_primitive()
    assert isinstance(primitive, C_ECHO)
    assert primitive.MessageID == 3
    assert primitive.AffectedSOPClassUID == "1.2.840.10008.1.1"
    assert msg.command_set.CommandField == 0x0030
    assert msg.command_set.CommandGroupLength == len(raw) - 12
    assert not commands.has_data_set(commands.decode(raw))


def test_decode_pynetdicom_final_c_move_rsp_with_offending_elements() -> None:
    from pynetdicom.dimse_messages import C_MOVE_RSP
    from pynetdicom.dimse_primitives import C_MOVE

    primitive = C_MOVE()
    primitive.MessageIDBeingRespondedTo = 9
    primitive.Status = 0xA900
    primitive.OffendingElement = [0x00100020, 0x0020000D]
    primitive.ErrorComment = "no such key"
    primitive.NumberOfFailedSuboperations = 2
    msg = C_MOVE_RSP()
    msg.primitive_to_message(primitive)
    command = commands.decode(pn_encode(msg.command_set, True, True))
    assert command[commands.COMMAND_FIELD] == commands.C_MOVE_RSP
    assert command[commands.STATUS] == 0xA900
    assert command[commands.OFFENDING_ELEMENT] == "00100020\\0020000D"
    assert command[commands.ERROR_COMMENT] == "no such key"
    assert command[commands.FAILED] == 2


def _get_rsp(**fields: object) -> bytes:
    primitive = C_GET()
    for name, value in fields.items():
        setattr(primitive, name, value)
    msg = C_GET_RSP()
    msg.primitive_to_message(primitive)
    raw: bytes = pn_encode(msg.command_set, True, True)
    return raw


def test_decode_pynetdicom_c_get_rsp_with_counts() -> None:
    raw = _get_rsp(MessageIDBeingRespondedTo=7, Status=0xFF00, AffectedSOPClassUID=GET_STUDY,
                   NumberOfRemainingSuboperations=3, NumberOfCompletedSuboperations=2,
                   NumberOfFailedSuboperations=1, NumberOfWarningSuboperations=0)
    command = commands.decode(raw)
    assert command[commands.COMMAND_FIELD] == commands.C_GET_RSP
    assert command[commands.RESPONDED_TO] == 7
    assert command[commands.STATUS] == 0xFF00
    assert command[commands.AFFECTED_SOP_CLASS] == GET_STUDY
    assert (command[commands.REMAINING], command[commands.COMPLETED],
            command[commands.FAILED], command[commands.WARNING]) == (3, 2, 1, 0)
    assert command[0x0000] == len(raw) - 12
    assert not commands.has_data_set(command)
    assert all(isinstance(command[e], int) for e in (commands.REMAINING, commands.STATUS))


def test_decode_pynetdicom_final_c_get_rsp_with_error_comment() -> None:
    raw = _get_rsp(MessageIDBeingRespondedTo=1, Status=0xC000, ErrorComment="bad thing",
                   NumberOfCompletedSuboperations=65535, NumberOfFailedSuboperations=4)
    command = commands.decode(raw)
    assert command[commands.STATUS] == 0xC000
    assert command[commands.ERROR_COMMENT] == "bad thing"      # odd: space-padded, stripped
    assert command[commands.COMPLETED] == 65535
    assert command[commands.FAILED] == 4
    assert commands.REMAINING not in command


def test_decode_pynetdicom_c_store_rsp() -> None:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 300
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = INSTANCE
    primitive.Status = 0x0000
    msg = C_STORE_RSP()
    msg.primitive_to_message(primitive)
    command = commands.decode(pn_encode(msg.command_set, True, True))
    assert command[commands.COMMAND_FIELD] == commands.C_STORE_RSP
    assert command[commands.RESPONDED_TO] == 300
    assert command[commands.STATUS] == 0
    assert command[commands.AFFECTED_SOP_INSTANCE] == INSTANCE


def test_odd_length_uid_is_padded_with_nul() -> None:
    raw = commands.c_get_rq(1, "1.2.3")
    assert b"\x00\x00\x02\x00\x06\x00\x00\x001.2.3\x00" in raw      # (0000,0002) len 6
    assert commands.decode(raw)[commands.AFFECTED_SOP_CLASS] == "1.2.3"


def test_even_length_uid_is_not_padded() -> None:
    raw = commands.c_get_rq(1, "1.2.34")
    assert b"\x00\x00\x02\x00\x06\x00\x00\x001.2.34" in raw


def test_odd_length_ae_is_padded_with_space() -> None:
    raw = commands.c_store_rq(1, CT, INSTANCE, "ABC", 2)
    assert b"\x00\x00\x30\x10\x04\x00\x00\x00ABC " in raw                    # (0000,1030) len 4
    assert commands.decode(raw)[commands.MOVE_ORIGINATOR_AE] == "ABC"


def test_every_element_has_even_length() -> None:
    raw = commands.c_store_rq(1, "1.2.345", "1.2.3", "ODD", 1)
    at = 0
    while at < len(raw):
        _g, _e, length = struct.unpack_from("<HHL", raw, at)
        assert length % 2 == 0
        at += 8 + length


@pytest.mark.parametrize("cut", [1, 2, 7, 8, 9])
def test_truncated_input_raises(cut: int) -> None:
    raw = commands.c_store_rsp(1, CT, INSTANCE, 0)
    with pytest.raises(commands.CommandError):
        commands.decode(raw[:-cut])


def test_truncated_element_header_raises() -> None:
    raw = commands.c_cancel_rq(1)
    with pytest.raises(commands.CommandError, match="truncated command element header"):
        commands.decode(raw + b"\x00\x00\x00")


def test_non_command_group_raises() -> None:
    raw = commands.c_cancel_rq(1) + struct.pack("<HHL", 0x0008, 0x0018, 2) + b"1\x00"
    with pytest.raises(commands.CommandError, match=r"\(0008,0018\)"):
        commands.decode(raw)


def test_decode_empty_is_empty() -> None:
    assert commands.decode(b"") == {}


def test_has_data_set() -> None:
    assert commands.has_data_set({commands.DATA_SET_TYPE: 0x0000})
    assert commands.has_data_set({commands.DATA_SET_TYPE: 0x0001})
    assert not commands.has_data_set({commands.DATA_SET_TYPE: 0x0101})
    assert not commands.has_data_set({})


# -- property: encode/decode round trip ------------------------------------------------

_INT_ELEMENTS = [commands.COMMAND_FIELD, commands.MESSAGE_ID, commands.RESPONDED_TO,
                 commands.PRIORITY, commands.DATA_SET_TYPE, commands.STATUS,
                 commands.MOVE_ORIGINATOR_ID, commands.REMAINING, commands.COMPLETED,
                 commands.FAILED, commands.WARNING]
_UID_ELEMENTS = [commands.AFFECTED_SOP_CLASS, commands.AFFECTED_SOP_INSTANCE]

_component = st.one_of(st.just("0"), st.integers(1, 10**15).map(str))
uids = st.lists(_component, min_size=2, max_size=12).map(".".join).filter(lambda u: len(u) <= 64)
ae_titles = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                                  exclude_characters="\\"), min_size=1, max_size=16)


@settings(max_examples=100, deadline=None)
@given(ints=st.dictionaries(st.sampled_from(_INT_ELEMENTS), st.integers(0, 0xFFFF)),
       uid_values=st.dictionaries(st.sampled_from(_UID_ELEMENTS), uids),
       ae=st.none() | ae_titles)
def test_encode_decode_round_trip(ints: dict[int, int], uid_values: dict[int, str],
                                  ae: str | None) -> None:
    command: commands.Command = {**ints, **uid_values}
    if ae is not None:
        command[commands.MOVE_ORIGINATOR_AE] = ae
    raw = commands.encode(command)
    assert len(raw) % 2 == 0
    decoded = commands.decode(raw)
    assert decoded.pop(0x0000) == len(raw) - 12
    assert decoded == command
    # pydicom reads the same values
    ds = pydicom_view(raw)
    assert ds.CommandGroupLength == len(raw) - 12
    for elem, value in command.items():
        assert ds[0x0000, elem].value == value


def test_offending_element_and_error_id_survive_a_round_trip_as_pynetdicom_reads_them() -> None:
    """A relayed C-STORE response passes the archive's Offending Element (AT) and Error ID."""
    from io import BytesIO

    from pynetdicom.dsutils import decode as pynetdicom_decode

    data = commands.encode({commands.STATUS: 0xA900, commands.ERROR_ID: 7,
                            commands.OFFENDING_ELEMENT: "00100010\\00100020"})
    ds = pynetdicom_decode(BytesIO(data), True, True)
    assert list(ds.OffendingElement) == [0x00100010, 0x00100020] and ds.ErrorID == 7
    back = commands.decode(data[12:])
    assert back[commands.OFFENDING_ELEMENT] == "00100010\\00100020"
    assert back[commands.ERROR_ID] == 7


def same(ours: bytes, theirs: bytes) -> bool:
    """Equal element for element; a data set present is any value but 0x0101 (PS3.7 E.1)."""
    a, b = pydicom_view(ours), pydicom_view(theirs)
    assert (a.CommandDataSetType == 0x0101) == (b.CommandDataSetType == 0x0101)
    a.CommandDataSetType = b.CommandDataSetType
    return bool(a == b)


def test_n_create_and_n_set_requests_are_what_pynetdicom_encodes() -> None:
    from pynetdicom.dimse_messages import N_CREATE_RQ, N_SET_RQ
    from pynetdicom.dimse_primitives import N_CREATE, N_SET
    mpps = "1.2.840.10008.3.1.2.3.3"
    create = N_CREATE()
    create.MessageID, create.AffectedSOPClassUID = 3, mpps
    create.AffectedSOPInstanceUID = INSTANCE
    create.AttributeList = BytesIO(b"\x08\x00")
    theirs = N_CREATE_RQ()
    theirs.primitive_to_message(create)
    assert same(commands.n_create_rq(3, mpps, INSTANCE), pn_encode(theirs.command_set, True, True))
    update = N_SET()
    update.MessageID, update.RequestedSOPClassUID = 4, mpps
    update.RequestedSOPInstanceUID = INSTANCE
    update.ModificationList = BytesIO(b"\x08\x00")
    theirs_set = N_SET_RQ()
    theirs_set.primitive_to_message(update)
    assert same(commands.n_set_rq(4, mpps, INSTANCE), pn_encode(theirs_set.command_set, True, True))
    decoded = commands.decode(commands.n_set_rq(4, mpps, INSTANCE)[12:])
    assert decoded[commands.REQUESTED_SOP_INSTANCE] == INSTANCE
    assert commands.operation_name(decoded[commands.COMMAND_FIELD]) == "N-SET"  # type: ignore[arg-type]
    assert commands.operation_name(0x0130) == "N-ACTION"


def test_n_action_and_n_event_report_requests_are_what_pynetdicom_encodes() -> None:
    from pynetdicom.dimse_messages import N_ACTION_RQ, N_EVENT_REPORT_RQ
    from pynetdicom.dimse_primitives import N_ACTION, N_EVENT_REPORT
    commitment, well_known = "1.2.840.10008.1.20.1", "1.2.840.10008.1.20.1.1"
    action = N_ACTION()
    action.MessageID, action.RequestedSOPClassUID = 5, commitment
    action.RequestedSOPInstanceUID, action.ActionTypeID = well_known, 1
    action.ActionInformation = BytesIO(b"\x08\x00")
    theirs = N_ACTION_RQ()
    theirs.primitive_to_message(action)
    ours = commands.n_action_rq(5, commitment, well_known, 1)
    assert same(ours, pn_encode(theirs.command_set, True, True))
    assert commands.decode(ours[12:])[commands.ACTION_TYPE_ID] == 1
    report = N_EVENT_REPORT()
    report.MessageID, report.AffectedSOPClassUID = 6, commitment
    report.AffectedSOPInstanceUID, report.EventTypeID = well_known, 2
    report.EventInformation = BytesIO(b"\x08\x00")
    theirs_report = N_EVENT_REPORT_RQ()
    theirs_report.primitive_to_message(report)
    ours = commands.n_event_report_rq(6, commitment, well_known, 2)
    assert same(ours, pn_encode(theirs_report.command_set, True, True))
    assert commands.decode(ours[12:])[commands.EVENT_TYPE_ID] == 2
