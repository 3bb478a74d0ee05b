"""The Part-10 header the proxy writes in front of a data set it keeps (PS3.10 7.1).

Job: preamble, "DICM" and the File Meta Information group, encoded directly: pydicom's
writer validates every value and costs milliseconds per instance; these few elements
are all a Part-10 file needs to be sent on as is.

Rule 1: elements in ascending order, group length first; UIDs padded with NUL, text with
        a space, to even lengths; Implementation Class UID and Version are pynetdicom's
        (the proxy's network library, as before).
Rule 2: ``sending_ae``/``receiving_ae`` record who sent the data set to whom (Sending
        and Receiving Application Entity Title, (0002,0017)/(0002,0018)), so the spool
        can forward it on the sender's behalf (``routing.forward_calling_ae``).
"""

from __future__ import annotations

import struct

from proxy.dicom.negotiation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str, *,
              sending_ae: str | None = None, receiving_ae: str | None = None) -> bytes:
    def element(elem: int, vr: bytes, value: bytes) -> bytes:
        if vr == b"OB":
            return struct.pack("<HH2s2xI", 2, elem, vr, len(value)) + value
        return struct.pack("<HH2sH", 2, elem, vr, len(value)) + value

    def text(value: str, pad: bytes) -> bytes:
        raw = value.encode("ascii", "replace")
        return raw + pad if len(raw) % 2 else raw

    parts = [
        element(0x0001, b"OB", b"\x00\x01"),
        element(0x0002, b"UI", text(sop_class, b"\x00")),
        element(0x0003, b"UI", text(sop_instance, b"\x00")),
        element(0x0010, b"UI", text(transfer_syntax, b"\x00")),
        element(0x0012, b"UI", text(IMPLEMENTATION_CLASS_UID, b"\x00")),
        element(0x0013, b"SH", text(IMPLEMENTATION_VERSION, b" ")),
    ]
    if sending_ae:
        parts.append(element(0x0017, b"AE", text(sending_ae, b" ")))
    if receiving_ae:
        parts.append(element(0x0018, b"AE", text(receiving_ae, b" ")))
    body = b"".join(parts)
    group_length = element(0x0000, b"UL", struct.pack("<I", len(body)))
    return b"\x00" * 128 + b"DICM" + group_length + body
