"""DICOM Upper Layer PDUs (PS3.8 9.3): all seven types, encoded and parsed, both roles.

Job: turn the bytes of one PDU into a frozen value and back — A-ASSOCIATE-RQ/AC/RJ,
P-DATA-TF with its PDVs, A-RELEASE-RQ/RP, A-ABORT — for the acceptor and the
requestor alike. Framing (where one PDU ends in a byte stream) is ``frame``.

Rule 1: pure; no sockets, no clocks. ``parse(encode(p)) == p`` for every PDU value.
Rule 2: every length is checked against the bytes present; anything malformed raises
        ``PduError`` naming what is wrong — never IndexError, struct.error or
        UnicodeDecodeError (tests fuzz this).
Rule 3: ``frame`` reads only the 6-byte header before deciding: a header claiming more
        than the caller's limit is an error before a byte of the body is buffered, so
        a 4 GB length costs nothing.
Rule 4: an AE title goes out space-padded to 16 bytes and comes back stripped
        (PS3.8 9.3.2: leading and trailing spaces are not significant).
Rule 5: A-RELEASE-RQ/RP and A-ABORT are exactly 4 bytes long (PS3.8 9.3.6-9.3.8); a
        P-DATA-TF holds at least one PDV whose control header uses only bits 0-1.
Rule 6: a parsed PDV's data is a ``memoryview`` of the PDU bytes, not a copy: a data set
        fragment is copied only where it is finally kept. Parsed from ``bytes`` it is
        read-only and never changes; parsed from a ``memoryview`` it lasts as long as
        the bytes under that view stay unchanged (the caller's buffer).
Rule 7: ``check_request`` is the requestor's own stricter check of what it proposes:
        AE titles per PS3.5 6.2 (1-16 printable ASCII, no backslash, not all spaces),
        presentation context IDs odd, 1-255 (PS3.8 9.3.2.2).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from proxy.dicom.items import (
    APPLICATION_CONTEXT_ITEM,
    PRESENTATION_AC_ITEM,
    PRESENTATION_RQ_ITEM,
    USER_INFORMATION,
    PduError,
    PresentationContextAC,
    PresentationContextRQ,
    UserInformation,
    ascii_bytes,
    encode_context_ac,
    encode_context_rq,
    encode_user_information,
    item,
    items,
    parse_context_ac,
    parse_context_rq,
    parse_user_information,
    text,
)

__all__ = ["PduError"]

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07
HEADER = struct.Struct(">BxL")            # PDU type, reserved, length
PDV_HEADER = struct.Struct(">LBB")        # item length, context ID, message control header
COMMAND, LAST = 0x01, 0x02                # message control header bits (PS3.8 E.2)
_PDV_UNPACK = PDV_HEADER.unpack_from
_FIXED = 68                               # A-ASSOCIATE-RQ/AC fields before the items


@dataclass(frozen=True)
class AssociateRQ:
    called_ae: str
    calling_ae: str
    contexts: tuple[PresentationContextRQ, ...]
    user: UserInformation = field(default_factory=UserInformation)
    application_context: str = APPLICATION_CONTEXT
    protocol_version: int = 1


@dataclass(frozen=True)
class AssociateAC:
    called_ae: str                        # echoed from the RQ, not tested (PS3.8 9.3.3.2)
    calling_ae: str
    contexts: tuple[PresentationContextAC, ...]
    user: UserInformation = field(default_factory=UserInformation)
    application_context: str = APPLICATION_CONTEXT
    protocol_version: int = 1


@dataclass(frozen=True)
class AssociateRJ:
    result: int                           # 1 permanent, 2 transient
    source: int                           # 1 user, 2 ACSE provider, 3 presentation provider
    reason: int


@dataclass(frozen=True)
class Pdv:
    context_id: int
    is_command: bool
    is_last: bool
    data: bytes | memoryview              # parsed: a view into the PDU's bytes (Rule 6)


@dataclass(frozen=True)
class PData:
    pdvs: tuple[Pdv, ...]


@dataclass(frozen=True)
class ReleaseRQ:
    pass


@dataclass(frozen=True)
class ReleaseRP:
    pass


@dataclass(frozen=True)
class Abort:
    source: int = 0                       # 0 service user, 2 service provider
    reason: int = 0                       # PS3.8 Table 9-26 (provider only)


Pdu = AssociateRQ | AssociateAC | AssociateRJ | PData | ReleaseRQ | ReleaseRP | Abort


def _ae(title: str, what: str) -> bytes:
    raw = ascii_bytes(title, what)
    if len(raw) > 16:
        raise PduError(f"{what} {title!r} is longer than 16 bytes")
    return raw.ljust(16, b" ")


def _associate(kind: int, pdu: AssociateRQ | AssociateAC, body_items: bytes) -> bytes:
    body = (struct.pack(">HH", pdu.protocol_version, 0) + _ae(pdu.called_ae, "called AE title")
            + _ae(pdu.calling_ae, "calling AE title") + b"\x00" * 32
            + item(APPLICATION_CONTEXT_ITEM,
                   ascii_bytes(pdu.application_context, "application context"))
            + body_items + encode_user_information(pdu.user))
    return HEADER.pack(kind, len(body)) + body


def check_request(rq: AssociateRQ) -> None:
    """Rule 7: ``PduError`` naming the first field this side must not propose."""
    for which, title in (("called", rq.called_ae), ("calling", rq.calling_ae)):
        raw = title.encode("utf-8", "surrogatepass")
        if (not 0 < len(raw) <= 16 or not raw.strip(b" ")
                or any(c < 0x20 or c > 0x7E or c == 0x5C for c in raw)):
            raise PduError(f"{which} AE title {title!r} must be 1 to 16 printable ASCII "
                           "characters, not all spaces, no backslash")
    for cx in rq.contexts:
        if not (cx.context_id % 2 == 1 and 1 <= cx.context_id <= 255):
            raise PduError(f"presentation context ID {cx.context_id} must be odd, 1-255")


def pdv_header(context_id: int, is_command: bool, is_last: bool, length: int) -> bytes:
    """The 6 bytes before a PDV fragment of ``length`` bytes."""
    return PDV_HEADER.pack(length + 2, context_id, COMMAND * is_command | LAST * is_last)


def encode(pdu: Pdu) -> bytes:
    if isinstance(pdu, AssociateRQ):
        return _associate(A_ASSOCIATE_RQ, pdu, b"".join(map(encode_context_rq, pdu.contexts)))
    if isinstance(pdu, AssociateAC):
        return _associate(A_ASSOCIATE_AC, pdu, b"".join(map(encode_context_ac, pdu.contexts)))
    if isinstance(pdu, AssociateRJ):
        return HEADER.pack(A_ASSOCIATE_RJ, 4) + bytes((0, pdu.result, pdu.source, pdu.reason))
    if isinstance(pdu, PData):
        body = b"".join(pdv_header(p.context_id, p.is_command, p.is_last, len(p.data)) + p.data
                        for p in pdu.pdvs)
        return HEADER.pack(P_DATA_TF, len(body)) + body
    if isinstance(pdu, ReleaseRQ):
        return HEADER.pack(A_RELEASE_RQ, 4) + b"\x00" * 4
    if isinstance(pdu, ReleaseRP):
        return HEADER.pack(A_RELEASE_RP, 4) + b"\x00" * 4
    return HEADER.pack(A_ABORT, 4) + bytes((0, 0, pdu.source, pdu.reason))


def frame(buffer: bytes | bytearray | memoryview, limit: int) -> tuple[int, int] | None:
    """(PDU type, total length) of the PDU at the start of ``buffer`` if it is all there.

    None while fewer bytes are present; ``PduError`` at once for an unknown type or a
    length over ``limit`` (Rule 3).
    """
    if len(buffer) < HEADER.size:
        return None
    kind, length = HEADER.unpack_from(buffer)
    if not A_ASSOCIATE_RQ <= kind <= A_ABORT:
        raise PduError(f"unrecognised PDU type 0x{kind:02X}")
    if length > limit:
        raise PduError(f"a {length}-byte PDU (type 0x{kind:02X}) exceeds the limit of {limit} "
                       "bytes; closed without reading it")
    total: int = HEADER.size + length
    return (kind, total) if len(buffer) >= total else None


def parse(data: bytes | bytearray | memoryview) -> Pdu:
    """One whole PDU, header included; trailing bytes are an error. A ``memoryview`` is
    parsed where it lies (its PDVs are views of it: its owner keeps those bytes as they
    are while they are used); a ``bytearray`` is copied first (Rule 6)."""
    view = data if isinstance(data, memoryview) else memoryview(
        data if isinstance(data, bytes) else bytes(data))
    if len(view) < HEADER.size:
        raise PduError(f"PDU of {len(view)} bytes is shorter than its 6-byte header")
    kind, length = HEADER.unpack_from(view)
    body = view[HEADER.size:]
    if length != len(body):
        raise PduError(f"PDU type 0x{kind:02X} claims {length} bytes but {len(body)} follow")
    if kind in (A_ASSOCIATE_RQ, A_ASSOCIATE_AC):
        return _parse_associate(kind, body)
    if kind == P_DATA_TF:
        return PData(tuple(pdvs(body)))
    if kind not in (A_ASSOCIATE_RJ, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT):
        raise PduError(f"unrecognised PDU type 0x{kind:02X}")
    if length != 4:
        raise PduError(f"PDU type 0x{kind:02X} is {length} bytes long, not 4")
    if kind == A_ASSOCIATE_RJ:
        return AssociateRJ(body[1], body[2], body[3])
    if kind == A_ABORT:
        return Abort(body[2], body[3])
    return ReleaseRQ() if kind == A_RELEASE_RQ else ReleaseRP()


def _parse_associate(kind: int, body: memoryview) -> AssociateRQ | AssociateAC:
    name = "A-ASSOCIATE-RQ" if kind == A_ASSOCIATE_RQ else "A-ASSOCIATE-AC"
    if len(body) < _FIXED:
        raise PduError(f"{name} is shorter than its {_FIXED} bytes of fixed fields")
    version = struct.unpack_from(">H", body)[0]
    called, calling = text(body[4:20], "called AE title"), text(body[20:36], "calling AE title")
    contexts_rq: list[PresentationContextRQ] = []
    contexts_ac: list[PresentationContextAC] = []
    app: list[str] = []
    user: list[UserInformation] = []
    for sub, value in items(body, _FIXED):
        if sub == APPLICATION_CONTEXT_ITEM:
            app.append(text(value, "application context"))
        elif sub == PRESENTATION_RQ_ITEM and kind == A_ASSOCIATE_RQ:
            contexts_rq.append(parse_context_rq(value))
        elif sub == PRESENTATION_AC_ITEM and kind == A_ASSOCIATE_AC:
            contexts_ac.append(parse_context_ac(value))
        elif sub == USER_INFORMATION:
            user.append(parse_user_information(value))
    if len(app) != 1 or len(user) > 1:
        raise PduError(f"{name} has {len(app)} application context items and {len(user)} "
                       "user information items (1 and 1 expected)")
    info = user[0] if user else UserInformation()
    if kind == A_ASSOCIATE_RQ:
        return AssociateRQ(called.strip(), calling.strip(), tuple(contexts_rq), info, app[0],
                           version)
    return AssociateAC(called.strip(), calling.strip(), tuple(contexts_ac), info, app[0], version)


def pdvs(body: memoryview) -> list[Pdv]:
    """The PDV items of a P-DATA-TF body (header excluded), each a view into ``body``."""
    return [Pdv(cx, bool(control & COMMAND), bool(control & LAST), data)
            for cx, control, data in pdv_items(body)]


def pdv_items(body: memoryview) -> list[tuple[int, int, memoryview]]:
    """``pdvs`` as (context ID, message control header, data) tuples: what a receiver
    on the bulk path takes, one per 16 KB of a data set, without a value object each."""
    out: list[tuple[int, int, memoryview]] = []
    at, size, unpack = 0, len(body), _PDV_UNPACK
    while at < size:
        if at + 6 > size:
            raise PduError(f"truncated PDV item header at byte {at} of the P-DATA-TF")
        length, cx, control = unpack(body, at)
        end = at + 4 + length
        if length < 2 or end > size:
            raise PduError(f"PDV item length {length} does not fit its P-DATA-TF")
        if control > 3:                       # bits 2-7 reserved (COMMAND | LAST == 3)
            raise PduError(f"PDV message control header 0x{control:02X} sets reserved bits")
        out.append((cx, control, body[at + 6:end]))
        at = end
    if not out:
        raise PduError("P-DATA-TF without a PDV item")
    return out
