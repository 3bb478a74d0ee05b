"""Read and write a few text elements of a C-FIND identifier without decoding the rest.

Job: the C-FIND relay touches a handful of elements per match (the level's unique key,
Retrieve AE Title, the patient identifiers kept for log scrubbing). pynetdicom hands the
proxy each upstream match as a Dataset of RawDataElements (bytes, decoded on first
access); pydicom's ``ds[tag]``, ``ds.get`` and attribute access *convert* the element in
place, and pynetdicom then re-encodes a converted element through pydicom's value writers
instead of copying its bytes. Measured (bench/bench_find_relay.py): that conversion and
re-encoding is a large part of the proxy's CPU per relayed match.

Rule 1: read, never convert: ``text_values`` reads an element with ``Dataset.get_item``
        (no conversion) and decodes its bytes itself when that is a plain codec: a text
        VR that pydicom would not reinterpret, in the default repertoire, ISO_IR 100 or
        ISO_IR 192. Anything else (other character sets, numbers, sequences, elements
        already converted) goes through pydicom's own conversion: slower, never wrong.
Rule 2: the values read are what ``str(value)`` of pydicom's converted element gives,
        one per value multiplicity, with trailing padding (space, NUL) removed.
Rule 3: write raw: ``set_text`` stores a value as a RawDataElement in the dataset's own
        encoding, so the SCP writes its bytes as they are.
"""

from __future__ import annotations

from typing import Final

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

__all__ = ["set_text", "text_values"]

_CHARSET: Final = Tag(0x00080005)
# Codecs for the Specific Character Set values whose decoding is a plain Python codec
# (PS3.3 C.12.1.1.2; pydicom maps the default repertoire to latin-1 as well).
_PLAIN_CODECS: Final = {b"": "latin_1", b"ISO_IR 6": "latin_1", b"ISO_IR 100": "latin_1",
                        b"ISO_IR 192": "utf_8"}
# VRs whose value pydicom keeps as the decoded text (no number, date or UID object whose
# str() could differ from the bytes). PN: str(PersonName) is its original text.
_TEXT_VRS: Final = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST",
                              "TM", "UC", "UI", "UR", "UT"})
# VRs of which a backslash separates values (PS3.5 6.4); LT, ST, UT and UR are single.
_SINGLE_VRS: Final = frozenset({"LT", "ST", "UT", "UR"})


def text_values(ds: Dataset, tag: BaseTag | int) -> list[str]:
    """The non-empty values of ``tag`` in ``ds`` as text, without converting it (Rule 1)."""
    elem = ds.get_item(tag)
    if elem is None:
        return []
    if isinstance(elem, RawDataElement):
        raw = elem.value
        if not raw:
            return []
        vr = elem.VR or _known_vr(elem.tag)
        codec = _codec(ds) if vr in _TEXT_VRS else None
        if codec is not None and isinstance(raw, bytes):
            text = raw.decode(codec, "replace")
            parts = [text] if vr in _SINGLE_VRS else text.split("\\")
            return [v for p in parts if (v := p.rstrip(" \0"))]
        elem = ds[tag]          # pydicom's conversion: correct for every case
    return _converted(elem)


def set_text(ds: Dataset, tag: BaseTag | int, vr: str, value: str) -> None:
    """Store ``value`` (plain ASCII, e.g. an AE title) as raw bytes (Rule 3)."""
    data = value.encode("ascii")
    if len(data) % 2:
        data += b"\0" if vr == "UI" else b" "
    implicit, little = ds.original_encoding
    ds[tag] = RawDataElement(Tag(tag), vr, len(data), data, 0,
                             True if implicit is None else implicit,
                             True if little is None else little)


def _converted(elem: DataElement) -> list[str]:
    value = elem.value
    if value in (None, "", b""):
        return []
    values = value if isinstance(value, MultiValue | list | tuple) else [value]
    return [s for v in values if v not in (None, "") and (s := str(v).rstrip(" \0"))]


def _codec(ds: Dataset) -> str | None:
    elem = ds.get_item(_CHARSET)
    if elem is None:
        return "latin_1"
    if isinstance(elem, RawDataElement):
        raw = elem.value
        key = raw.strip(b" \0") if isinstance(raw, bytes) else None
        return _PLAIN_CODECS.get(key) if key is not None else None
    value = elem.value
    if isinstance(value, str):
        return _PLAIN_CODECS.get(value.strip().encode("ascii", "replace"))
    return None


def _known_vr(tag: BaseTag) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None
