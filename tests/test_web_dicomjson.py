"""proxy.web.dicomjson: a data set → the DICOM JSON Model, checked against PS3.18 F.2.

The expected objects are written out by hand from F.2 (F.2.2 attribute objects, F.2.3 value
representations, F.2.5 empty values, F.2.7 BulkDataURI/InlineBinary), not produced by the
code under test.
"""

from __future__ import annotations

import base64
import json

from pydicom import Dataset, dcmread
from pydicom.data import get_charset_files
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.tag import Tag

from proxy.rawdataset import decode
from proxy.web.dicomjson import to_json


def _raw(ds: Dataset) -> Dataset:
    """``ds`` as a match arrives from an archive: raw elements, still bytes."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return decode(buffer.getvalue(), False, True)


def test_every_vr_family_as_f2_writes_it() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Hans"
    ds.PatientID = "ID 1"
    ds.StudyDate = "20200102"
    ds.ModalitiesInStudy = ["CT", "MR"]
    ds.NumberOfStudyRelatedInstances = "12"           # IS
    ds.PatientWeight = "72.5"                          # DS
    ds.Rows = 512                                      # US
    ds.AccessionNumber = ""                            # empty: F.2.5
    ds.FrameIncrementPointer = Tag("FrameTime")        # AT
    item = Dataset()
    item.CodeValue = "T-A0100"
    item.ReferencedImageSequence = []                  # empty, nested
    ds.AnatomicRegionSequence = [item]
    ds.ReferencedStudySequence = []
    ds.add_new(0x00091010, "OB", b"\x01\x02\x03")       # private, binary
    got = to_json(_raw(ds))
    assert got.skipped == []
    assert got.json == {
        "00080005": {"vr": "CS", "Value": ["ISO_IR 100"]},
        "00080020": {"vr": "DA", "Value": ["20200102"]},
        "00080050": {"vr": "SH"},
        "00080061": {"vr": "CS", "Value": ["CT", "MR"]},
        "00082218": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["T-A0100"]},
                                            "00081140": {"vr": "SQ"}}]},
        "00081110": {"vr": "SQ"},
        "00091010": {"vr": "OB", "InlineBinary": base64.b64encode(b"\x01\x02\x03\x00")
                     .decode()},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Hans"}]},
        "00100020": {"vr": "LO", "Value": ["ID 1"]},
        "00101030": {"vr": "DS", "Value": [72.5]},
        "00201208": {"vr": "IS", "Value": [12]},
        "00280009": {"vr": "AT", "Value": ["00181063"]},
        "00280010": {"vr": "US", "Value": [512]},
    }
    json.dumps(got.json)                               # plain JSON all the way down


def test_person_name_component_groups_from_iso_2022() -> None:
    source = dcmread(get_charset_files("chrH31.dcm")[0])
    del source.PixelData
    got = to_json(_raw(source)).json
    assert got["00100010"] == {"vr": "PN", "Value": [{
        "Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}]}
    assert got["00080005"] == {"vr": "CS", "Value": ["", "ISO 2022 IR 87"]}   # Rule 1


def test_group_lengths_are_left_out_and_a_bad_value_costs_only_itself() -> None:
    ds = Dataset()
    ds.add(RawDataElement(Tag(0x00080000), "UL", 4, b"\x10\x00\x00\x00", 0, False, True))
    ds.add(RawDataElement(Tag(0x00101030), "DS", 4, b"abc ", 0, False, True))
    ds.add(RawDataElement(Tag(0x00100020), "LO", 4, b"ID 1", 0, False, True))
    ds.add(RawDataElement(Tag(0x00100030), "XX", 8, b"20200101", 0, False, True))  # no VR
    got = to_json(ds)
    assert got.json == {"00100020": {"vr": "LO", "Value": ["ID 1"]}}
    assert got.skipped == ["00100030", "00101030"]


def test_bulk_data_uri_above_the_threshold() -> None:
    ds = Dataset()
    ds.add(DataElement(0x7FE00010, "OW", b"\x00" * 2048))
    ds.add(DataElement(0x00091010, "OB", b"\x01\x02"))
    got = to_json(ds, lambda elem: f"bulk/{elem.tag:08X}", threshold=1024).json
    assert got["7FE00010"] == {"vr": "OW", "BulkDataURI": "bulk/7FE00010"}
    assert got["00091010"] == {"vr": "OB", "InlineBinary": base64.b64encode(b"\x01\x02")
                               .decode()}
