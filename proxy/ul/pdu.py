"""DICOM Upper Layer PDUs (PS3.8 9.3): the few the bulk path needs, encoded and parsed.

Rule 1: pure — bytes in, values out; no sockets. Every length is checked against
        the bytes actually present; a malformed PDU raises ``PduError`` naming what
        is wrong, never IndexError or struct.error.
Rule 2: only the requestor's side: A-ASSOCIATE-RQ is encoded, A-ASSOCIATE-AC/RJ are
        parsed; P-DATA-TF, A-RELEASE-RQ/RP and A-ABORT both ways.
Rule 3: an AE title goes on the wire padded with spaces to 16 bytes; UIDs as ASCII,
        no padding (PS3.8 9.3.2: items carry their own length).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07
PDU_TYPES = frozenset(range(0x01, 0x08))
HEADER = struct.Struct(">BxL")            # PDU type, reserved, length
PDV_HEADER = struct.Struct(">LBB")        # item length, context ID, message control header
RELEASE_RQ = HEADER.pack(A_RELEASE_RQ, 4) + b"\x00" * 4
RELEASE_RP = HEADER.pack(A_RELEASE_RP, 4) + b"\x00" * 4


class PduError(ValueError):
    """A PDU that does not follow PS3.8."""


@dataclass(frozen=True)
class ProposedContext:
    context_id: int                       # odd, 1-255
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class RoleSelection:
    sop_class_uid: str
    scu_role: bool
    scp_role: bool


@dataclass(frozen=True)
class AssociateRequest:
    called_ae: str
    calling_ae: str
    contexts: Sequence[ProposedContext]
    max_pdu_length: int                   # what we accept; 0 = no limit
    implementation_class_uid: str
    implementation_version: str = ""
    roles: Sequence[RoleSelection] = ()


@dataclass
class AssociateAccept:
    max_pdu_length: int = 0               # what the acceptor accepts; 0 = no limit
    accepted: dict[int, str] = field(default_factory=dict)   # context ID -> transfer syntax
    refused: dict[int, int] = field(default_factory=dict)    # context ID -> result/reason
    scp_roles: dict[str, bool] = field(default_factory=dict)  # SOP class -> SCP role granted


@dataclass(frozen=True)
class AssociateReject:
    result: int
    source: int
    diagnostic: int


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(value)) + value


def _ae(title: str) -> bytes:
    # PS3.5 6.2 (AE): printable ASCII without backslash, not all spaces
    raw = title.encode("utf-8", "surrogatepass")
    if (not 0 < len(raw) <= 16 or not raw.strip(b" ")
            or any(c < 0x20 or c > 0x7E or c == 0x5C for c in raw)):
        raise PduError(f"AE title {title!r} must be 1 to 16 printable ASCII characters, "
                       "not all spaces, no backslash")
    return raw.ljust(16, b" ")


def encode_associate_rq(rq: AssociateRequest) -> bytes:
    """A-ASSOCIATE-RQ (PS3.8 9.3.2) with its presentation contexts and user information."""
    items = [_item(0x10, APPLICATION_CONTEXT.encode())]
    for cx in rq.contexts:
        if not (cx.context_id % 2 == 1 and 1 <= cx.context_id <= 255):
            raise PduError(f"presentation context ID {cx.context_id} must be odd, 1-255")
        sub = _item(0x30, cx.abstract_syntax.encode()) + b"".join(
            _item(0x40, ts.encode()) for ts in cx.transfer_syntaxes)
        items.append(_item(0x20, bytes((cx.context_id, 0, 0, 0)) + sub))
    user = [_item(0x51, struct.pack(">L", rq.max_pdu_length)),
            _item(0x52, rq.implementation_class_uid.encode())]
    for role in rq.roles:
        uid = role.sop_class_uid.encode()
        user.append(_item(0x54, struct.pack(">H", len(uid)) + uid
                          + bytes((int(role.scu_role), int(role.scp_role)))))
    if rq.implementation_version:
        user.append(_item(0x55, rq.implementation_version.encode()[:16]))
    items.append(_item(0x50, b"".join(user)))
    body = (struct.pack(">HH", 1, 0) + _ae(rq.called_ae) + _ae(rq.calling_ae) + b"\x00" * 32
            + b"".join(items))
    return HEADER.pack(A_ASSOCIATE_RQ, len(body)) + body


def _items(body: memoryview, start: int) -> list[tuple[int, memoryview]]:
    out: list[tuple[int, memoryview]] = []
    at = start
    while at < len(body):
        if at + 4 > len(body):
            raise PduError("truncated item header")
        kind, length = body[at], struct.unpack_from(">H", body, at + 2)[0]
        if at + 4 + length > len(body):
            raise PduError(f"item 0x{kind:02X} claims {length} bytes past the end of its PDU")
        out.append((kind, body[at + 4:at + 4 + length]))
        at += 4 + length
    return out


def _uid(value: memoryview) -> str:
    return bytes(value).decode("ascii", "replace").rstrip("\x00 ")


def parse_associate_ac(body: bytes) -> AssociateAccept:
    """The variable part of an A-ASSOCIATE-AC (everything after the 6-byte header)."""
    view = memoryview(body)
    if len(view) < 68:
        raise PduError("A-ASSOCIATE-AC shorter than its fixed fields")
    ac = AssociateAccept()
    for kind, value in _items(view, 68):
        if kind == 0x21:
            if len(value) < 4:
                raise PduError("presentation context item too short")
            cx_id, result = value[0], value[2]
            syntaxes = [_uid(v) for k, v in _items(value, 4) if k == 0x40]
            if result == 0 and syntaxes:
                ac.accepted[cx_id] = syntaxes[0]
            else:
                ac.refused[cx_id] = result
        elif kind == 0x50:
            for sub, sval in _items(value, 0):
                if sub == 0x51 and len(sval) == 4:
                    ac.max_pdu_length = struct.unpack(">L", sval)[0]
                elif sub == 0x54 and len(sval) >= 4:
                    n = struct.unpack_from(">H", sval)[0]
                    if len(sval) >= 2 + n + 2:
                        ac.scp_roles[_uid(sval[2:2 + n])] = bool(sval[2 + n + 1])
    return ac


def parse_associate_rj(body: bytes) -> AssociateReject:
    if len(body) < 4:
        raise PduError("A-ASSOCIATE-RJ shorter than 4 bytes")
    return AssociateReject(body[1], body[2], body[3])


def abort(source: int = 0, reason: int = 0) -> bytes:
    """A-ABORT (PS3.8 9.3.8); source 0 = service user, 2 = service provider."""
    return HEADER.pack(A_ABORT, 4) + bytes((0, 0, source, reason))


def pdv_items(body: memoryview) -> list[tuple[int, int, memoryview]]:
    """The PDV items of a P-DATA-TF body: (context ID, control header, fragment)."""
    out: list[tuple[int, int, memoryview]] = []
    at = 0
    while at < len(body):
        if at + 6 > len(body):
            raise PduError("truncated PDV item header")
        length, cx, control = PDV_HEADER.unpack_from(body, at)
        if length < 2 or at + 4 + length > len(body):
            raise PduError(f"PDV item length {length} does not fit its P-DATA-TF")
        out.append((cx, control, body[at + 6:at + 4 + length]))
        at += 4 + length
    return out


def pdata_header(context_id: int, control: int, fragment_length: int) -> bytes:
    """The 12 bytes before a fragment sent alone in its P-DATA-TF."""
    return (HEADER.pack(P_DATA_TF, fragment_length + 6)
            + PDV_HEADER.pack(fragment_length + 2, context_id, control))
