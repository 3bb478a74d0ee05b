"""proxy.dicom.proxyproto: HAProxy's PROXY protocol header, versions 1 and 2."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.dicom.proxyproto import V2_SIGNATURE, Header, ProxyProtocolError, parse

DICOM = b"\x01\x00\x00\x00\x00\xcc"     # what follows: an A-ASSOCIATE-RQ header


def v2(command: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family, len(body)) + body


def v2_tcp4(src: str, sport: int, tlv: bytes = b"") -> bytes:
    return v2(1, 0x11, ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(
        "127.0.0.4").packed + struct.pack("!HH", sport, 11112) + tlv)


def v2_tcp6(src: str, sport: int) -> bytes:
    return v2(1, 0x21, ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(
        "::1").packed + struct.pack("!HH", sport, 11112))


@pytest.mark.parametrize(("data", "expected"), [
    (b"PROXY TCP4 10.1.2.3 10.0.0.1 40000 11112\r\n", Header(("10.1.2.3", 40000), 42)),
    (b"PROXY TCP6 fd00::5 fd00::1 40000 11112\r\n", Header(("fd00::5", 40000), 40)),
    (b"PROXY UNKNOWN\r\n", Header(None, 15)),
    (b"PROXY UNKNOWN 10.1.2.3 10.0.0.1 1 2\r\n", Header(None, 37)),
    (v2_tcp4("10.1.2.3", 40000), Header(("10.1.2.3", 40000), 28)),
    (v2_tcp4("10.1.2.3", 40000, tlv=b"\x03\x00\x04abcd"), Header(("10.1.2.3", 40000), 35)),
    (v2_tcp6("fd00::5", 5), Header(("fd00::5", 5), 52)),
    (v2(0, 0x00, b""), Header(None, 16)),            # LOCAL: the balancer's health check
    (v2(1, 0x00, b""), Header(None, 16)),            # UNSPEC
], ids=["v1-tcp4", "v1-tcp6", "v1-unknown", "v1-unknown-with-fields", "v2-tcp4",
        "v2-tcp4-tlv", "v2-tcp6", "v2-local", "v2-unspec"])
def test_headers_name_the_workstation_and_their_length(data: bytes, expected: Header) -> None:
    assert parse(data + DICOM) == expected
    assert (data + DICOM)[expected.length:] == DICOM       # nothing after the header is taken


@pytest.mark.parametrize("data", [
    b"PROXY TCP4 10.1.2.3 10.0.0.1 40000 11112\r\n", v2_tcp4("10.1.2.3", 40000),
    v2_tcp6("fd00::5", 5)])
def test_an_incomplete_header_asks_for_more(data: bytes) -> None:
    for cut in range(len(data)):
        assert parse(data[:cut]) is None


@pytest.mark.parametrize("data", [
    DICOM + b"\x00" * 20,                                  # a workstation, not a balancer
    b"GET / HTTP/1.1\r\n\r\n",
    b"PROXY TCP4 10.1.2.3 10.0.0.1 40000\r\n",             # a field missing
    b"PROXY TCP4 fd00::5 10.0.0.1 40000 11112\r\n",        # family and address disagree
    b"PROXY TCP4 10.1.2.3 10.0.0.1 70000 11112\r\n",       # no such port
    b"PROXY TCP4 10.1.2.999 10.0.0.1 1 2\r\n",
    b"PROXY " + b"X" * 120,                                # no CRLF within 107 bytes
    V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\x00" * 12,     # version 3
    V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\x00" * 12,     # command 2
    V2_SIGNATURE + b"\x21\x12\x00\x0c" + b"\x00" * 12,     # UDP
    V2_SIGNATURE + b"\x21\x11\xff\xff",                    # 64 KiB of header
], ids=["dicom", "http", "v1-short", "v1-family", "v1-port", "v1-address", "v1-long",
        "v2-version", "v2-command", "v2-udp", "v2-huge"])
def test_anything_else_is_refused(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse(data)


@given(st.binary(max_size=300))
def test_any_bytes_give_a_header_need_more_or_a_clear_error(data: bytes) -> None:
    try:
        header = parse(data)
    except ProxyProtocolError:
        return
    assert header is None or 0 < header.length <= len(data)
