"""pynetdicom's ``dsutils.encode``, without pydicom's per-element machinery where it is not needed.

Job: relaying a C-FIND, the proxy spends most of its CPU in pydicom's
``write_dataset`` — twice per response for the command set (pynetdicom encodes it
once to measure the group length) and once for the match — although the match's
elements are the archive's own bytes (raw elements, decoded in the same transfer
syntax) and a command set holds a handful of integers and UIDs. ``encode`` writes
those two shapes directly and hands everything else to pydicom.

Rule 1: the output is byte-for-byte what ``pynetdicom.dsutils.encode`` produces
        (tests compare the two on command sets of every DIMSE message and on
        datasets as archives send them); whenever a dataset or element is not one
        of the simple shapes, pydicom writes it — the whole dataset when its
        encoding or character set would change (pydicom then converts every
        element), one element at a time otherwise.
Rule 2: simple shapes: a raw element kept in its own little-endian encoding (not
        Pixel Data of undefined length, not a 16-bit-length VR over 64 KiB), and
        group 0000 elements of the command-set VRs (UL, US, UI, AE, SH, LO, CS)
        written in Implicit VR Little Endian.
Rule 2b: the Specific Character Set is read without converting it (``proxy.rawtext``):
        pydicom's ``Dataset._character_set`` converts it in place, and a converted
        element is re-encoded (``ISO_IR 100\\0`` would go out as ``ISO_IR 100``). So a
        raw Specific Character Set keeps its bytes where ``dsutils.encode`` rewrites them.
Rule 2c: a data set ``proxy.rawdataset`` read and nobody changed since is written as the
        bytes it was read from (``WireDataset.wire``): exactly what the element-by-element
        writing of Rule 2 would give, without doing it.
Rule 3: the proxy's own DIMSE writers call it (``proxy.responder`` for the workstation's
        responses, ``proxy.upstream`` for requests to archives); pynetdicom itself is not
        patched.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32
from pynetdicom import dsutils

from proxy import rawtext
from proxy.rawdataset import WireDataset

_original: Callable[..., bytes | None] = dsutils.encode
_IMPLICIT = struct.Struct("<HHL")
_EXPLICIT_16 = struct.Struct("<HH2sH")
_EXPLICIT_32 = struct.Struct("<HH2s2xL")
_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"   # (FFFE,E0DD), length 0
_PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_COMMAND_TEXT = {"UI": b"\x00", "AE": b" ", "SH": b" ", "LO": b" ", "CS": b" "}


def encode(ds: Dataset, is_implicit_vr: bool, is_little_endian: bool,
           deflated: bool = False) -> bytes | None:
    """``pynetdicom.dsutils.encode``, fast for raw and command-set elements (Rules 1-2)."""
    if deflated or not is_little_endian:
        return _original(ds, is_implicit_vr, is_little_endian, deflated)
    if isinstance(ds, WireDataset) and ds.wire is not None \
            and ds.wire_implicit == is_implicit_vr:
        return ds.wire                    # unchanged since it was read (rawdataset Rule 3)
    tags = sorted(ds._dict)
    if tags and tags[-1] <= 0xFFFF:                    # group 0000 only: a command set
        fast = _command_set(ds, tags) if is_implicit_vr else None
        return fast if fast is not None else _original(ds, is_implicit_vr, True, False)
    if (ds.original_encoding != (is_implicit_vr, True)
            or ds.original_character_set != rawtext.encodings(ds)):
        return _original(ds, is_implicit_vr, is_little_endian, deflated)
    try:
        return _raw_dataset(ds, tags, is_implicit_vr)
    except Exception:                                  # as dsutils.encode: None on failure
        return _original(ds, is_implicit_vr, is_little_endian, deflated)


def _raw_dataset(ds: Dataset, tags: list[Any], implicit: bool) -> bytes:
    out: list[bytes] = []
    fp: DicomBytesIO | None = None
    charset = rawtext.charset(ds) or "iso8859"
    for tag in tags:
        if tag & 0xFFFF == 0 and tag >> 16 > 6:      # retired group lengths: not written
            continue
        elem: Any = ds._dict[tag]
        header = _raw_header(elem, implicit) if elem.is_raw else None
        if header is not None:
            out.append(header)
            out.append(elem.value)
            if elem.length == _UNDEFINED:
                out.append(_DELIMITER)
            continue
        if fp is None:
            fp = DicomBytesIO()
            fp.is_implicit_VR, fp.is_little_endian = implicit, True
        start = fp.tell()
        write_data_element(fp, ds.get_item(tag), charset)
        out.append(fp.getvalue()[start:])
    return b"".join(out)


def _raw_header(elem: Any, implicit: bool) -> bytes | None:
    if (elem.is_implicit_VR != implicit or not elem.is_little_endian or elem.is_buffered
            or not isinstance(elem.value, bytes)):
        return None
    tag, undefined = elem.tag, elem.length == _UNDEFINED
    if undefined and tag == _PIXEL_DATA:
        return None
    size = _UNDEFINED if undefined else len(elem.value)
    if implicit:
        return _IMPLICIT.pack(tag >> 16, tag & 0xFFFF, size)
    vr = elem.VR
    if not vr or len(vr) != 2:
        return None
    if vr in _LONG_VRS:
        return _EXPLICIT_32.pack(tag >> 16, tag & 0xFFFF, vr.encode(), size)
    if undefined or size > 0xFFFF:
        return None
    return _EXPLICIT_16.pack(tag >> 16, tag & 0xFFFF, vr.encode(), size)


def _command_set(ds: Dataset, tags: list[Any]) -> bytes | None:
    out: list[bytes] = []
    for tag in tags:
        elem = ds._dict[tag]
        if elem.is_raw:
            return None
        value, vr = elem.value, elem.VR
        if value is None or value == "":
            raw = b""
        elif vr in ("US", "UL") and isinstance(value, int) and not isinstance(value, bool):
            raw = struct.pack("<H" if vr == "US" else "<L", value)
        elif vr in _COMMAND_TEXT and isinstance(value, str) and value.isascii():
            raw = value.encode()
            if len(raw) % 2:
                raw += _COMMAND_TEXT[vr]
        else:
            return None
        out.append(_IMPLICIT.pack(0, tag, len(raw)))
        out.append(raw)
    return b"".join(out)
