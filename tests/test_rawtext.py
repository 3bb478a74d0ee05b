"""Tests for proxy.rawtext: reading/writing a match's elements without converting the rest,
and the C-FIND relay's per-match helpers built on it (PHI bookkeeping, Retrieve AE Title)."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import decode, encode
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

from proxy.operations.find import _deliver
from proxy.query.fanout import workstation_syntax
from proxy.rawtext import set_text, text_values
from proxy.services import OperationRecord
from proxy.upstream import query_contexts

PN, PID, AE_TITLE = Tag("PatientName"), Tag("PatientID"), Tag("RetrieveAETitle")


def _match(charset: str | list[str] | None = None, **keywords: Any) -> Dataset:
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = "1.2.840.99.1"
    ds.PatientName = "Doe^John"
    ds.PatientID = "PID 1"
    ds.RetrieveAETitle = "ORTHANC"
    for keyword, value in keywords.items():
        setattr(ds, keyword, value)
    return ds


def _wire(ds: Dataset, implicit: bool = False) -> Dataset:
    """``ds`` as pynetdicom hands an upstream match to the proxy: decoded lazily."""
    return decode(BytesIO(encode(ds, implicit, True)), implicit, True)


def _converted(ds: Dataset, tag: Tag) -> list[str]:
    """What pydicom's own conversion gives (the reference)."""
    value = ds[tag].value
    values = list(value) if isinstance(value, MultiValue) else [value]
    return [str(v).rstrip(" \0") for v in values if str(v).rstrip(" \0")]


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("charset", [None, "ISO_IR 100", "ISO_IR 192", ["", "ISO 2022 IR 87"]])
def test_reads_what_pydicom_converts_and_leaves_plain_charsets_raw(
        implicit: bool, charset: str | list[str] | None) -> None:
    names = {"ISO_IR 100": "Müller^Jürgen", "ISO_IR 192": "Wang^XiaoDong=王^小東"}
    name = names.get(charset, "Doe^John") if isinstance(charset, str | None) else "Yamada^Taro"
    ds = _wire(_match(charset, PatientName=name, ModalitiesInStudy=["CT", "MR"]), implicit)
    reference = _wire(_match(charset, PatientName=name, ModalitiesInStudy=["CT", "MR"]),
                      implicit)

    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "ModalitiesInStudy"):
        assert text_values(ds, Tag(keyword)) == _converted(reference, Tag(keyword)), keyword
    # Rule 1: whatever the character set, reading never converts an element in place.
    tags = list(ds.keys())     # iterating the Dataset itself would convert them
    assert all(isinstance(ds.get_item(tag), RawDataElement) for tag in tags)


def test_absent_empty_and_multivalued() -> None:
    ds = _wire(_match(OtherPatientIDs=["A1", "", "B2"], PatientBirthDate=""))
    assert text_values(ds, Tag("OtherPatientIDs")) == ["A1", "B2"]
    assert text_values(ds, Tag("PatientBirthDate")) == []
    assert text_values(ds, Tag("PatientAddress")) == []
    built = _match(OtherPatientIDs=["X", "Y"])            # elements built in Python
    assert text_values(built, Tag("OtherPatientIDs")) == ["X", "Y"]


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                      blacklist_characters="\\^="), max_size=20),
       st.booleans())
def test_latin1_patient_ids_round_trip(value: str, implicit: bool) -> None:
    ds = _wire(_match("ISO_IR 100", PatientID=value), implicit)
    reference = _wire(_match("ISO_IR 100", PatientID=value), implicit)
    assert text_values(ds, PID) == _converted(reference, PID)


@pytest.mark.parametrize("implicit", [False, True])
def test_set_text_is_written_as_is_and_reads_back(implicit: bool) -> None:
    ds = _wire(_match("ISO_IR 100"), implicit)
    set_text(ds, AE_TITLE, "AE", "QR_PROXY1")            # odd length: padded with a space
    assert isinstance(ds.get_item(AE_TITLE), RawDataElement)
    again = decode(BytesIO(encode(ds, implicit, True)), implicit, True)
    assert again.RetrieveAETitle == "QR_PROXY1"
    assert again.PatientName == "Doe^John"


def test_relayed_match_keeps_every_other_byte() -> None:
    """Rule 1 of the C-FIND relay: only Retrieve AE Title changes on the wire."""
    original = _match("ISO_IR 100", StudyDescription="Thorax ÄÖ", ModalitiesInStudy=["CT", "SR"],
                      PatientBirthDate="19700101", AccessionNumber="A 1")
    original.add_new(0x00090010, "LO", "ACME 1.0")       # a private block passes through too
    original.add_new(0x00091001, "LO", "opaque")
    for implicit in (False, True):
        ds = _wire(original, implicit)
        record = OperationRecord("C-FIND", details={"matches": 0})
        _deliver(record, ds, 0xFF00, "ROUTE_AE")
        expected = _wire(original, implicit)
        expected.RetrieveAETitle = "ROUTE_AE"
        assert encode(ds, implicit, True) == encode(expected, implicit, True)
        assert record.details["matches"] == 1
        assert set(record.phi) == {"Doe^John", "PID 1", "19700101"}
        # Nothing but Retrieve AE Title was converted (they are copied as bytes).
        tags = list(ds.keys())     # iterating the Dataset itself would convert them
        converted = [t for t in tags if not isinstance(ds.get_item(t), RawDataElement)]
        assert set(converted) <= {Tag("SpecificCharacterSet")}


def test_protect_collects_phi_of_exotic_charsets_by_conversion() -> None:
    ds = _wire(_match(["", "ISO 2022 IR 87"], PatientName="Yamada^Taro=山田^太郎"))
    record = OperationRecord("C-FIND")
    record.protect(ds)
    assert "Yamada^Taro=山田^太郎" in record.phi and "PID 1" in record.phi


def test_upstream_query_contexts_put_the_workstations_syntax_first() -> None:
    [both] = query_contexts(FIND)
    assert both.transfer_syntax == [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    first, fallback = query_contexts(FIND, ImplicitVRLittleEndian)
    assert first.transfer_syntax == [ImplicitVRLittleEndian]
    assert fallback.transfer_syntax == [ExplicitVRLittleEndian]
    assert len(query_contexts(FIND, "1.2.840.10008.1.2.2")) == 1      # big endian: as before


def test_workstation_syntax_of_an_event() -> None:
    from proxy.dicom.negotiation import Accepted
    from proxy.observe.events import AssocInfo
    from proxy.session import Request, Session

    session = Session(AssocInfo("a1", "WS", "R", "127.0.0.1:1"),
                      contexts={5: Accepted("1.2.840.10008.5.1.4.1.2.2.1", ImplicitVRLittleEndian)})
    assert workstation_syntax(Request(session, 5, {})) == ImplicitVRLittleEndian
    assert workstation_syntax(None) is None
