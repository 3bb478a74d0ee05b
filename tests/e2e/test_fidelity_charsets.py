"""Issue #10, defect 3, end to end: every C-FIND answer passes byte for byte, whatever the
character set; only Retrieve AE Title changes.

Orthanc answers a C-FIND in its ``DefaultEncoding`` (it stores text as UTF-8 and encodes
each answer again; Specific Character Set says which), so one Orthanc per encoding it
supports gives the proxy answers in ISO_IR 6, 13, 100, 101, 109, 110, 126, 127, 138, 144,
148, 166, 192, GB18030 and ISO 2022 IR 87, 149 and 58. Each holds pydicom's real-world
charset files and instances built here in the other character sets. DCMTK's findscu asks
the same query DIRECTLY and THROUGH the proxy; the responses (``-X``) are read raw and
every element's bytes compared.
"""

from __future__ import annotations

import functools
import os
import re
import struct
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_charset_files
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from tests.e2e.dcmtk import SUCCESS, FindResult, findscu
from tests.e2e.orthanc import OrthancArchive
from tests.e2e.ports import LOOPBACK
from tests.e2e.proxy_harness import ProxyProcess, archive_entry

RETRIEVE_AE = 0x00080054
ROUTE = "RELAY"

# Orthanc 1.10.1 DefaultEncoding -> the Specific Character Set of its answers (observed).
ENCODINGS = {
    "Ascii": "ISO_IR 6", "Latin1": "ISO_IR 100", "Latin2": "ISO_IR 101",
    "Latin3": "ISO_IR 109", "Latin4": "ISO_IR 110", "Latin5": "ISO_IR 148",
    "Cyrillic": "ISO_IR 144", "Arabic": "ISO_IR 127", "Greek": "ISO_IR 126",
    "Hebrew": "ISO_IR 138", "Thai": "ISO_IR 166", "Japanese": "ISO_IR 13",
    "Chinese": "GB18030", "Utf8": "ISO_IR 192", "Korean": "ISO 2022 IR 149",
    "JapaneseKanji": "ISO 2022 IR 87", "SimplifiedChinese": "ISO 2022 IR 58",
}
# Character sets pydicom's charset files do not cover: instances written here, their
# text encoded by Python's codec (pydicom's own ISO_IR 13 encoder cannot write katakana).
CODECS = {"ISO_IR 6": "ascii", "ISO_IR 13": "shift_jis", "ISO_IR 100": "latin_1",
          "ISO_IR 101": "iso8859_2", "ISO_IR 109": "iso8859_3", "ISO_IR 110": "iso8859_4",
          "ISO_IR 148": "iso8859_9", "ISO_IR 166": "iso8859_11", "ISO_IR 192": "utf_8"}
BUILT = {
    "ISO_IR 6": "Doe^John", "ISO_IR 13": "ﾔﾏﾀﾞ^ﾀﾛｳ", "ISO_IR 101": "Łukasz^Żółć",
    "ISO_IR 109": "Ħanna^Ġużeppi", "ISO_IR 110": "Jānis^Ķēniņš", "ISO_IR 148": "Şükrü^Ğündüz",
    "ISO_IR 166": "สมชาย^ใจดี", "ISO_IR 100": "Müller^Ærøskøbing",
}
# The defect as reported: a name stored in UTF-8, answered by Orthanc "Japanese".
DEFECT_NAME = "Test-ДΘﾈ"
DEFECT_BYTES = b"Test-\x84D\x83\xa6\xc8"
STUDY_KEYS = ["SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate",
              "PatientSex", "StudyDescription", "ReferringPhysicianName", "AccessionNumber",
              "StudyID", "StudyDate", "StudyInstanceUID", "RetrieveAETitle",
              "ModalitiesInStudy", "NumberOfStudyRelatedInstances"]
SERIES_KEYS = ["SpecificCharacterSet", "StudyInstanceUID", "SeriesInstanceUID",
               "SeriesDescription", "Modality", "SeriesNumber", "RetrieveAETitle",
               "NumberOfSeriesRelatedInstances"]

Factory = Callable[..., Any]


def built(charset: str, name: str) -> Dataset:
    """A Secondary Capture instance whose text elements are written in ``charset``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = charset

    def text(tag: int, vr: str, value: str) -> None:
        ds.add_new(tag, vr, value.encode(CODECS[charset]))

    text(0x00100010, "PN", name)
    text(0x00081030, "LO", f"{name} study")
    text(0x0008103E, "LO", f"{name.split('^')[0]} series")
    text(0x00080090, "PN", name.split("^")[-1])
    ds.PatientID = f"CS-{charset.replace(' ', '')}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.AccessionNumber, ds.StudyID = "ACC1", "1"
    ds.StudyDate, ds.Modality, ds.SeriesNumber = "20240101", "OT", "1"
    return ds


@functools.cache
def instances() -> list[Path | Dataset]:
    """pydicom's charset files (instances only) and the ones built for the other sets
    (once: two archives of a federation hold the same studies)."""
    files: list[Path | Dataset] = [Path(f) for f in sorted(get_charset_files())
                                   if f.endswith(".dcm") and "SQEncoding" not in f]
    files += [built(charset, name) for charset, name in BUILT.items()]
    files.append(built("ISO_IR 192", DEFECT_NAME))
    return files


def raw_answers(result: FindResult) -> list[dict[int, bytes]]:
    """Each response as {tag: the value's bytes as received}, in a comparable order.

    Read from findscu's response files with ``read_dataset``, which leaves every element
    raw (``dcmread`` would convert Specific Character Set).
    """
    answers = []
    for data in result.files:
        meta = dcmread(BytesIO(data), stop_before_pixels=True).file_meta
        syntax = UID(meta.TransferSyntaxUID)
        start = 132 + 12 + struct.unpack_from("<L", data, 132 + 8)[0]   # after group 0002
        ds = read_dataset(BytesIO(data[start:]), syntax.is_implicit_VR, syntax.is_little_endian)
        elems: dict[int, bytes] = {}
        for tag in list(ds.keys()):
            elem = ds.get_item(tag)
            assert isinstance(elem, RawDataElement), f"{tag} was decoded"
            elems[int(tag)] = bytes(elem.value or b"")
        answers.append(elems)
    assert len(answers) == len(result.identifiers)
    return sorted(answers, key=lambda a: sorted(a.items()))


def without_retrieve_ae(answers: list[dict[int, bytes]]) -> list[dict[int, bytes]]:
    return [{t: v for t, v in a.items() if t != RETRIEVE_AE} for a in answers]


def arg(keyword: str, value: bytes) -> str:
    """A findscu ``-k`` argument carrying ``value`` as these very bytes (argv is bytes)."""
    return os.fsdecode(keyword.encode() + b"=" + value)


@pytest.fixture
def make_pair(orthanc_factory: Factory, proxy_factory: Factory,
              ) -> Iterator[Callable[..., tuple[OrthancArchive, ProxyProcess]]]:
    def make(encoding: str, **route: Any) -> tuple[OrthancArchive, ProxyProcess]:
        archive = orthanc_factory("PACS_CS", extra_config={"DefaultEncoding": encoding})
        archive.upload(instances())
        proxy = proxy_factory({"archives": {"pacs": archive_entry(archive)},
                               "routes": [{"called_ae": ROUTE, "archives": ["pacs"], **route}]})
        return archive, proxy

    yield make


def both(archive: OrthancArchive, proxy: ProxyProcess, calling: str,
         **query: Any) -> tuple[list[dict[int, bytes]], list[dict[int, bytes]]]:
    direct = findscu(LOOPBACK, archive.dicom_port, archive.aet, calling, **query)
    relayed = findscu(LOOPBACK, proxy.port, ROUTE, calling, **query)
    assert direct.final_status == SUCCESS, direct.output[-1500:]
    assert relayed.final_status == SUCCESS, relayed.output[-1500:]
    return raw_answers(direct), raw_answers(relayed)


def assert_same_bytes(direct: list[dict[int, bytes]], relayed: list[dict[int, bytes]]) -> None:
    assert without_retrieve_ae(relayed) == without_retrieve_ae(direct)
    assert all(a.get(RETRIEVE_AE, b"").rstrip(b" ") == ROUTE.encode()
               for a in relayed if RETRIEVE_AE in a)


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_answers_pass_byte_for_byte_in_every_character_set(
        encoding: str, make_pair: Callable[..., tuple[OrthancArchive, ProxyProcess]]) -> None:
    archive, proxy = make_pair(encoding)
    charset = ENCODINGS[encoding].encode()

    direct, relayed = both(archive, proxy, "WS_CS", level="STUDY", keys=STUDY_KEYS)
    assert len(direct) == len(archive.study_uids())
    assert all(a[0x00080005].rstrip(b" \0") == charset for a in direct)
    assert any(any(b >= 0x80 or b == 0x1B for b in a.get(0x00100010, b"")) for a in direct) \
        or encoding == "Ascii"                   # non-ASCII text really is on the wire
    assert_same_bytes(direct, relayed)

    direct, relayed = both(archive, proxy, "WS_CS", model="patient", level="PATIENT",
                           keys=["SpecificCharacterSet", "PatientName", "PatientID",
                                 "PatientBirthDate", "NumberOfPatientRelatedStudies"])
    assert direct
    assert_same_bytes(direct, relayed)

    direct, relayed = both(archive, proxy, "WS_CS", level="SERIES", keys=SERIES_KEYS)
    assert direct
    assert_same_bytes(direct, relayed)

    # The workstation's own text goes upstream as its bytes: match on a name as the
    # archive wrote it, in its character set (the answer would differ otherwise).
    keys = [arg("SpecificCharacterSet", charset), "", "StudyInstanceUID", "StudyDescription",
            "RetrieveAETitle"]
    for name in names_to_match(archive):
        keys[1] = arg("PatientName", name)
        direct = raw_answers(findscu(LOOPBACK, archive.dicom_port, archive.aet, "WS_CS",
                                     level="STUDY", keys=keys))
        if direct:
            break
    assert direct, "Orthanc matched none of its own names"
    relayed = raw_answers(findscu(LOOPBACK, proxy.port, ROUTE, "WS_CS", level="STUDY",
                                  keys=keys))
    assert_same_bytes(direct, relayed)


def names_to_match(archive: OrthancArchive) -> list[bytes]:
    """Patient's Names as the archive answers them, those beyond ASCII first; then their
    beginnings through the first non-ASCII characters, as wildcards (Orthanc drops what
    its encoding cannot hold, so it may not match a name it answered whole)."""
    result = findscu(LOOPBACK, archive.dicom_port, archive.aet, "WS_CS", level="STUDY",
                     keys=["PatientName"])
    names = {a.get(0x00100010, b"").rstrip(b" ") for a in raw_answers(result)}
    names = {n for n in names if n.strip(b"?^=*") and b"\\" not in n}
    exact = sorted(names, key=lambda n: (all(b < 0x80 for b in n), n))
    prefixes = [m.group(0) + b"*" for n in exact
                if (m := re.match(rb"[\x00-\x7f]*[\x80-\xff]+", n))]
    return exact[:4] + prefixes[:4]


def test_orthanc_japanese_iso_ir_13_reaches_the_workstation_unchanged(
        make_pair: Callable[..., tuple[OrthancArchive, ProxyProcess]]) -> None:
    """The report: ``ISO_IR 13`` and ``Test-\\x84D\\x83\\xa6\\xc8``, not ``Test-???``."""
    archive, proxy = make_pair("Japanese")
    keys = ["SpecificCharacterSet", "PatientID=CS-ISO_IR192", "PatientName",
            "StudyDescription", "RetrieveAETitle"]
    direct, relayed = both(archive, proxy, "WS_JP", level="STUDY", keys=keys)
    [answer] = direct
    assert answer[0x00080005].rstrip(b" ") == b"ISO_IR 13"
    assert answer[0x00100010].rstrip(b" ") == DEFECT_BYTES
    assert_same_bytes(direct, relayed)
    [through] = relayed
    assert through[0x00100010].rstrip(b" ") == DEFECT_BYTES


@pytest.mark.parametrize("merge", ["stream", "complete"])
def test_federated_answers_of_equal_archives_keep_their_bytes(
        merge: str, orthanc_factory: Factory, proxy_factory: Factory) -> None:
    """De-duplicating (stream) or merging (complete) the same studies from two archives in
    ISO_IR 13 changes no byte: nothing is taken from the second, nothing re-encoded."""
    archives = [orthanc_factory(f"PACS_{n}", extra_config={"DefaultEncoding": "Japanese"})
                for n in "AB"]
    for archive in archives:
        archive.upload(instances())
    proxy = proxy_factory({
        "archives": {a.aet.lower(): archive_entry(a) for a in archives},
        "routes": [{"called_ae": ROUTE, "archives": [a.aet.lower() for a in archives],
                    "merge": merge}]})
    direct = findscu(LOOPBACK, archives[0].dicom_port, archives[0].aet, "WS_FED",
                     level="STUDY", keys=STUDY_KEYS)
    relayed = findscu(LOOPBACK, proxy.port, ROUTE, "WS_FED", level="STUDY", keys=STUDY_KEYS)
    assert direct.final_status == SUCCESS and relayed.final_status == SUCCESS, relayed.output
    assert_same_bytes(raw_answers(direct), raw_answers(relayed))
    assert any(a[0x00100010].rstrip(b" ") == DEFECT_BYTES for a in raw_answers(relayed))


def test_the_extracted_responses_are_read_raw(tmp_path: Path) -> None:
    """The comparison above reads values as bytes: pydicom leaves a read file's elements
    raw until asked, so no decoding can hide a difference."""
    ds = built("ISO_IR 13", "ﾔﾏﾀﾞ^ﾀﾛｳ=Test")
    path = tmp_path / "rsp0001.dcm"
    ds.save_as(path, enforce_file_format=True)
    result = FindResult([], 0, "", "")
    result.identifiers, result.files = [dcmread(path)], [path.read_bytes()]
    [answer] = raw_answers(result)
    assert answer[0x00100010] == "ﾔﾏﾀﾞ^ﾀﾛｳ=Test".encode("shift_jis") + b" "
    assert answer[0x00080005] == b"ISO_IR 13 "
