"""The PROXY protocol header a load balancer puts before a connection's first byte.

Job: behind HAProxy (or any balancer speaking it) every connection to the proxy comes
from the balancer; the header it sends first names the workstation's real address
(HAProxy's "PROXY protocol" specification, versions 1 and 2). ``parse`` reads it; the
I/O driver (``proxy.dicom.io``) reads it only from the balancers ``[proxy]
proxy_protocol_from`` names, before any DICOM (or TLS) byte.

Rule 1: pure: bytes in, a ``Header`` (and how many bytes it took) out, or None while the
        header is not complete. Anything that is not a well-formed header raises
        ``ProxyProtocolError``: a balancer that was named must send one, and a peer that
        sends something else is not trusted with its claims.
Rule 2: version 1 is one text line ``PROXY TCP4|TCP6|UNKNOWN …\\r\\n`` of at most 107
        bytes; version 2 is the 12-byte signature, version 2 with command LOCAL or PROXY,
        address family INET or INET6 over STREAM (or UNSPEC), and a length of at most
        ``MAX_V2_LENGTH``. LOCAL (the balancer's own health check) and UNKNOWN/UNSPEC
        carry no address: the connection's own is used. TLVs are skipped.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107
MAX_V2_LENGTH = 4096
_V2_HEADER = struct.Struct("!12sBBH")


class ProxyProtocolError(ValueError):
    """Not a PROXY protocol header (Rule 1)."""


@dataclass(frozen=True)
class Header:
    source: tuple[str, int] | None        # the workstation's address; None: the socket's
    length: int                           # bytes of the header, to skip


def parse(data: bytes) -> Header | None:
    """The header at the start of ``data``, or None while it is incomplete (Rules 1-2)."""
    if data[:len(V2_SIGNATURE)] == V2_SIGNATURE[:len(data)] and len(data) < 16:
        return None                       # could still be a version 2 header
    if data.startswith(V2_SIGNATURE):
        return _v2(data)
    if V1_PREFIX.startswith(data[:len(V1_PREFIX)]) and len(data) < len(V1_PREFIX):
        return None
    if data.startswith(V1_PREFIX):
        return _v1(data)
    raise ProxyProtocolError("the connection did not start with a PROXY protocol header")


def _v1(data: bytes) -> Header | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyProtocolError("PROXY v1 line longer than 107 bytes")
        return None
    try:
        fields = data[:end].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyProtocolError("PROXY v1 line is not ASCII") from None
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return Header(None, end + 2)
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"malformed PROXY v1 line {data[:end]!r}")
    try:
        address = ipaddress.ip_address(fields[2])
        ipaddress.ip_address(fields[3])
        port = int(fields[4])
        int(fields[5])
    except ValueError:
        raise ProxyProtocolError(f"malformed PROXY v1 line {data[:end]!r}") from None
    if (address.version == 4) != (fields[1] == "TCP4") or not 0 <= port <= 65535:
        raise ProxyProtocolError(f"malformed PROXY v1 line {data[:end]!r}")
    return Header((str(address), port), end + 2)


def _v2(data: bytes) -> Header | None:
    _sig, version_command, family, length = _V2_HEADER.unpack_from(data)
    if version_command >> 4 != 2 or version_command & 0x0F not in (0, 1):
        raise ProxyProtocolError(f"PROXY v2 version/command byte 0x{version_command:02X}")
    if length > MAX_V2_LENGTH:
        raise ProxyProtocolError(f"PROXY v2 header of {length} bytes")
    total = 16 + length
    if len(data) < total:
        return None
    if version_command & 0x0F == 0:       # LOCAL: the balancer's own connection
        return Header(None, total)
    body = data[16:total]
    if family == 0x11 and length >= 12:   # TCP over IPv4
        src = ipaddress.IPv4Address(body[0:4])
        (port,) = struct.unpack_from("!H", body, 8)
        return Header((str(src), port), total)
    if family == 0x21 and length >= 36:   # TCP over IPv6
        src6 = ipaddress.IPv6Address(body[0:16])
        (port,) = struct.unpack_from("!H", body, 32)
        return Header((str(src6), port), total)
    if family == 0x00:                    # UNSPEC
        return Header(None, total)
    raise ProxyProtocolError(f"PROXY v2 address family 0x{family:02X} is not TCP")
