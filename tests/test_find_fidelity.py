"""The C-FIND relay keeps every byte it does not own (proxy.operations.find Rule 1).

Generated identifiers are written as wire bytes here (not by pydicom): text elements in
every Specific Character Set the proxy may meet — single-byte, ISO 2022 multi-byte,
GB18030, UTF-8, real-world values from pydicom's charset files, invalid bytes — with
sequences, private blocks, empty and odd-length values, in explicit and implicit VR.
Each is decoded as pynetdicom hands it to the proxy and pushed through the steps the
proxy runs on it:

- the workstation's query: ``find.read_query`` (level, log summary, PHI) and
  ``fastencode.encode`` as ``ArchiveClient.find`` sends it upstream;
- each match: recheck (``matching.matches``), ``LocationCache.remember``, de-duplication
  (``Deduplicator.offer``), the cap sample (``caps.Sample.add``), ``find._deliver``
  (Retrieve AE Title, PHI) and ``fastencode.encode``, the listener's encoder;
- merge = "complete": ``merge_all`` of the answers of two archives with the same bytes.

The bytes out must be the bytes in, except Retrieve AE Title's value.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.charset import convert_encodings, encode_string
from pynetdicom.dsutils import decode

from proxy.fastencode import encode
from proxy.operations.find import _deliver, read_query
from proxy.query.federation import caps
from proxy.query.federation.locations import LocationCache
from proxy.query.matching import matches
from proxy.query.merging import LEVEL_UNIQUE_KEYS, Deduplicator, merge_all, unique_key
from proxy.services import OperationRecord

RETRIEVE_AE = 0x00080054
PROXY_AE = b"QR_PROXY"
LONG_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UT", "UC", "UR", "UN"})
ITEM, ITEM_END, SEQ_END = 0xE000, 0xE00D, 0xE0DD

# Specific Character Set (raw value) -> how its text is encoded. Single-byte sets by their
# Python codec over every character they hold; the multi-byte ones through pydicom's
# encoder (ISO 2022 escapes) over names as PS3.5 Annex H-K writes them.
SINGLE_BYTE = {
    b"": "latin_1", b"ISO_IR 6": "ascii", b"ISO_IR 13": "shift_jis", b"ISO_IR 100": "latin_1",
    b"ISO_IR 101": "iso8859_2", b"ISO_IR 109": "iso8859_3", b"ISO_IR 110": "iso8859_4",
    b"ISO_IR 126": "iso8859_7", b"ISO_IR 127": "iso8859_6", b"ISO_IR 138": "iso8859_8",
    b"ISO_IR 144": "iso8859_5", b"ISO_IR 148": "iso8859_9", b"ISO_IR 166": "iso8859_11",
}
MULTI_BYTE_NAMES = ["Yamada^Tarou=山田^太郎=やまだ^たろう", "Hong^Gildong=洪^吉洞=홍^길동",
                    "Wang^XiaoDong=王^小東=", "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎", "Müller^Jürgen", "ДΘﾈ"]
MULTI_BYTE = [b"ISO_IR 192", b"GB18030", b"GBK", b"\\ISO 2022 IR 87", b"ISO 2022 IR 87",
              b"\\ISO 2022 IR 149", b"\\ISO 2022 IR 58", b"ISO 2022 IR 13\\ISO 2022 IR 87",
              b"ISO 2022 IR 6\\ISO 2022 IR 87\\ISO 2022 IR 159", b"ISO 2022 IR 100"]
# The defect of issue #10: Orthanc's "Japanese" answer, decoded as Shift JIS by pydicom.
DEFECT_NAME = b"Test-\x84D\x83\xa6\xc8"
# Names of empty components, as Orthanc writes them (pydicom cannot read ``^`` in ISO 2022
# IR 87: its PN converter raises IndexError).
EMPTY_NAMES = [b"^ ", b"=^", b"^^^^"]


def _alphabet(codec: str) -> list[str]:
    chars = []
    for b in range(0x20, 0x100):
        if b == 0x5C:                       # backslash: a value delimiter, added apart
            continue
        try:
            chars.append(bytes([b]).decode(codec))
        except UnicodeDecodeError:
            pass
    if codec == "shift_jis":                # JIS X 0201: ASCII and half-width katakana
        chars = [c for c in chars if c.isascii()] + [chr(c) for c in range(0xFF61, 0xFFA0)]
    return chars


def _multi_byte_samples(charset: bytes) -> list[bytes]:
    terms = charset.decode().split("\\")
    out = []
    for name in MULTI_BYTE_NAMES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append(encode_string(name, convert_encodings(terms)))
    return out


@st.composite
def text_value(draw: st.DrawFn, charset: bytes) -> bytes:
    """One text value in ``charset``: well-formed text, a real name, or arbitrary bytes."""
    kind = draw(st.sampled_from(["text", "text", "sample", "binary", "empty"]))
    if kind == "empty":
        return b""
    if kind == "binary":                    # not valid in the charset: still passed as is
        return draw(st.binary(max_size=24))
    codec = SINGLE_BYTE.get(charset)
    if kind == "sample" or codec is None:
        pool = (_multi_byte_samples(charset) if codec is None else [DEFECT_NAME]) + EMPTY_NAMES
        return draw(st.sampled_from(pool))
    text = draw(st.text(alphabet=_alphabet(codec), max_size=16))
    parts = [text.encode(codec)]
    if draw(st.booleans()):                 # multi-valued (or a PN group separator)
        parts.append(draw(st.text(alphabet=_alphabet(codec), max_size=8)).encode(codec))
    return b"\\".join(parts)


@dataclass(frozen=True)
class Elem:
    tag: int
    vr: str
    value: bytes | list[list[Elem]]        # a sequence: items of elements
    undefined: bool = False                # a sequence or item of undefined length


def _head(tag: int, vr: str, length: int, implicit: bool) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack("<HHL", group, element, length)
    if vr in LONG_VRS:
        return struct.pack("<HH2s2xL", group, element, vr.encode(), length)
    return struct.pack("<HH2sH", group, element, vr.encode(), length)


def wire(elems: list[Elem], implicit: bool, retrieve_ae: bytes | None = None) -> bytes:
    """The bytes of ``elems`` (tag order), written by hand: the reference."""
    out = []
    for e in sorted(elems, key=lambda x: x.tag):
        if isinstance(e.value, bytes):
            value = retrieve_ae if e.tag == RETRIEVE_AE and retrieve_ae else e.value
            out.append(_head(e.tag, e.vr, len(value), implicit) + value)
            continue
        items = []
        for item in e.value:
            body = wire(item, implicit)
            if e.undefined:
                items.append(struct.pack("<HHL", 0xFFFE, ITEM, 0xFFFFFFFF) + body
                             + struct.pack("<HHL", 0xFFFE, ITEM_END, 0))
            else:
                items.append(struct.pack("<HHL", 0xFFFE, ITEM, len(body)) + body)
        content = b"".join(items)
        if e.undefined:
            out.append(_head(e.tag, "SQ", 0xFFFFFFFF, implicit) + content
                       + struct.pack("<HHL", 0xFFFE, SEQ_END, 0))
        else:
            out.append(_head(e.tag, "SQ", len(content), implicit) + content)
    return b"".join(out)


TEXT_TAGS = [(0x00080050, "SH"), (0x00080080, "LO"), (0x00080081, "ST"), (0x00080090, "PN"),
             (0x00081030, "LO"), (0x0008103E, "LO"), (0x00100010, "PN"), (0x00100020, "LO"),
             (0x00100021, "LO"), (0x00101000, "LO"), (0x00101001, "PN"), (0x00102180, "SH"),
             (0x00104000, "LT"), (0x00200010, "SH"), (0x00321060, "LO"), (0x0040A160, "UT"),
             (0x00400275, None), (0x00080119, "UC")]
UIDS = st.sampled_from([b"1.2.840.99.1", b"1.2.840.99.1\0", b"1.2.3.4.5.6.7", b"", b"2.25.1 "])
DATES = st.sampled_from([b"20240101", b"", b"19700101-20001231", b"2024", b"garbage!"])
LEVELS = st.sampled_from([b"STUDY ", b"PATIENT ", b"SERIES", b"IMAGE ", b"", b"WORKLIST"])


def _odd(value: bytes, keep_odd: bool) -> bytes:
    """Even length (PS3.5 7.1.1) unless the case asks for a non-conformant odd one."""
    return value if keep_odd or len(value) % 2 == 0 else value + b" "


@st.composite
def identifiers(draw: st.DrawFn, *, in_sequences: bool = True) -> tuple[bytes | None, list[Elem]]:
    """A C-FIND identifier: (Specific Character Set raw value or None, its elements)."""
    charset = draw(st.sampled_from([None, *SINGLE_BYTE, *MULTI_BYTE]))
    odd = draw(st.booleans()) and draw(st.booleans())
    elems = [Elem(0x00080052, "CS", _odd(draw(LEVELS), odd))]
    if charset is not None:
        padding = draw(st.sampled_from([b"", b" ", b"\0"]))
        elems.append(Elem(0x00080005, "CS", _odd(charset + padding, odd)))
    cs = charset or b""
    for tag, vr in draw(st.lists(st.sampled_from(TEXT_TAGS), unique=True, max_size=10)):
        if vr is None:                       # a sequence of text (Request Attributes)
            if not in_sequences:
                continue
            items = draw(st.lists(st.lists(st.sampled_from(
                [(0x00321060, "LO"), (0x00401001, "SH"), (0x00400007, "LO")]), unique=True,
                max_size=3), max_size=2))
            value = [[Elem(t, v, _odd(draw(text_value(cs)), odd)) for t, v in item]
                     for item in items]
            elems.append(Elem(tag, "SQ", value, undefined=draw(st.booleans())))
            continue
        elems.append(Elem(tag, vr, _odd(draw(text_value(cs)), odd)))
    elems += [Elem(0x0020000D, "UI", _odd(draw(UIDS), True)),
              Elem(0x00080020, "DA", _odd(draw(DATES), odd))]
    if draw(st.booleans()):
        elems.append(Elem(RETRIEVE_AE, "AE", _odd(draw(st.sampled_from(
            [b"ORTHANC", b"", b"ARCH1\\ARCH2"])), odd)))
    if draw(st.booleans()):
        elems.append(Elem(0x00081110, "SQ", [[Elem(0x00081150, "UI", b"1.2.840.10008.3.1.2.3.1\0"),
                                              Elem(0x00081155, "UI", _odd(draw(UIDS), True))]],
                          undefined=draw(st.booleans())))
    if draw(st.booleans()):                  # a private block: opaque bytes either way
        elems += [Elem(0x00090010, "LO", b"ACME 1.0"),
                  Elem(0x00091001, draw(st.sampled_from(["LO", "UN", "OB"])),
                       _odd(draw(text_value(cs)), odd)),
                  Elem(0x00091002, "UN", _odd(draw(st.binary(max_size=9)), odd))]
    if draw(st.booleans()):
        elems.append(Elem(0x00201208, "IS", _odd(draw(st.sampled_from([b"12", b"", b"7 "])),
                                                 odd)))
    return charset, elems


def received(data: bytes, implicit: bool) -> Dataset:
    """As pynetdicom hands a data set to the proxy (``ArchiveClient.find``, ``evt.identifier``)."""
    return decode(BytesIO(data), implicit, True)


def relay_query(data: bytes, implicit: bool) -> bytes | None:
    """The workstation's identifier, from the listener to the archive."""
    identifier = received(data, implicit)
    record = OperationRecord("C-FIND")
    read_query(record, identifier)                       # find.handle
    return encode(identifier, implicit, True)            # ArchiveClient.find


def relay_match(query: Dataset, data: bytes, implicit: bool) -> bytes | None:
    """One archive's match, from ``ArchiveClient.find`` to the workstation (find._relay)."""
    record = OperationRecord("C-FIND", details={"matches": 0})
    level = read_query(OperationRecord("C-FIND"), query)
    ds = received(data, implicit)
    matches(query, ds)                                   # recheck_matches
    LocationCache().remember("archive", level, ds)       # remember_location
    if level in LEVEL_UNIQUE_KEYS:
        Deduplicator(level).offer(ds)                    # federation, merge = "stream"
        caps.Sample(caps.HELPER_KEYS[level]).add(ds)     # federation, cap recovery
    _, out = _deliver(record, ds, 0xFF00, PROXY_AE.decode())
    assert out is not None
    return encode(out, implicit, True)                   # the listener's C-FIND SCP


def merged_matches(data: bytes, implicit: bool, level: str) -> list[bytes | None]:
    """Two archives' answers with the same bytes, merge = "complete": one when they carry
    the level's unique key (two without), unchanged."""
    answers = merge_all(level, [received(data, implicit), received(data, implicit)],
                        consume=True)
    assert len(answers) == (1 if unique_key(level, received(data, implicit)) else 2)
    record = OperationRecord("C-FIND", details={"matches": 0})
    return [encode(_deliver(record, ds, 0xFF00, PROXY_AE.decode())[1] or Dataset(),
                   implicit, True) for ds in answers]


def _quiet(run: Callable[[], bytes | None]) -> bytes | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # pydicom on invalid values: warns, never fails
        return run()


def _defect() -> tuple[bytes | None, list[Elem]]:
    return b"ISO_IR 13", [Elem(0x00080005, "CS", b"ISO_IR 13 "),
                          Elem(0x00080052, "CS", b"STUDY "),
                          Elem(0x00100010, "PN", DEFECT_NAME + b" "),
                          Elem(0x0020000D, "UI", b"1.2.840.99.1\0"),
                          Elem(RETRIEVE_AE, "AE", b"ORTHANC ")]


FIDELITY = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_the_issue_10_defect_passes_byte_for_byte(implicit: bool) -> None:
    """Orthanc "Japanese": ISO_IR 13 PatientName, not ``Test-???``."""
    _, elems = _defect()
    data = wire(elems, implicit)
    query = received(wire(elems[:3], implicit), implicit)
    assert _quiet(lambda: relay_match(query, data, implicit)) == wire(elems, implicit, PROXY_AE)
    assert _quiet(lambda: relay_query(data, implicit)) == data


@FIDELITY
@given(identifiers(), st.booleans())
def test_the_workstations_query_goes_upstream_as_its_bytes(
        case: tuple[bytes | None, list[Elem]], implicit: bool) -> None:
    _, elems = case
    data = wire(elems, implicit)
    assert _quiet(lambda: relay_query(data, implicit)) == data


@FIDELITY
@given(identifiers(), identifiers(), st.booleans())
def test_a_match_reaches_the_workstation_as_its_bytes_but_retrieve_ae_title(
        query_case: tuple[bytes | None, list[Elem]], case: tuple[bytes | None, list[Elem]],
        implicit: bool) -> None:
    _, elems = case
    query = received(wire(query_case[1], implicit), implicit)
    out = _quiet(lambda: relay_match(query, wire(elems, implicit), implicit))
    assert out == wire(elems, implicit, PROXY_AE)


@FIDELITY
@given(identifiers(), st.booleans(), st.sampled_from(sorted(LEVEL_UNIQUE_KEYS)))
@example(_defect(), False, "STUDY")
def test_merging_equal_answers_changes_no_byte(case: tuple[bytes | None, list[Elem]],
                                               implicit: bool, level: str) -> None:
    _, elems = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = merged_matches(wire(elems, implicit), implicit, level)
    assert out and all(o == wire(elems, implicit, PROXY_AE) for o in out)


def _charsets() -> Iterator[bytes]:
    yield from SINGLE_BYTE
    yield from MULTI_BYTE


def test_every_charset_of_the_issue_is_generated() -> None:
    """ISO_IR 6, 13, 100, 101, 109, 110, 126, 127, 138, 144, 148, 166, 192, ISO 2022
    multi-byte, GB18030 (issue #10)."""
    names = b" ".join(_charsets())
    for term in (b"ISO_IR 6", b"ISO_IR 13", b"ISO_IR 100", b"ISO_IR 101", b"ISO_IR 109",
                 b"ISO_IR 110", b"ISO_IR 126", b"ISO_IR 127", b"ISO_IR 138", b"ISO_IR 144",
                 b"ISO_IR 148", b"ISO_IR 166", b"ISO_IR 192", b"ISO 2022 IR 87",
                 b"ISO 2022 IR 149", b"ISO 2022 IR 58", b"GB18030"):
        assert term in names, term


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_a_name_pydicom_cannot_read_is_relayed_and_its_phi_kept(implicit: bool) -> None:
    """Orthanc "JapaneseKanji" answers empty names as ``^`` in ISO 2022 IR 87; pydicom's PN
    converter raises IndexError on it. The relay reads it anyway (rawtext Rule 2)."""
    elems = [Elem(0x00080005, "CS", b"ISO 2022 IR 87"), Elem(0x00080052, "CS", b"STUDY "),
             Elem(0x00080090, "PN", b"^ "), Elem(0x00100010, "PN", b"^ "),
             Elem(0x00100020, "LO", b"ID\x1b$B;3\x1b(B "), Elem(RETRIEVE_AE, "AE", b"ORTHANC ")]
    data = wire(elems, implicit)
    query = received(wire(elems[:2], implicit), implicit)
    assert _quiet(lambda: relay_match(query, data, implicit)) == wire(elems, implicit, PROXY_AE)
    record = OperationRecord("C-FIND")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record.protect(received(data, implicit))
    assert record.phi == ["ID山", "^"]                  # Patient ID, Patient's Name
