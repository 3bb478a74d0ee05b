"""A data set as the peer sent it, indexed into raw elements without pydicom's reader.

Job: every C-FIND match the proxy relays, and every identifier a workstation sends, is
read a few elements at a time (``proxy.rawtext``) and written back as its bytes
(``proxy.fastencode``); what it needs is an index of elements, not a parse. pydicom's
``read_dataset`` (pynetdicom's ``dsutils.decode``) was the largest single cost per
relayed match (bench/bench_find_relay.py); ``decode`` builds the same Dataset of
RawDataElements directly.

Rule 1: the result equals pydicom's ``read_dataset`` element for element — tag, VR (None
        in Implicit VR, as pydicom leaves it), length, value bytes (an empty value as
        pydicom gives it) — with the same original encoding and character set; the tests
        compare the two on real-world data sets.
Rule 2: anything but a flat little-endian data set with defined lengths goes to pydicom
        whole: a big-endian or deflated syntax, an undefined length, a VR that is not two
        letters pydicom knows, an Implicit VR data set that looks Explicit (pydicom would
        switch), a truncated element. A sequence of defined length is one raw element
        (pydicom parses it only when it is read).
"""

from __future__ import annotations

import struct
from io import BytesIO

from pydicom import Dataset
from pydicom.charset import default_encoding
from pydicom.dataelem import (
    DataElement,
    RawDataElement,
    empty_value_for_VR,
)
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32
from pynetdicom.dsutils import decode as pydicom_decode

from proxy.rawtext import raw_encodings

_HEADER = struct.Struct("<HHL")            # Implicit VR: tag, 32-bit length
_EXPLICIT = struct.Struct("<HH2sH")        # Explicit VR: tag, VR, 16-bit length
_LONG = struct.Struct("<L")
_KNOWN_VRS = frozenset({
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
    b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST",
    b"SV", b"TM", b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV"})
_LONG_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_32)
_UNDEFINED = 0xFFFFFFFF
_CHARSET = 0x00080005


class _NotFlat(Exception):
    """Rule 2: pydicom's reader takes it."""


def decode(data: bytes, implicit: bool, little_endian: bool = True) -> Dataset:
    """``data`` as a Dataset of raw elements (Rule 1), or pydicom's reading (Rule 2)."""
    if little_endian:
        try:
            return _flat(data, implicit)
        except _NotFlat:
            pass
    ds: Dataset = pydicom_decode(BytesIO(data), implicit, little_endian)
    return ds


def header(data: bytes, implicit: bool, stop_before: int = 0x7FE00010) -> Dataset | None:
    """The elements of a little-endian data set before ``stop_before`` (Pixel Data by
    default): ``data`` may end anywhere after them (the first bytes of a file). None when
    that part is not flat (Rule 2): the caller asks pydicom."""
    try:
        return _flat(data, implicit, stop_before)
    except _NotFlat:
        return None


def _flat(data: bytes, implicit: bool, stop_before: int | None = None) -> Dataset:
    elements: dict[BaseTag, RawDataElement | DataElement] = {}
    at, end = 0, len(data)
    if implicit and end >= 6 and data[4:6] in _KNOWN_VRS:
        raise _NotFlat                          # looks Explicit: pydicom would switch
    while at < end:
        if at + 8 > end:
            raise _NotFlat
        vr: str | None
        if implicit:
            group, elem, length = _HEADER.unpack_from(data, at)
            vr, at = None, at + 8
        else:
            group, elem, raw_vr, length = _EXPLICIT.unpack_from(data, at)
            if raw_vr not in _KNOWN_VRS:
                raise _NotFlat
            vr = raw_vr.decode()
            if raw_vr in _LONG_VRS:
                if at + 12 > end:
                    raise _NotFlat
                length = _LONG.unpack_from(data, at + 8)[0]
                at += 12
            else:
                at += 8
        if stop_before is not None and group << 16 | elem >= stop_before:
            break
        if length == _UNDEFINED or group == 0xFFFE or at + length > end:
            raise _NotFlat
        tag = BaseTag(group << 16 | elem)
        value = data[at:at + length] if length else _empty(vr)
        elements[tag] = RawDataElement(tag, vr, length, value, at, implicit, True)
        at += length
    ds = Dataset(elements)
    charset = elements.get(BaseTag(_CHARSET))
    ds.set_original_encoding(implicit, True,
                             _encodings(charset) if charset is not None else default_encoding)
    return ds


def _empty(vr: str | None) -> bytes | None:
    """An empty value as pydicom's reader keeps it raw (b"" for text, None otherwise)."""
    empty = empty_value_for_VR(vr, raw=True)
    return empty if isinstance(empty, bytes) else None


def _encodings(elem: RawDataElement | DataElement) -> str | list[str]:
    value = elem.value
    return raw_encodings(value if isinstance(value, bytes) else b"", elem.VR)
