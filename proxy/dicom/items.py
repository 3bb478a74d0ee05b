"""A-ASSOCIATE items and user-information sub-items (PS3.8 9.3.2-9.3.4, PS3.7 D.3.3).

Job: the values an A-ASSOCIATE-RQ/AC carries besides its fixed fields — presentation
contexts and the user-information sub-items — encoded and parsed, both directions.

Rule 1: pure; bytes in, frozen values out. Every length is checked against the bytes
        present; anything malformed raises ``PduError`` naming the item, never
        IndexError, struct.error or UnicodeDecodeError.
Rule 2: ``parse_*(encode_*(x)) == x`` for every value these types can hold; text is
        ASCII, UIDs go out unpadded and come in with trailing NUL/space stripped.
Rule 3: sub-items this module does not know are kept, in order, in
        ``UserInformation.unknown`` and written back; top-level items of unknown
        type are skipped (PS3.8 9.3.1: unrecognised items are ignored).
Rule 4: the codec checks shape, not policy: which values are acceptable is the
        negotiation's decision.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

APPLICATION_CONTEXT_ITEM, PRESENTATION_RQ_ITEM, PRESENTATION_AC_ITEM = 0x10, 0x20, 0x21
ABSTRACT_SYNTAX, TRANSFER_SYNTAX, USER_INFORMATION = 0x30, 0x40, 0x50
MAX_LENGTH, IMPLEMENTATION_UID, ASYNC_WINDOW, ROLE_SELECTION = 0x51, 0x52, 0x53, 0x54
IMPLEMENTATION_VERSION, EXTENDED, COMMON_EXTENDED = 0x55, 0x56, 0x57
USER_IDENTITY_RQ, USER_IDENTITY_AC = 0x58, 0x59
_H, _L = struct.Struct(">H"), struct.Struct(">L")


class PduError(ValueError):
    """Bytes that are not a PDU as PS3.8 defines it; the message says what is wrong."""


@dataclass(frozen=True)
class PresentationContextRQ:
    context_id: int                       # odd, 1-255
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class PresentationContextAC:
    context_id: int
    result: int                           # 0 acceptance, 1-4 PS3.8 Table 9-18
    transfer_syntax: str = ""             # not significant unless accepted


@dataclass(frozen=True)
class RoleSelection:
    sop_class_uid: str
    scu_role: bool
    scp_role: bool


@dataclass(frozen=True)
class ExtendedNegotiation:
    sop_class_uid: str
    info: bytes                           # service-class-application-information


@dataclass(frozen=True)
class CommonExtendedNegotiation:
    sop_class_uid: str
    service_class_uid: str
    related_general_sop_classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class UserIdentityRQ:
    kind: int                             # 1 username, 2 +passcode, 3 Kerberos, 4 SAML, 5 JWT
    positive_response_requested: bool
    primary: bytes
    secondary: bytes = b""


@dataclass(frozen=True)
class UserIdentityAC:
    server_response: bytes


@dataclass(frozen=True)
class UserInformation:
    max_length: int | None = None         # 0 = no limit (PS3.8 D.1)
    implementation_class_uid: str | None = None
    implementation_version: str | None = None
    async_window: tuple[int, int] | None = None   # (invoked, performed)
    roles: tuple[RoleSelection, ...] = ()
    extended: tuple[ExtendedNegotiation, ...] = ()
    common_extended: tuple[CommonExtendedNegotiation, ...] = ()
    identity_rq: UserIdentityRQ | None = None
    identity_ac: UserIdentityAC | None = None
    unknown: tuple[tuple[int, bytes], ...] = ()


def item(kind: int, value: bytes, reserved: int = 0) -> bytes:
    if len(value) > 0xFFFF:
        raise PduError(f"item 0x{kind:02X} of {len(value)} bytes does not fit its 2-byte length")
    return struct.pack(">BBH", kind, reserved, len(value)) + value


def items(body: memoryview, start: int = 0) -> list[tuple[int, memoryview]]:
    """The (type, value) items from ``start`` to the end of ``body``."""
    out: list[tuple[int, memoryview]] = []
    at = start
    while at < len(body):
        if at + 4 > len(body):
            raise PduError(f"truncated item header at byte {at}")
        kind, length = body[at], _H.unpack_from(body, at + 2)[0]
        if at + 4 + length > len(body):
            raise PduError(f"item 0x{kind:02X} claims {length} bytes past the end of its parent")
        out.append((kind, body[at + 4:at + 4 + length]))
        at += 4 + length
    return out


def text(value: memoryview | bytes, what: str) -> str:
    try:
        return bytes(value).decode("ascii").rstrip("\x00 ")
    except UnicodeDecodeError:
        raise PduError(f"{what} is not ASCII") from None


def ascii_bytes(value: str, what: str) -> bytes:
    try:
        return value.encode("ascii")
    except UnicodeEncodeError:
        raise PduError(f"{what} {value!r} is not ASCII") from None


def _counted(view: memoryview, at: int, what: str) -> tuple[memoryview, int]:
    """A 2-byte length followed by that many bytes, starting at ``at``."""
    if at + 2 > len(view):
        raise PduError(f"{what}: truncated length field")
    n = _H.unpack_from(view, at)[0]
    if at + 2 + n > len(view):
        raise PduError(f"{what}: length {n} runs past the end of its item")
    return view[at + 2:at + 2 + n], at + 2 + n


def _with_length(raw: bytes) -> bytes:
    return _H.pack(len(raw)) + raw


def encode_context_rq(cx: PresentationContextRQ) -> bytes:
    sub = item(ABSTRACT_SYNTAX, ascii_bytes(cx.abstract_syntax, "abstract syntax"))
    sub += b"".join(item(TRANSFER_SYNTAX, ascii_bytes(ts, "transfer syntax"))
                    for ts in cx.transfer_syntaxes)
    return item(PRESENTATION_RQ_ITEM, bytes((cx.context_id, 0, 0, 0)) + sub)


def parse_context_rq(value: memoryview) -> PresentationContextRQ:
    if len(value) < 4:
        raise PduError("presentation context item (RQ) shorter than 4 bytes")
    abstract: list[str] = []
    syntaxes: list[str] = []
    for kind, sub in items(value, 4):
        if kind == ABSTRACT_SYNTAX:
            abstract.append(text(sub, "abstract syntax"))
        elif kind == TRANSFER_SYNTAX:
            syntaxes.append(text(sub, "transfer syntax"))
    if len(abstract) != 1:
        raise PduError(f"presentation context {value[0]} has {len(abstract)} abstract syntaxes, "
                       "not 1")
    return PresentationContextRQ(value[0], abstract[0], tuple(syntaxes))


def encode_context_ac(cx: PresentationContextAC) -> bytes:
    ts = item(TRANSFER_SYNTAX, ascii_bytes(cx.transfer_syntax, "transfer syntax"))
    return item(PRESENTATION_AC_ITEM, bytes((cx.context_id, 0, cx.result, 0)) + ts)


def parse_context_ac(value: memoryview) -> PresentationContextAC:
    if len(value) < 4:
        raise PduError("presentation context item (AC) shorter than 4 bytes")
    syntaxes = [text(sub, "transfer syntax") for kind, sub in items(value, 4)
                if kind == TRANSFER_SYNTAX]
    if len(syntaxes) > 1:
        raise PduError(f"presentation context {value[0]} (AC) has {len(syntaxes)} "
                       "transfer syntaxes")
    return PresentationContextAC(value[0], value[2], syntaxes[0] if syntaxes else "")


def encode_user_information(user: UserInformation) -> bytes:
    """Sub-items in PS3.7 D.3.3 order: max length, implementation UID, window, roles, ..."""
    out: list[bytes] = []
    if user.max_length is not None:
        out.append(item(MAX_LENGTH, _L.pack(user.max_length)))
    if user.implementation_class_uid is not None:
        out.append(item(IMPLEMENTATION_UID,
                        ascii_bytes(user.implementation_class_uid, "implementation class UID")))
    if user.async_window is not None:
        out.append(item(ASYNC_WINDOW, struct.pack(">HH", *user.async_window)))
    for role in user.roles:
        out.append(item(ROLE_SELECTION, _with_length(ascii_bytes(role.sop_class_uid, "role UID"))
                        + bytes((int(role.scu_role), int(role.scp_role)))))
    if user.implementation_version is not None:
        out.append(item(IMPLEMENTATION_VERSION,
                        ascii_bytes(user.implementation_version, "implementation version")))
    for ext in user.extended:
        out.append(item(EXTENDED, _with_length(ascii_bytes(ext.sop_class_uid, "SOP class UID"))
                        + ext.info))
    for com in user.common_extended:
        related = b"".join(_with_length(ascii_bytes(uid, "related SOP class UID"))
                           for uid in com.related_general_sop_classes)
        out.append(item(COMMON_EXTENDED,
                        _with_length(ascii_bytes(com.sop_class_uid, "SOP class UID"))
                        + _with_length(ascii_bytes(com.service_class_uid, "service class UID"))
                        + _with_length(related)))
    if (idn := user.identity_rq) is not None:
        out.append(item(USER_IDENTITY_RQ, bytes((idn.kind, int(idn.positive_response_requested)))
                        + _with_length(idn.primary) + _with_length(idn.secondary)))
    if user.identity_ac is not None:
        out.append(item(USER_IDENTITY_AC, _with_length(user.identity_ac.server_response)))
    out.extend(item(kind, raw) for kind, raw in user.unknown)
    return item(USER_INFORMATION, b"".join(out))


def _fixed(value: memoryview, size: int, what: str) -> memoryview:
    if len(value) != size:
        raise PduError(f"{what} sub-item is {len(value)} bytes, not {size}")
    return value


def parse_user_information(value: memoryview) -> UserInformation:
    fields: dict[str, object] = {}
    roles: list[RoleSelection] = []
    extended: list[ExtendedNegotiation] = []
    common: list[CommonExtendedNegotiation] = []
    unknown: list[tuple[int, bytes]] = []
    for kind, sub in items(value):
        if kind == MAX_LENGTH:
            fields["max_length"] = _L.unpack(_fixed(sub, 4, "maximum length"))[0]
        elif kind == IMPLEMENTATION_UID:
            fields["implementation_class_uid"] = text(sub, "implementation class UID")
        elif kind == IMPLEMENTATION_VERSION:
            fields["implementation_version"] = text(sub, "implementation version name")
        elif kind == ASYNC_WINDOW:
            fields["async_window"] = struct.unpack(">HH", _fixed(sub, 4, "asynchronous window"))
        elif kind == ROLE_SELECTION:
            uid, at = _counted(sub, 0, "role selection")
            flags = _fixed(sub[at:], 2, "role selection flags")
            roles.append(RoleSelection(text(uid, "role SOP class UID"),
                                       bool(flags[0]), bool(flags[1])))
        elif kind == EXTENDED:
            uid, at = _counted(sub, 0, "SOP class extended negotiation")
            extended.append(ExtendedNegotiation(text(uid, "SOP class UID"), bytes(sub[at:])))
        elif kind == COMMON_EXTENDED:
            common.append(_parse_common(sub))
        elif kind == USER_IDENTITY_RQ:
            if len(sub) < 2:
                raise PduError("user identity (RQ) sub-item shorter than 2 bytes")
            primary, at = _counted(sub, 2, "user identity primary field")
            secondary, at = _counted(sub, at, "user identity secondary field")
            fields["identity_rq"] = UserIdentityRQ(sub[0], bool(sub[1]), bytes(primary),
                                                   bytes(secondary))
        elif kind == USER_IDENTITY_AC:
            response, _ = _counted(sub, 0, "user identity server response")
            fields["identity_ac"] = UserIdentityAC(bytes(response))
        else:
            unknown.append((kind, bytes(sub)))
    return UserInformation(roles=tuple(roles), extended=tuple(extended),
                           common_extended=tuple(common), unknown=tuple(unknown),
                           **fields)  # type: ignore[arg-type]


def _parse_common(sub: memoryview) -> CommonExtendedNegotiation:
    what = "SOP class common extended negotiation"
    uid, at = _counted(sub, 0, what)
    service, at = _counted(sub, at, what)
    related, at = _counted(sub, at, what)
    uids: list[str] = []
    pos = 0
    while pos < len(related):
        one, pos = _counted(related, pos, what + " related SOP class")
        uids.append(text(one, "related general SOP class UID"))
    return CommonExtendedNegotiation(text(uid, "SOP class UID"), text(service, "service class UID"),
                                     tuple(uids))
