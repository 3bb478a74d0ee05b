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
Rule 3: a data set ``decode`` indexed keeps the bytes it came in (``WireDataset.wire``)
        for as long as nothing changes it: any element set, converted or deleted drops
        them. ``proxy.fastencode`` then writes those bytes as they are — what it would
        have written element by element — so an unchanged C-FIND match goes to the
        workstation as the archive's bytes without being written again. A data set with
        group length elements keeps no bytes (they are not written again either).
Rule 4: a match is one ``WireDataset`` built per relayed response: ``WireDataset.of`` gives
        it the state pydicom's ``Dataset.__init__`` gives a new one (taken once from a
        real instance, its mutable parts copied for each) without running ``__init__``'s
        attribute checks each time; the tests compare the two.
"""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Any

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
_TAG = struct.Struct("<HH")
_KNOWN_VRS = frozenset({
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
    b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST",
    b"SV", b"TM", b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV"})
_LONG_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_32)
_UNDEFINED = 0xFFFFFFFF
_CHARSET = 0x00080005


class _NotFlat(Exception):
    """Rule 2: pydicom's reader takes it."""


class WireDataset(Dataset):
    """A Dataset of raw elements that remembers the bytes it was read from (Rule 3)."""

    wire: bytes | None = None          # the data set's bytes while it is unchanged
    wire_implicit: bool = False        # ... in Implicit VR (else Explicit) Little Endian
    _blank: dict[str, Any] | None = None         # a new instance's state (Rule 4)
    _fresh: tuple[str, ...] = ()                 # ... its mutable parts, copied each time

    @classmethod
    def of(cls, elements: dict[BaseTag, RawDataElement | DataElement]) -> WireDataset:
        """A data set holding ``elements``, as ``cls(elements)`` makes it (Rule 4)."""
        blank = cls._blank
        if blank is None:                       # once; _fresh before _blank (threads)
            blank = dict(vars(cls({})))
            cls._fresh = tuple(k for k, v in blank.items()
                               if isinstance(v, dict | list | set) and k != "_dict")
            cls._blank = blank
        ds = cls.__new__(cls)
        state = vars(ds)
        state.update(blank)
        for name in cls._fresh:
            state[name] = blank[name].copy()
        state["_dict"] = elements               # the element map (as ``replace_raw``)
        return ds

    def get_item(self, key: Any, *, keep_deferred: bool = False) -> Any:
        """``Dataset.get_item`` for a tag, read straight from the element map (per relayed
        match); an element without a value (empty in Implicit VR) still goes to pydicom,
        which converts it as it does a deferred one."""
        if isinstance(key, int):
            elem = self._dict.get(key)           # type: ignore[call-overload]
            if elem is None or elem.value is not None:
                return elem
        return super().get_item(key, keep_deferred=keep_deferred)

    def keep_wire(self, data: bytes, implicit: bool) -> None:
        object.__setattr__(self, "wire", data)
        object.__setattr__(self, "wire_implicit", implicit)

    spliced: bool = False              # a value was spliced: later offsets are stale

    def replace_raw(self, elem: RawDataElement, wire: bytes) -> None:
        """Set ``elem`` and the bytes that now hold it (a value spliced in place): a raw
        top-level element replacing a raw one, which needs none of ``__setitem__``'s
        bookkeeping (private blocks, pixel data); the element map is written directly,
        as ``proxy.fastencode`` reads it."""
        self._dict[elem.tag] = elem
        object.__setattr__(self, "wire", wire)
        object.__setattr__(self, "spliced", True)

    def _changed(self) -> None:
        if self.wire is not None:
            object.__setattr__(self, "wire", None)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._changed()
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        self._changed()
        super().__delitem__(key)

    def __delattr__(self, name: str) -> None:
        self._changed()
        super().__delattr__(name)

    def pop(self, key: Any, *args: Any) -> Any:
        self._changed()
        return super().pop(key, *args)

    def popitem(self) -> Any:
        self._changed()
        return super().popitem()

    def clear(self) -> None:
        self._changed()
        super().clear()

    def update_raw_element(self, tag: Any, *, vr: str | None = None,
                           value: bytes | None = None) -> None:
        self._changed()
        super().update_raw_element(tag, vr=vr, value=value)


def splice_text(ds: Dataset, tag: int, value: bytes) -> bool:
    """Replace the value of top-level element ``tag`` in ``ds`` and in its bytes (Rule 3),
    e.g. Retrieve AE Title in a relayed match; False when ``ds`` keeps no bytes to splice
    into (the caller sets the element the ordinary way). ``value`` is padded already."""
    if not isinstance(ds, WireDataset) or ds.wire is None or ds.spliced:
        return False
    elem = ds.get_item(BaseTag(tag))
    if not isinstance(elem, RawDataElement) or elem.value_tell is None:
        return False
    implicit, vr = ds.wire_implicit, elem.VR
    if not implicit and (vr is None or len(vr) != 2
                         or vr.encode() in _LONG_VRS or len(value) > 0xFFFF):
        return False
    start, end = elem.value_tell - 8, elem.value_tell + (elem.length or 0)
    wire = ds.wire
    if start < 0 or end > len(wire) or wire[start:start + 4] != _TAG.pack(tag >> 16,
                                                                          tag & 0xFFFF):
        return False
    header = (_HEADER.pack(tag >> 16, tag & 0xFFFF, len(value)) if implicit or vr is None
              else _EXPLICIT.pack(tag >> 16, tag & 0xFFFF, vr.encode(), len(value)))
    ds.replace_raw(RawDataElement(elem.tag, elem.VR, len(value), value, elem.value_tell,
                                  implicit, True), wire[:start] + header + value + wire[end:])
    return True


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
    group_lengths = False
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
        if elem == 0:
            group_lengths = True
        value = data[at:at + length] if length else _empty(vr)
        elements[tag] = RawDataElement(tag, vr, length, value, at, implicit, True)
        at += length
    ds = WireDataset.of(elements)
    charset = elements.get(BaseTag(_CHARSET))
    ds.set_original_encoding(implicit, True,
                             _encodings(charset) if charset is not None else default_encoding)
    if stop_before is None and not group_lengths:
        ds.keep_wire(bytes(data), implicit)          # Rule 3
    return ds


def _empty(vr: str | None) -> bytes | None:
    """An empty value as pydicom's reader keeps it raw (b"" for text, None otherwise)."""
    empty = empty_value_for_VR(vr, raw=True)
    return empty if isinstance(empty, bytes) else None


def _encodings(elem: RawDataElement | DataElement) -> str | list[str]:
    value = elem.value
    return raw_encodings(value if isinstance(value, bytes) else b"", elem.VR)
