"""proxy.dicom.dimse: reassembly of PDVs into DIMSE messages, fragmentation at the
peer's maximum PDU length, and the PS3.8 Annex E ordering violations. Oracle:
pynetdicom's public DIMSE message classes (``pynetdicom.dimse_messages``): the PDUs
its ``encode_msg`` produces reassemble with ours, and ours ``decode_msg`` with it."""

from __future__ import annotations

from io import BytesIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF

from proxy.dicom import commands, dimse, pdu
from proxy.dicom.events import DataFragment, MessageReceived

CT = "1.2.840.10008.5.1.4.1.1.2"
ECHO = {commands.COMMAND_FIELD: 0x0030, commands.MESSAGE_ID: 1,
        commands.AFFECTED_SOP_CLASS: "1.2.840.10008.1.1", commands.DATA_SET_TYPE: 0x0101}
STORE = {commands.COMMAND_FIELD: commands.C_STORE_RQ, commands.MESSAGE_ID: 9,
         commands.AFFECTED_SOP_CLASS: CT, commands.AFFECTED_SOP_INSTANCE: "1.2.3.4",
         commands.PRIORITY: 0, commands.DATA_SET_TYPE: 0x0000}


def feed_all(assembler: dimse.Assembler, raws: list[bytes]) -> list[object]:
    out: list[object] = []
    for raw in raws:
        value = pdu.parse(raw)
        assert isinstance(value, pdu.PData)
        for pdv in value.pdvs:
            out += assembler.feed(pdv.context_id, pdv.is_command, pdv.is_last, pdv.data)
    return out


def with_length(command: dict[int, int | str]) -> dict[int, int | str]:
    return commands.decode(commands.encode(command))


def test_echo_has_no_data_set() -> None:
    raws = list(dimse.fragments(1, ECHO, None, 16384))
    assert len(raws) == 1
    assert feed_all(dimse.Assembler(), raws) == [MessageReceived(1, with_length(ECHO))]


@pytest.mark.parametrize("peer_max", [0, 7, 100, 4096, 16384])
def test_store_fragments_fit_and_reassemble(peer_max: int) -> None:
    data = bytes(range(256)) * 40
    raws = list(dimse.fragments(5, STORE, data, peer_max))
    for raw in raws:
        length = int.from_bytes(raw[2:6], "big")
        assert peer_max == 0 or length <= peer_max
        assert len(pdu.parse(raw).pdvs) == 1          # type: ignore[union-attr]
    assert feed_all(dimse.Assembler(), raws) == [MessageReceived(5, with_length(STORE), data)]


def test_streaming_hands_fragments_on() -> None:
    data = b"D" * 1000
    out = feed_all(dimse.Assembler(stream=True), list(dimse.fragments(3, STORE, data, 306)))
    assert out[0] == MessageReceived(3, with_length(STORE), None, data_follows=True)
    frags = out[1:]
    assert all(isinstance(f, DataFragment) and len(f.data) <= 300 for f in frags)
    assert b"".join(f.data for f in frags) == data             # type: ignore[union-attr]
    assert [f.last for f in frags] == [False] * (len(frags) - 1) + [True]  # type: ignore[union-attr]


def test_data_set_type_follows_the_data_given() -> None:
    raws = list(dimse.fragments(1, STORE, None, 0))
    (msg,) = feed_all(dimse.Assembler(), raws)
    assert isinstance(msg, MessageReceived)
    assert msg.command[commands.DATA_SET_TYPE] == commands.NO_DATA_SET
    (msg,) = feed_all(dimse.Assembler(), list(dimse.fragments(1, ECHO, b"x", 0)))
    assert isinstance(msg, MessageReceived) and msg.data == b"x"


@settings(max_examples=100)
@given(st.binary(max_size=3000), st.integers(7, 2000), st.booleans())
def test_any_data_any_fragment_size(data: bytes, peer_max: int, stream: bool) -> None:
    out = feed_all(dimse.Assembler(stream=stream), list(dimse.fragments(7, STORE, data, peer_max)))
    if stream:
        assert b"".join(f.data for f in out[1:]) == data          # type: ignore[attr-defined]
    else:
        assert out == [MessageReceived(7, with_length(STORE), data)]


def test_pynetdicom_fragments_reassemble_with_ours() -> None:
    primitive = C_STORE()
    primitive.MessageID, primitive.AffectedSOPClassUID = 7, CT
    primitive.AffectedSOPInstanceUID, primitive.Priority = "1.2.3.4", 0
    primitive.DataSet = BytesIO(b"\x08\x00\x16\x00" + b"x" * 5000)
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    raws = [P_DATA_TF(p).encode() for p in message.encode_msg(3, 1000)]
    assert len(raws) > 5
    (msg,) = feed_all(dimse.Assembler(), raws)
    assert isinstance(msg, MessageReceived)
    assert msg.context_id == 3
    assert msg.command[commands.MESSAGE_ID] == 7
    assert msg.command[commands.AFFECTED_SOP_INSTANCE] == "1.2.3.4"
    assert msg.data == b"\x08\x00\x16\x00" + b"x" * 5000


def test_our_fragments_decode_with_pynetdicom() -> None:
    data = b"\x08\x00\x16\x00" + b"y" * 7000
    message = DIMSEMessage()
    done = [message.decode_msg(_primitive(raw)) for raw in dimse.fragments(9, STORE, data, 512)]
    assert done[-1] and not any(done[:-1])
    assert type(message).__name__ == "C_STORE_RQ"
    assert message.context_id == 9
    assert message.command_set.MessageID == 9
    assert message.command_set.AffectedSOPInstanceUID == "1.2.3.4"
    assert message.data_set.getvalue() == data


def _primitive(raw: bytes) -> object:
    tf = P_DATA_TF()
    tf.decode(raw)
    return tf.to_primitive()


# -- violations ------------------------------------------------------------------------

def _command_bytes(command: dict[int, int | str]) -> bytes:
    return commands.encode(command)


def test_data_before_command_completes() -> None:
    asm = dimse.Assembler()
    raw = _command_bytes(STORE)
    assert asm.feed(1, True, False, raw[:10]) == []
    with pytest.raises(dimse.DimseError, match="before the command set is complete"):
        asm.feed(1, False, True, b"x")


def test_data_after_a_command_without_data_set() -> None:
    asm = dimse.Assembler()
    assert len(asm.feed(1, True, True, _command_bytes(ECHO))) == 1
    with pytest.raises(dimse.DimseError, match="without a command set announcing a data set"):
        asm.feed(1, False, True, b"x")


def test_context_change_mid_message() -> None:
    asm = dimse.Assembler()
    asm.feed(1, True, True, _command_bytes(STORE))
    with pytest.raises(dimse.DimseError, match="changed mid-message from 1 to 3"):
        asm.feed(3, False, True, b"x")


def test_command_amid_data_set() -> None:
    asm = dimse.Assembler()
    asm.feed(1, True, True, _command_bytes(STORE))
    asm.feed(1, False, False, b"x")
    assert not asm.idle
    with pytest.raises(dimse.DimseError, match="command fragment while the data set"):
        asm.feed(1, True, True, _command_bytes(ECHO))


def test_bounds() -> None:
    with pytest.raises(dimse.DimseError, match="command set longer than 100"):
        dimse.Assembler(max_command=100).feed(1, True, False, b"\x00" * 101)
    asm = dimse.Assembler(max_data=10)
    asm.feed(1, True, True, _command_bytes(STORE))
    with pytest.raises(dimse.DimseError, match="data set longer than 10"):
        asm.feed(1, False, False, b"x" * 11)


def test_unreadable_command_set() -> None:
    with pytest.raises(dimse.DimseError, match="command set cannot be read"):
        dimse.Assembler().feed(1, True, True, b"\x00\x00\x00\x00\xff\x00\x00\x00")


def test_tiny_peer_pdu_length_is_refused() -> None:
    with pytest.raises(dimse.DimseError, match="leaves no room"):
        list(dimse.fragments(1, ECHO, None, 6))
