"""DIMSE command sets (PS3.7 9.3, E.1): group 0000 in Implicit VR Little Endian, both ways.

Rule 1: pure; a command is a ``dict`` of element number (the low 16 bits of
        (0000,xxxx)) to value — ``int`` for US/UL, ``str`` for UI/AE/LO.
Rule 2: encoding writes elements in ascending order with (0000,0000) Command Group
        Length first (PS3.7 6.3.1); UIDs are padded with NUL, text with spaces, to
        an even length.
Rule 3: decoding keeps every element; the VR of the ones the proxy reads is known
        (``_INTS``), anything else stays text. A truncated element raises
        ``CommandError``.
"""

from __future__ import annotations

import struct

COMMAND_FIELD, MESSAGE_ID, RESPONDED_TO = 0x0100, 0x0110, 0x0120
AFFECTED_SOP_CLASS, AFFECTED_SOP_INSTANCE = 0x0002, 0x1000
REQUESTED_SOP_CLASS, REQUESTED_SOP_INSTANCE = 0x0003, 0x1001      # N-SET, N-GET... (E.1-1)
ATTRIBUTE_IDENTIFIER_LIST = 0x1005
EVENT_TYPE_ID, ACTION_TYPE_ID = 0x1002, 0x1008                    # N-EVENT-REPORT, N-ACTION
MOVE_DESTINATION = 0x0600
PRIORITY, DATA_SET_TYPE, STATUS, ERROR_COMMENT = 0x0700, 0x0800, 0x0900, 0x0902
OFFENDING_ELEMENT, ERROR_ID = 0x0901, 0x0903
MOVE_ORIGINATOR_AE, MOVE_ORIGINATOR_ID = 0x1030, 0x1031
REMAINING, COMPLETED, FAILED, WARNING = 0x1020, 0x1021, 0x1022, 0x1023
NO_DATA_SET = 0x0101

C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_GET_RQ, C_GET_RSP = 0x0010, 0x8010
C_FIND_RQ, C_FIND_RSP = 0x0020, 0x8020
C_MOVE_RQ, C_MOVE_RSP = 0x0021, 0x8021
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
C_CANCEL_RQ = 0x0FFF
N_EVENT_REPORT_RQ, N_GET_RQ, N_SET_RQ = 0x0100, 0x0110, 0x0120
N_ACTION_RQ, N_CREATE_RQ, N_DELETE_RQ = 0x0130, 0x0140, 0x0150
N_SET_RSP, N_CREATE_RSP = 0x8120, 0x8140
N_EVENT_REPORT_RSP, N_ACTION_RSP = 0x8100, 0x8130

# The DIMSE operation each request command field stands for (PS3.7 Table E.1-1).
OPERATIONS = {C_STORE_RQ: "C-STORE", C_GET_RQ: "C-GET", C_FIND_RQ: "C-FIND",
              C_MOVE_RQ: "C-MOVE", C_ECHO_RQ: "C-ECHO", C_CANCEL_RQ: "C-CANCEL",
              N_EVENT_REPORT_RQ: "N-EVENT-REPORT", N_GET_RQ: "N-GET", N_SET_RQ: "N-SET",
              N_ACTION_RQ: "N-ACTION", N_CREATE_RQ: "N-CREATE", N_DELETE_RQ: "N-DELETE"}

_UL = {0x0000}
_INTS = {COMMAND_FIELD, MESSAGE_ID, RESPONDED_TO, PRIORITY, DATA_SET_TYPE, STATUS,
         MOVE_ORIGINATOR_ID, REMAINING, COMPLETED, FAILED, WARNING, ERROR_ID, 0x0000,
         EVENT_TYPE_ID, ACTION_TYPE_ID}
# AT: read as "ggggeeee" values joined by "\"
_TAGS = {OFFENDING_ELEMENT, ATTRIBUTE_IDENTIFIER_LIST}
_UIDS = {AFFECTED_SOP_CLASS, AFFECTED_SOP_INSTANCE, REQUESTED_SOP_CLASS,
         REQUESTED_SOP_INSTANCE}
_ELEMENT = struct.Struct("<HHL")

Command = dict[int, "int | str"]


class CommandError(ValueError):
    """A command set that cannot be read."""


def encode(command: Command) -> bytes:
    body = bytearray()
    for elem in sorted(command):
        value = command[elem]
        if isinstance(value, int):
            raw = struct.pack("<L" if elem in _UL else "<H", value)
        elif elem in _TAGS:
            raw = b"".join(struct.pack("<HH", int(t[:4], 16), int(t[4:], 16))
                           for t in value.split("\\") if t)
        else:
            raw = value.encode("ascii")
            if len(raw) % 2:
                raw += b"\x00" if elem in _UIDS else b" "
        body += _ELEMENT.pack(0, elem, len(raw)) + raw
    return _ELEMENT.pack(0, 0, 4) + struct.pack("<L", len(body)) + bytes(body)


def decode(data: bytes) -> Command:
    out: Command = {}
    at = 0
    while at < len(data):
        if at + 8 > len(data):
            raise CommandError("truncated command element header")
        group, elem, length = _ELEMENT.unpack_from(data, at)
        value = data[at + 8:at + 8 + length]
        if group != 0 or len(value) != length:
            raise CommandError(f"command element ({group:04X},{elem:04X}) is not a "
                               "complete group 0000 element")
        if elem in _INTS and length in (2, 4):
            out[elem] = int.from_bytes(value, "little")
        elif elem in _TAGS and length % 4 == 0:
            out[elem] = "\\".join(f"{g:04X}{e:04X}"
                                    for g, e in struct.iter_unpack("<HH", value))
        else:
            out[elem] = bytes(value).decode("ascii", "replace").rstrip("\x00 ")
        at += 8 + length
    return out


def has_data_set(command: Command) -> bool:
    return command.get(DATA_SET_TYPE, NO_DATA_SET) != NO_DATA_SET


def c_get_rq(msg_id: int, sop_class: str, priority: int = 0) -> bytes:
    return encode({AFFECTED_SOP_CLASS: sop_class, COMMAND_FIELD: C_GET_RQ, MESSAGE_ID: msg_id,
                   PRIORITY: priority, DATA_SET_TYPE: 0x0000})


def c_find_rq(msg_id: int, sop_class: str, priority: int = 0) -> bytes:
    return encode({AFFECTED_SOP_CLASS: sop_class, COMMAND_FIELD: C_FIND_RQ, MESSAGE_ID: msg_id,
                   PRIORITY: priority, DATA_SET_TYPE: 0x0000})


def c_move_rq(msg_id: int, sop_class: str, move_destination: str, priority: int = 0) -> bytes:
    """PS3.7 9.3.4.1: Move Destination (0000,0600) is the AE title the archive stores to."""
    return encode({AFFECTED_SOP_CLASS: sop_class, COMMAND_FIELD: C_MOVE_RQ, MESSAGE_ID: msg_id,
                   PRIORITY: priority, DATA_SET_TYPE: 0x0000,
                   MOVE_DESTINATION: move_destination})


def c_echo_rq(msg_id: int, sop_class: str = "1.2.840.10008.1.1") -> bytes:
    """PS3.7 9.3.5.1: Verification, no data set."""
    return encode({AFFECTED_SOP_CLASS: sop_class, COMMAND_FIELD: C_ECHO_RQ, MESSAGE_ID: msg_id,
                   DATA_SET_TYPE: NO_DATA_SET})


def c_cancel_rq(responded_to: int) -> bytes:
    return encode({COMMAND_FIELD: C_CANCEL_RQ, RESPONDED_TO: responded_to,
                   DATA_SET_TYPE: NO_DATA_SET})


def c_store_rq(msg_id: int, sop_class: str, sop_instance: str, originator_ae: str | None = None,
               originator_id: int | None = None, priority: int = 0) -> bytes:
    return encode(store_rq(msg_id, sop_class, sop_instance, originator_ae, originator_id,
                           priority))


def store_rq(msg_id: int, sop_class: str, sop_instance: str, originator_ae: str | None = None,
             originator_id: int | None = None, priority: int = 0) -> Command:
    """A C-STORE-RQ command set, not yet encoded."""
    command: Command = {AFFECTED_SOP_CLASS: sop_class, COMMAND_FIELD: C_STORE_RQ,
                        MESSAGE_ID: msg_id, PRIORITY: priority, DATA_SET_TYPE: 0x0000,
                        AFFECTED_SOP_INSTANCE: sop_instance}
    if originator_ae and originator_id is not None:
        command[MOVE_ORIGINATOR_AE] = originator_ae
        command[MOVE_ORIGINATOR_ID] = originator_id
    return command


def c_store_rsp(responded_to: int, sop_class: str, sop_instance: str, status: int) -> bytes:
    return encode({AFFECTED_SOP_CLASS: sop_class, COMMAND_FIELD: C_STORE_RSP,
                   RESPONDED_TO: responded_to, DATA_SET_TYPE: NO_DATA_SET, STATUS: status,
                   AFFECTED_SOP_INSTANCE: sop_instance})


def operation_name(command_field: int) -> str:
    """The DIMSE operation a request command field names (``N-ACTION``), or its hex."""
    return OPERATIONS.get(command_field, f"0x{command_field:04X}")


def n_create_rq(msg_id: int, sop_class: str, sop_instance: str, data_set: bool = True) -> bytes:
    """PS3.7 10.3.5.1: Affected SOP Class and Instance UID (the instance the SCU, or the
    proxy for it, chose: PS3.4 F.7.2.1.1), an Attribute List data set."""
    return encode({AFFECTED_SOP_CLASS: sop_class, COMMAND_FIELD: N_CREATE_RQ, MESSAGE_ID: msg_id,
                   DATA_SET_TYPE: 0x0000 if data_set else NO_DATA_SET,
                   AFFECTED_SOP_INSTANCE: sop_instance})


def n_set_rq(msg_id: int, sop_class: str, sop_instance: str, data_set: bool = True) -> bytes:
    """PS3.7 10.3.3.1: Requested SOP Class and Instance UID, a Modification List data set."""
    return encode({REQUESTED_SOP_CLASS: sop_class, COMMAND_FIELD: N_SET_RQ, MESSAGE_ID: msg_id,
                   DATA_SET_TYPE: 0x0000 if data_set else NO_DATA_SET,
                   REQUESTED_SOP_INSTANCE: sop_instance})


def n_action_rq(msg_id: int, sop_class: str, sop_instance: str, action_type: int,
                data_set: bool = True) -> bytes:
    """PS3.7 10.3.4.1: Requested SOP Class and Instance UID, Action Type ID, an Action
    Information data set (Storage Commitment: PS3.4 J.3.2.1)."""
    return encode({REQUESTED_SOP_CLASS: sop_class, COMMAND_FIELD: N_ACTION_RQ,
                   MESSAGE_ID: msg_id, DATA_SET_TYPE: 0x0000 if data_set else NO_DATA_SET,
                   REQUESTED_SOP_INSTANCE: sop_instance, ACTION_TYPE_ID: action_type})


def n_event_report_rq(msg_id: int, sop_class: str, sop_instance: str, event_type: int,
                      data_set: bool = True) -> bytes:
    """PS3.7 10.3.1.1: Affected SOP Class and Instance UID, Event Type ID, an Event
    Information data set (Storage Commitment: PS3.4 J.3.3.1)."""
    return encode({AFFECTED_SOP_CLASS: sop_class, COMMAND_FIELD: N_EVENT_REPORT_RQ,
                   MESSAGE_ID: msg_id, DATA_SET_TYPE: 0x0000 if data_set else NO_DATA_SET,
                   AFFECTED_SOP_INSTANCE: sop_instance, EVENT_TYPE_ID: event_type})
