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
        ISO_IR 192. Anything else (other character sets, numbers, sequences) goes through
        pydicom's own conversion of the element — ``element``, which hands back the
        converted element and leaves the dataset's raw element (its bytes) in place.
        Storing a conversion would make pynetdicom re-encode the value, and pydicom's
        encoders do not give back the bytes they decoded: ISO_IR 13 PatientName
        ``Test-\\x84D\\x83\\xa6\\xc8`` (decoded as Shift JIS) is written ``Test-???``.
Rule 2: the values read are what ``str(value)`` of pydicom's converted element gives,
        one per value multiplicity, with trailing padding (space, NUL) removed. A text
        value pydicom fails to convert (it cannot read PN ``^`` in ISO 2022 IR 87) is
        decoded with pydicom's ``decode_bytes``, or as Latin-1: read, never a failure.
Rule 2b: ``charset`` and ``encodings`` read the Specific Character Set the same way
        (pydicom's ``Dataset._character_set`` converts it in place).
Rule 3: write raw: ``set_text`` stores a value as a RawDataElement in the dataset's own
        encoding, so the SCP writes its bytes as they are.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final

from pydicom import config
from pydicom.charset import convert_encodings, decode_bytes, default_encoding
from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

__all__ = ["charset", "element", "encodings", "keyword_tag", "raw_encodings", "set_text",
           "text_values"]

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


@lru_cache(maxsize=512)
def keyword_tag(keyword: str) -> BaseTag:
    """The tag of a DICOM keyword (cached: read once per relayed match)."""
    return Tag(keyword)


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
        elem = element(ds, tag)     # pydicom's conversion, not stored in ds
        if elem is not None and elem.VR == "UN" and vr in _TEXT_VRS and isinstance(raw, bytes):
            text = _decoded(raw, ds)  # pydicom could not read it: the text, as best we can
            parts = [text] if vr in _SINGLE_VRS else text.split("\\")
            return [v for p in parts if (v := p.rstrip(" \0"))]
    return _converted(elem) if elem is not None else []


def element(ds: Dataset, tag: BaseTag | int) -> DataElement | None:
    """``ds[tag]`` as pydicom converts it, without storing the conversion (Rule 1).

    A raw element is converted into a new DataElement with the dataset's character set
    (``ds`` keeps the RawDataElement, bytes and all); anything else is returned as it is.
    Unlike ``ds[tag]``, an ambiguous VR (``US or SS``) is not resolved, and a value pydicom
    fails to convert comes back as its bytes with VR UN instead of raising: the relay
    never fails for a value it only reads.
    """
    elem = ds.get_item(tag)
    if not isinstance(elem, RawDataElement):
        return elem
    if elem.value is None and elem.length != 0:  # deferred read of a file: pydicom's own
        return ds[tag]
    tag = elem.tag
    if (tag.is_private and not tag.is_private_creator
            and (elem.VR is None or (elem.VR == "UN" and config.replace_un_with_known_vr))):
        elem = elem._replace(VR=_private_vr(ds, tag))
    charset_of = default_encoding if tag == _CHARSET else (ds.original_character_set
                                                           or encodings(ds))
    try:
        # ds=None: pydicom reads a private creator through ds.get, converting it in place.
        return convert_raw_data_element(elem, encoding=charset_of, ds=None)
    except Exception:   # pydicom cannot read it (its ISO 2022 IR 87 PN ``^``): the bytes, UN
        return DataElement(tag, "UN", elem.value)


def charset(ds: Dataset) -> str | list[str] | None:
    """The value of ``ds``'s own Specific Character Set, read without converting it."""
    elem = element(ds, _CHARSET)
    if elem is None or elem.value in (None, "", b""):
        return None
    value = elem.value
    return [str(v) for v in value] if isinstance(value, MultiValue | list) else str(value)


def encodings(ds: Dataset) -> str | list[str]:
    """What ``ds._character_set`` says (the Python codecs of its text), unconverted."""
    raw = ds.get_item(_CHARSET)
    if isinstance(raw, RawDataElement) and isinstance(raw.value, bytes):
        return raw_encodings(raw.value, raw.VR)     # once per character set an archive uses
    elem = element(ds, _CHARSET)
    if elem is None:
        encoding: str | list[str] = ds._parent_encoding    # Any in some pydicom releases
        return encoding
    value = elem.value
    if isinstance(value, bytes):    # unreadable (rawtext.element gave UN): as pydicom would
        value = value.decode(default_encoding, "replace").strip(" \0")
    return convert_encodings(value)


def raw_encodings(value: bytes, vr: str | None) -> str | list[str]:
    """The Python codecs of a raw Specific Character Set value (``vr`` None: Implicit VR),
    as pydicom's reader finds them; a new list each time (the conversion is cached)."""
    found = _raw_encodings(value, vr)
    return list(found) if isinstance(found, list) else found


@lru_cache(maxsize=256)
def _raw_encodings(value: bytes, vr: str | None) -> str | list[str]:
    ds = Dataset()
    ds[_CHARSET] = RawDataElement(_CHARSET, vr, len(value), value, 0, vr is None, True)
    elem = element(ds, _CHARSET)
    converted = elem.value if elem is not None else None
    if isinstance(converted, bytes):
        converted = converted.decode(default_encoding, "replace").strip(" \0")
    found: str | list[str] = convert_encodings(converted)
    return found


def set_text(ds: Dataset, tag: BaseTag | int, vr: str, value: str) -> None:
    """Store ``value`` (plain ASCII, e.g. an AE title) as raw bytes (Rule 3)."""
    data = value.encode("ascii")
    if len(data) % 2:
        data += b"\0" if vr == "UI" else b" "
    implicit, little = ds.original_encoding
    ds[tag] = RawDataElement(Tag(tag), vr, len(data), data, 0,
                             True if implicit is None else implicit,
                             True if little is None else little)


def _decoded(raw: bytes, ds: Dataset) -> str:
    codecs = encodings(ds)
    try:
        return decode_bytes(raw, [codecs] if isinstance(codecs, str) else codecs, {0x5C})
    except Exception:
        return raw.decode(default_encoding, "replace")


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


def _private_vr(ds: Dataset, tag: BaseTag) -> str:
    """pydicom's VR of a private element read in implicit VR, from its creator's block."""
    creator = ds.get_item(tag.group << 16 | tag.element >> 8) if tag.element & 0xFF00 else None
    name = creator.value if creator is not None else None
    if isinstance(name, bytes):
        name = name.decode(default_encoding, "replace").rstrip(" \0")
    if isinstance(name, str) and name:
        try:
            return str(private_dictionary_VR(tag, name))
        except KeyError:
            pass
    return "UN"


def _known_vr(tag: BaseTag) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None
