"""Tests for proxy.query.matching: C-FIND attribute matching, PS3.4 C.2.2.2 (rules 1-10)."""

from __future__ import annotations

import fnmatch
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from proxy.query.matching import is_matching_key, matches

ABSENT: Any = object()  # the candidate lacks the attribute


def _ds(**keywords: Any) -> Dataset:
    """A dataset from keywords; query syntax (ranges, wildcards) is not validated."""
    ds = Dataset()
    for keyword, value in keywords.items():
        if value is not ABSENT:
            tag = Tag(keyword)
            ds[tag] = DataElement(tag, dictionary_VR(tag), value, validation_mode=config.IGNORE)
    return ds


def _item(**keywords: Any) -> Dataset:
    return _ds(**keywords)


YAMADA = "Yamada^Tarou=山田^太郎=やまだ^たろう"

# (keyword, query value, candidate value, expected)
TABLE: list[Any] = [
    # Rule 1 - Universal Matching (C.2.2.2.3)
    pytest.param("PatientName", "", "SMITH", True, id="universal-empty-key"),
    pytest.param("PatientName", "", ABSENT, True, id="universal-absent-candidate"),
    pytest.param("PatientName", "*", ABSENT, True, id="universal-star-is-universal"),
    pytest.param("PatientName", "**", "", True, id="universal-stars"),
    pytest.param("StudyDate", "", ABSENT, True, id="universal-date"),
    pytest.param("StudyDate", "-", "20240101", True, id="universal-open-range"),
    pytest.param("StudyInstanceUID", "", "1.2.3", True, id="universal-uid"),
    # Rule 2 - keys that are never matched
    pytest.param("SpecificCharacterSet", "ISO_IR 100", "ISO_IR 192", True, id="skip-charset"),
    pytest.param("QueryRetrieveLevel", "STUDY", "SERIES", True, id="skip-level"),
    pytest.param("RetrieveAETitle", "PROXY", "ARCHIVE1", True, id="skip-retrieve-ae"),
    pytest.param("InstanceAvailability", "ONLINE", "NEARLINE", True, id="skip-availability"),
    pytest.param("TimezoneOffsetFromUTC", "+0100", "-0500", True, id="skip-timezone"),
    pytest.param("EncapsulatedDocument", b"ab", b"cd", True, id="skip-binary-vr"),
    # Rule 3 - unknown (absent or empty) candidate values match by default (C.2.2.1.2)
    pytest.param("PatientName", "SMITH", ABSENT, True, id="unknown-absent"),
    pytest.param("PatientName", "SMITH", "", True, id="unknown-empty"),
    pytest.param("StudyDate", "20240101-", ABSENT, True, id="unknown-date"),
    # Rule 3 - Empty Value Matching (C.2.2.2.7)
    pytest.param("PatientName", '""', ABSENT, True, id="empty-value-absent"),
    pytest.param("PatientName", '""', "", True, id="empty-value-empty"),
    pytest.param("PatientName", '""', "SMITH", False, id="empty-value-vs-value"),
    pytest.param("PatientName", '""', '""', True, id="empty-value-literal"),
    pytest.param("StudyDate", '""', "20240101", False, id="empty-value-date"),
    # Rule 4 - Single Value Matching (C.2.2.2.1), padding per VR (PS3.5 6.2)
    pytest.param("PatientID", "12345", "12345", True, id="single-equal"),
    pytest.param("PatientID", "12345", "123456", False, id="single-longer"),
    pytest.param("PatientID", "12345", "1234", False, id="single-shorter"),
    pytest.param("PatientID", "12345", "12345 ", True, id="single-LO-trailing-space"),
    pytest.param("PatientID", " 12345", "12345", True, id="single-LO-leading-space"),
    pytest.param("AccessionNumber", "A1", "a1", False, id="single-SH-case"),
    pytest.param("Modality", "CT", "CT", True, id="single-CS"),
    pytest.param("Modality", "CT", "MR", False, id="single-CS-other"),
    pytest.param("Modality", "ct", "CT", False, id="single-CS-case"),
    pytest.param("Modality", " CT ", "CT", True, id="single-CS-padding"),
    pytest.param("StudyDescription", "Head", "HEAD", False, id="single-LO-case"),
    pytest.param("ImageComments", "x", "x  ", True, id="single-LT-trailing-space"),
    pytest.param("ImageComments", "  x", "x", False, id="single-LT-leading-space-significant"),
    pytest.param("DerivationDescription", "a b", "a b", True, id="single-ST"),
    pytest.param("TextValue", "abc", "abd", False, id="single-UT"),
    pytest.param("LongCodeValue", "ABC", "ABC ", True, id="single-UC"),
    pytest.param("URNCodeValue", "urn:oid:1.2", "urn:oid:1.2", True, id="single-UR"),
    pytest.param("PerformedStationAETitle", "CT01", " CT01 ", True, id="single-AE-padding"),
    pytest.param("PatientAge", "045Y", "045Y", True, id="single-AS"),
    pytest.param("PatientAge", "045Y", "046Y", False, id="single-AS-other"),
    pytest.param("NumberOfStudyRelatedInstances", "5", "5", True, id="single-IS"),
    pytest.param("NumberOfStudyRelatedInstances", "5", "6", False, id="single-IS-other"),
    pytest.param("NumberOfStudyRelatedInstances", "5", " 05", True, id="single-IS-numeric"),
    pytest.param("PatientWeight", "70", "70.0", True, id="single-DS-numeric"),
    pytest.param("PatientWeight", "70", "70.5", False, id="single-DS-other"),
    pytest.param("Rows", 512, 512, True, id="single-US"),
    pytest.param("Rows", 512, 256, False, id="single-US-other"),
    # Rule 4 - Person Names
    pytest.param("PatientName", "SMITH^JOHN", "SMITH^JOHN", True, id="pn-equal"),
    pytest.param("PatientName", "SMITH^JOHN", "SMITH^JOHN^^^", True, id="pn-trailing-carets"),
    pytest.param("PatientName", "SMITH^JOHN^^", "SMITH^JOHN", True, id="pn-key-carets"),
    pytest.param("PatientName", "SMITH^JOHN ", "SMITH^JOHN", True, id="pn-trailing-space"),
    pytest.param("PatientName", "SMITH^JOHN", "smith^john", False, id="pn-case-sensitive"),
    pytest.param("PatientName", "SMITH", "SMITH^JOHN", False, id="pn-not-a-prefix"),
    pytest.param("PatientName", "SMITH^JOHN", "SMITH^JOHN=スミス^ジョン", True, id="pn-group-1"),
    pytest.param("PatientName", "山田^太郎", YAMADA, True, id="pn-ideographic-group"),
    pytest.param("PatientName", "やまだ^たろう", YAMADA, True, id="pn-phonetic-group"),
    pytest.param("PatientName", "Yamada^Tarou=山田^太郎", YAMADA, True, id="pn-groupwise"),
    pytest.param("PatientName", "Yamada^Tarou=山田^次郎", YAMADA, False, id="pn-groupwise-other"),
    pytest.param("PatientName", "=山田^太郎", YAMADA, True, id="pn-empty-group-universal"),
    pytest.param("PatientName", "Yamada^Tarou=", YAMADA, True, id="pn-trailing-equals"),
    # Rule 5 - Wild Card Matching (C.2.2.2.4)
    pytest.param("PatientName", "SMITH*", "SMITH^JOHN", True, id="wild-prefix"),
    pytest.param("PatientName", "SM?TH^*", "SMITH^JOHN", True, id="wild-question"),
    pytest.param("PatientName", "*JOHN", "SMITH^JOHN", True, id="wild-suffix"),
    pytest.param("PatientName", "S*N", "SMITH^JOHN", True, id="wild-infix"),
    pytest.param("PatientName", "J*", "SMITH^JOHN", False, id="wild-no-match"),
    pytest.param("PatientName", "smi*", "SMITH^JOHN", False, id="wild-PN-case"),
    pytest.param("PatientName", "*太郎", YAMADA, True, id="wild-PN-group"),
    pytest.param("PatientID", "12*", "12345", True, id="wild-LO"),
    pytest.param("PatientID", "?2345", "12345", True, id="wild-one-char"),
    pytest.param("PatientID", "?345", "12345", False, id="wild-one-char-only"),
    pytest.param("PatientID", "1*5", "15", True, id="wild-star-empty-run"),
    pytest.param("PatientID", "1?5", "15", False, id="wild-question-not-empty"),
    pytest.param("PatientID", "a+b*", "a+bc", True, id="wild-regex-metachar"),
    pytest.param("AccessionNumber", "A.*", "AXB", False, id="wild-dot-literal"),
    pytest.param("AccessionNumber", "A.*", "A.B", True, id="wild-dot"),
    pytest.param("Modality", "C?", "CT", True, id="wild-CS"),
    pytest.param("Modality", "M*", "CT", False, id="wild-CS-no-match"),
    pytest.param("StudyDescription", "*head*", "CT head w/o", True, id="wild-LO-infix"),
    pytest.param("ImageComments", "*contrast*", "with contrast agent", True, id="wild-LT"),
    pytest.param("DerivationDescription", "a?c", "abc", True, id="wild-ST"),
    pytest.param("TextValue", "*x", "line1\nx", True, id="wild-UT-newline"),
    pytest.param("LongCodeValue", "AB?", "ABC", True, id="wild-UC"),
    pytest.param("URNCodeValue", "urn:*", "urn:oid:1.2", True, id="wild-UR"),
    pytest.param("PerformedStationAETitle", "CT*", "CT01", True, id="wild-AE"),
    pytest.param("StudyInstanceUID", "1.2.*", "1.2.3", False, id="wild-not-UI"),
    pytest.param("PatientAge", "04?Y", "045Y", False, id="wild-not-AS"),
    # Rule 6 - List of UID Matching (C.2.2.2.2) and multiple values
    pytest.param("StudyInstanceUID", "1.2.3", "1.2.3", True, id="uid-equal"),
    pytest.param("StudyInstanceUID", "1.2.3", "1.2.30", False, id="uid-not-prefix"),
    pytest.param("StudyInstanceUID", "1.2.3", "1.2.3\0", True, id="uid-nul-padding"),
    pytest.param("StudyInstanceUID", ["1.2.3", "1.2.4"], "1.2.4", True, id="uid-list"),
    pytest.param("StudyInstanceUID", ["1.2.3", "1.2.4"], "1.2.5", False, id="uid-list-miss"),
    pytest.param("SOPClassesInStudy", "1.2.840.10008.5.1.4.1.1.2",
                 ["1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.2"], True,
                 id="uid-multivalued-candidate"),
    pytest.param("ModalitiesInStudy", "CT", ["CT", "MR"], True, id="multi-candidate"),
    pytest.param("ModalitiesInStudy", "PT", ["CT", "MR"], False, id="multi-candidate-miss"),
    pytest.param("ModalitiesInStudy", ["CT", "PT"], ["MR", "PT"], True, id="multi-key-any"),
    pytest.param("ModalitiesInStudy", ["US", "PT"], ["CT", "MR"], False, id="multi-key-none"),
    pytest.param("ModalitiesInStudy", "M?", ["CT", "MR"], True, id="multi-wildcard"),
    pytest.param("ModalitiesInStudy", "CT", ["", "CT"], True, id="multi-empty-value"),
    # Rule 7 - Range Matching DA (C.2.2.2.5.1)
    pytest.param("StudyDate", "20240101-20240131", "20240115", True, id="da-inside"),
    pytest.param("StudyDate", "20240101-20240131", "20240101", True, id="da-low-inclusive"),
    pytest.param("StudyDate", "20240101-20240131", "20240131", True, id="da-high-inclusive"),
    pytest.param("StudyDate", "20240101-20240131", "20231231", False, id="da-before"),
    pytest.param("StudyDate", "20240101-20240131", "20240201", False, id="da-after"),
    pytest.param("StudyDate", "-20240131", "19990101", True, id="da-up-to"),
    pytest.param("StudyDate", "-20240131", "20240201", False, id="da-up-to-miss"),
    pytest.param("StudyDate", "20240101-", "20991231", True, id="da-from"),
    pytest.param("StudyDate", "20240101-", "20231231", False, id="da-from-miss"),
    pytest.param("StudyDate", "20240115", "20240115", True, id="da-single"),
    pytest.param("StudyDate", "20240115", "20240116", False, id="da-single-miss"),
    pytest.param("StudyDate", "20240131-20240101", "20240115", False, id="da-reversed-range"),
    pytest.param("StudyDate", "20240101 - 20240131", "20240115", True, id="da-spaced-range"),
    pytest.param("StudyDate", "2024.01.15", "20240115", True, id="da-legacy-key"),
    pytest.param("StudyDate", "20240115", "2024.01.15", True, id="da-legacy-candidate"),
    pytest.param("StudyDate", "20240101-20240131", "garbage", False, id="da-bad-candidate"),
    pytest.param("StudyDate", "2024*", "20250101", True, id="da-no-wildcard-unreadable"),
    pytest.param("StudyDate", "20240230", "20240301", True, id="da-invalid-key-unreadable"),
    # Rule 7 - Range Matching TM (C.2.2.2.5.2)
    pytest.param("StudyTime", "1000-1200", "1100", True, id="tm-inside"),
    pytest.param("StudyTime", "1000-1200", "120059", True, id="tm-partial-high-whole-minute"),
    pytest.param("StudyTime", "1000-1200", "1201", False, id="tm-after"),
    pytest.param("StudyTime", "1000-1200", "095959.999999", False, id="tm-before"),
    pytest.param("StudyTime", "-1015", "101559.9", True, id="tm-up-to"),
    pytest.param("StudyTime", "-1015", "1016", False, id="tm-up-to-miss"),
    pytest.param("StudyTime", "10-", "235959", True, id="tm-from-hour"),
    pytest.param("StudyTime", "10-", "0959", False, id="tm-from-hour-miss"),
    pytest.param("StudyTime", "10", "101530", True, id="tm-key-hour"),
    pytest.param("StudyTime", "11", "101530", False, id="tm-key-hour-miss"),
    pytest.param("StudyTime", "1015", "101530.123", True, id="tm-key-minute"),
    pytest.param("StudyTime", "101530", "1015", True, id="tm-partial-candidate"),
    pytest.param("StudyTime", "101530.5", "101530.5", True, id="tm-fraction"),
    pytest.param("StudyTime", "101530.5", "101530.6", False, id="tm-fraction-miss"),
    pytest.param("StudyTime", "101530.5", "101530.55", True, id="tm-fraction-precision"),
    pytest.param("StudyTime", "101530.123456", "101530.123456", True, id="tm-microseconds"),
    pytest.param("StudyTime", "2200-0200", "2300", False, id="tm-no-midnight-crossing"),
    pytest.param("StudyTime", "10:15:30", "101530", True, id="tm-legacy-key"),
    pytest.param("StudyTime", "1000-1200", "11:00", True, id="tm-legacy-candidate"),
    pytest.param("StudyTime", "2500", "2500", True, id="tm-invalid-key-unreadable"),
    # Rule 7 - Range Matching DT (C.2.2.2.5.3)
    pytest.param("AcquisitionDateTime", "20240101120000-20240101130000", "20240101123000",
                 True, id="dt-inside"),
    pytest.param("AcquisitionDateTime", "20240101120000-20240101130000", "20240101130001",
                 False, id="dt-after"),
    pytest.param("AcquisitionDateTime", "2024", "20240615", True, id="dt-year"),
    pytest.param("AcquisitionDateTime", "2023", "20240615", False, id="dt-year-miss"),
    pytest.param("AcquisitionDateTime", "202406", "20240630235959", True, id="dt-month"),
    pytest.param("AcquisitionDateTime", "202412", "20241231", True, id="dt-december"),
    pytest.param("AcquisitionDateTime", "202406", "20240701", False, id="dt-month-miss"),
    pytest.param("AcquisitionDateTime", "2024010112", "20240101125959.9", True, id="dt-hour"),
    pytest.param("AcquisitionDateTime", "20240101-0500", "20240101120000+0100", True,
                 id="dt-negative-offset-is-a-value"),
    pytest.param("AcquisitionDateTime", "20240101100000+0000", "20240101110000+0100", True,
                 id="dt-offsets-same-instant"),
    pytest.param("AcquisitionDateTime", "20240101100000+0000", "20240101100000+0100", False,
                 id="dt-offsets-other-instant"),
    pytest.param("AcquisitionDateTime", "20240101000000+0100-20240101020000+0100",
                 "20240101003000+0000", True, id="dt-range-with-offsets"),
    pytest.param("AcquisitionDateTime", "20240101100000", "20240101100000+0500", True,
                 id="dt-wall-clock-when-one-side-naive"),
    pytest.param("AcquisitionDateTime", "-2024", "20241231235959", True, id="dt-up-to-year"),
    pytest.param("AcquisitionDateTime", "20241301", "20240101", True, id="dt-invalid-unreadable"),
    # Rule 9 - Sequence Matching (C.2.2.2.6)
    pytest.param("ProcedureCodeSequence", [_item(CodeValue="X1")],
                 [_item(CodeValue="X0"), _item(CodeValue="X1")], True, id="seq-any-item"),
    pytest.param("ProcedureCodeSequence", [_item(CodeValue="X1")],
                 [_item(CodeValue="X0")], False, id="seq-no-item"),
    pytest.param("ProcedureCodeSequence", [_item(CodeValue="X1", CodingSchemeDesignator="L")],
                 [_item(CodeValue="X1", CodingSchemeDesignator="99"),
                  _item(CodeValue="X0", CodingSchemeDesignator="L")], False,
                 id="seq-keys-in-one-item"),
    pytest.param("ProcedureCodeSequence", [_item(CodeValue="X*")],
                 [_item(CodeValue="X7")], True, id="seq-wildcard"),
    pytest.param("ProcedureCodeSequence", [_item()], ABSENT, True, id="seq-empty-item"),
    pytest.param("ProcedureCodeSequence", [], ABSENT, True, id="seq-no-items"),
    pytest.param("ProcedureCodeSequence", [_item(CodeValue="")], [_item(CodeValue="X0")], True,
                 id="seq-universal-item-key"),
    pytest.param("ProcedureCodeSequence", [_item(CodeValue="X1")], ABSENT, True,
                 id="seq-unknown"),
    pytest.param("RequestAttributesSequence",
                 [_item(ScheduledProtocolCodeSequence=[_item(CodeValue="P1")])],
                 [_item(ScheduledProtocolCodeSequence=[_item(CodeValue="P0"),
                                                       _item(CodeValue="P1")])],
                 True, id="seq-nested"),
    pytest.param("RequestAttributesSequence",
                 [_item(ScheduledProtocolCodeSequence=[_item(CodeValue="P1")])],
                 [_item(ScheduledProtocolCodeSequence=[_item(CodeValue="P0")])],
                 False, id="seq-nested-miss"),
]


@pytest.mark.parametrize(("keyword", "key", "value", "expected"), TABLE)
def test_matches_table(keyword: str, key: Any, value: Any, expected: bool) -> None:
    assert matches(_ds(**{keyword: key}), _ds(**{keyword: value})) is expected


# Rows whose answer changes when unknown values must not match (rule 3, K.2.2.1.1.1).
STRICT_TABLE: list[Any] = [
    pytest.param("PatientName", "SMITH", ABSENT, False, id="strict-absent"),
    pytest.param("PatientName", "SMITH", "", False, id="strict-empty"),
    pytest.param("ModalitiesInStudy", "CT", ["", ""], False, id="strict-empty-values"),
    pytest.param("PatientName", '""', ABSENT, True, id="strict-empty-value-matching"),
    pytest.param("PatientName", "", ABSENT, True, id="strict-universal"),
    pytest.param("PatientName", "*", ABSENT, True, id="strict-universal-star"),
    pytest.param("ProcedureCodeSequence", [_item(CodeValue="X1")], ABSENT, False,
                 id="strict-sequence"),
    pytest.param("ProcedureCodeSequence", [_item(CodeValue="X1")], [_item(CodeMeaning="x")],
                 False, id="strict-sequence-item-lacks-key"),
    pytest.param("ProcedureCodeSequence", [_item()], ABSENT, True, id="strict-sequence-universal"),
]


@pytest.mark.parametrize(("keyword", "key", "value", "expected"), STRICT_TABLE)
def test_matches_strict_unknown(keyword: str, key: Any, value: Any, expected: bool) -> None:
    query, candidate = _ds(**{keyword: key}), _ds(**{keyword: value})
    assert matches(query, candidate, unknown_matches=False) is expected


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("smith*", "SMITH^JOHN", True),
    ("SMITH^JOHN", "smith^john", True),
    ("Smith^John=山田^太郎", "SMITH^JOHN=山田^太郎", True),
    ("SMITH^JANE", "smith^john", False),
])
def test_person_name_case_insensitive_option(key: str, value: str, expected: bool) -> None:
    query, candidate = _ds(PatientName=key), _ds(PatientName=value)
    assert matches(query, candidate, pn_case_insensitive=True) is expected


# (date key, time key, candidate date, candidate time, combined, independent) - rule 8
COMBINED: list[Any] = [
    pytest.param("20060705-20060707", "1000-1800", "20060706", "0800", True, False,
                 id="middle-day-early"),
    pytest.param("20060705-20060707", "1000-1800", "20060705", "0900", False, False,
                 id="first-day-too-early"),
    pytest.param("20060705-20060707", "1000-1800", "20060705", "1000", True, True,
                 id="first-moment"),
    pytest.param("20060705-20060707", "1000-1800", "20060707", "1800", True, True,
                 id="last-minute"),
    pytest.param("20060705-20060707", "1000-1800", "20060707", "1801", False, False,
                 id="last-day-too-late"),
    pytest.param("20060705-", "1000-", "20060706", "0500", True, False, id="from"),
    pytest.param("20060705-", "1000-", "20060705", "0959", False, False, id="from-miss"),
    pytest.param("-20060707", "-1800", "20060706", "2000", True, False, id="up-to"),
    pytest.param("20060705-20060707", "1000-", "20060706", "0800", False, False,
                 id="forms-differ-independent"),
    pytest.param("20060705", "1000", "20060705", "100030", True, True, id="single-values"),
    pytest.param("20060705-20060707", "1000-1800", "20060706", ABSENT, True, True,
                 id="candidate-time-unknown"),
    pytest.param("20060705-20060707", "1000-1800", ABSENT, "0800", True, False,
                 id="candidate-date-unknown"),
    pytest.param("20060705-20060707", "1000-1800", "garbage", "0800", False, False,
                 id="candidate-date-unreadable"),
    pytest.param("2006.07.05-2006.07.07", "10:00-18:00", "20060706", "0800", True, False,
                 id="legacy-formats"),
    pytest.param("20060705-20060707", "xx-1800", "20060706", "0800", True, True,
                 id="unreadable-key-independent"),
    pytest.param("20060705-20060707", "xx-1800", "20060708", "0800", False, False,
                 id="unreadable-key-date-still-ranged"),
]


@pytest.mark.parametrize(("date_key", "time_key", "day", "clock", "combined", "independent"),
                         COMBINED)
@pytest.mark.parametrize("prefix", ["Study", "Series", "PatientBirth"])
def test_combined_datetime(prefix: str, date_key: str, time_key: str, day: Any, clock: Any,
                           combined: bool, independent: bool) -> None:
    query = _ds(**{f"{prefix}Date": date_key, f"{prefix}Time": time_key})
    candidate = _ds(**{f"{prefix}Date": day, f"{prefix}Time": clock})
    assert matches(query, candidate, combined_datetime=True) is combined
    assert matches(query, candidate) is independent


def test_combined_datetime_strict_needs_the_time() -> None:
    query = _ds(StudyDate="20060705-20060707", StudyTime="1000-1800")
    candidate = _ds(StudyDate="20060706")
    assert not matches(query, candidate, combined_datetime=True, unknown_matches=False)


def test_combined_datetime_inside_sequence_items() -> None:
    step = _item(ScheduledProcedureStepStartDate="20060705-20060707",
                 ScheduledProcedureStepStartTime="1000-1800")
    found = _item(ScheduledProcedureStepStartDate="20060706",
                  ScheduledProcedureStepStartTime="0800")
    query = _ds(ScheduledProcedureStepSequence=[step])
    candidate = _ds(ScheduledProcedureStepSequence=[found])
    assert matches(query, candidate, combined_datetime=True)
    assert not matches(query, candidate)


def test_every_key_must_match() -> None:
    query = _ds(PatientName="SMITH*", StudyDate="20240101-", ModalitiesInStudy="CT")
    good = _ds(PatientName="SMITH^J", StudyDate="20240301", ModalitiesInStudy=["CT", "SR"])
    assert matches(query, good)
    for keyword, other in [("PatientName", "JONES"), ("StudyDate", "20231231"),
                           ("ModalitiesInStudy", "MR")]:
        bad = _ds(PatientName="SMITH^J", StudyDate="20240301", ModalitiesInStudy=["CT", "SR"])
        setattr(bad, keyword, other)
        assert not matches(query, bad), keyword


def test_private_and_unknown_tags_pass_through() -> None:
    query, candidate = Dataset(), Dataset()
    query.private_block(0x0009, "ACME", create=True).add_new(0x10, "LO", "wanted")
    candidate.private_block(0x0009, "ACME", create=True).add_new(0x10, "LO", "other")
    query.add_new(0x00109999, "LO", "wanted")
    candidate.add_new(0x00109999, "LO", "other")
    assert matches(query, candidate)


def _elem(tag: int, vr: str, value: Any) -> DataElement:
    return DataElement(tag, vr, value, validation_mode=config.IGNORE)


IS_MATCHING_KEY: list[Any] = [
    pytest.param(_elem(0x00100010, "PN", "SMITH"), True, id="value"),
    pytest.param(_elem(0x00100010, "PN", ""), False, id="universal"),
    pytest.param(_elem(0x00100010, "PN", "*"), False, id="universal-star"),
    pytest.param(_elem(0x00100020, "LO", "*1"), True, id="wildcard"),
    pytest.param(_elem(0x00080020, "DA", "-"), False, id="open-range"),
    pytest.param(_elem(0x00080020, "DA", "*"), True, id="star-in-date-is-literal"),
    pytest.param(_elem(0x00080052, "CS", "STUDY"), False, id="query-retrieve-level"),
    pytest.param(_elem(0x00080005, "CS", "ISO_IR 100"), False, id="charset"),
    pytest.param(_elem(0x00080054, "AE", "ARCHIVE"), False, id="retrieve-ae"),
    pytest.param(_elem(0x00091010, "LO", "x"), False, id="private"),
    pytest.param(_elem(0x00109999, "LO", "x"), False, id="unknown-tag"),
    pytest.param(_elem(0x00100000, "UL", 4), False, id="group-length"),
    pytest.param(_elem(0x00420011, "OB", b"x"), False, id="binary"),
    pytest.param(_elem(0x00081032, "SQ", [_item()]), False, id="sequence-empty-item"),
    pytest.param(_elem(0x00081032, "SQ", [_item(CodeValue="")]), False,
                 id="sequence-universal-item"),
    pytest.param(_elem(0x00081032, "SQ", [_item(CodeValue="X")]), True, id="sequence"),
]


@pytest.mark.parametrize(("elem", "expected"), IS_MATCHING_KEY)
def test_is_matching_key(elem: DataElement, expected: bool) -> None:
    assert is_matching_key(elem) is expected


def test_matches_identifiers_decoded_from_the_wire() -> None:
    from io import BytesIO

    from pynetdicom.dsutils import decode, encode

    def wire(ds: Dataset) -> Dataset:
        raw = encode(ds, True, True)
        assert raw is not None
        decoded: Dataset = decode(BytesIO(raw), True, True)
        return decoded

    query = wire(_ds(QueryRetrieveLevel="STUDY", PatientName="MÜ*", StudyDate="20240101-",
                     SpecificCharacterSet="ISO_IR 192", StudyInstanceUID="1.2.3"))
    candidate = wire(_ds(PatientName="MÜLLER^HANS", StudyDate="20240102", StudyInstanceUID="1.2.3",
                         SpecificCharacterSet="ISO_IR 100", QueryRetrieveLevel="STUDY"))
    assert matches(query, candidate)


# --- properties -----------------------------------------------------------------------------

_TEXT = st.text(alphabet="ABCXYZ019 ^.-", min_size=1, max_size=12).map(str.strip).filter(bool)
_DAY = st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31))
_UID = st.lists(st.integers(0, 999), min_size=2, max_size=6).map(
    lambda parts: ".".join(map(str, parts)))
_CANDIDATE = st.fixed_dictionaries({
    "PatientName": _TEXT,
    "PatientID": _TEXT.map(lambda s: s.replace("^", "")),
    "StudyDate": _DAY.map(lambda d: d.strftime("%Y%m%d")),
    "StudyTime": st.times().map(lambda t: t.strftime("%H%M%S.%f")),
    "ModalitiesInStudy": st.lists(st.sampled_from(["CT", "MR", "PT", "SR"]), min_size=1,
                                  max_size=3),
    "StudyInstanceUID": _UID,
})


@given(_CANDIDATE, st.sets(st.sampled_from(sorted(["PatientName", "PatientID", "StudyDate",
                                                    "StudyTime", "ModalitiesInStudy",
                                                    "StudyInstanceUID"]))))
def test_universal_keys_match_every_candidate(values: dict[str, Any], absent: set[str]) -> None:
    query = _ds(**{keyword: "" for keyword in values})
    candidate = _ds(**{k: (ABSENT if k in absent else v) for k, v in values.items()})
    assert matches(query, candidate, unknown_matches=False)


@given(_CANDIDATE, st.booleans(), st.booleans())
def test_a_candidate_matches_its_own_values(values: dict[str, Any], fold: bool,
                                             combined: bool) -> None:
    candidate = _ds(**values)
    assert matches(candidate, candidate, pn_case_insensitive=fold, combined_datetime=combined,
                   unknown_matches=False)


@given(_DAY, _DAY, _DAY)
def test_date_range_is_inclusive_interval(low: date, high: date, day: date) -> None:
    query = _ds(StudyDate=f"{low:%Y%m%d}-{high:%Y%m%d}")
    assert matches(query, _ds(StudyDate=f"{day:%Y%m%d}")) is (low <= day <= high)


@given(st.times(), st.times(), st.times())
def test_time_range_at_full_precision(low: Any, high: Any, clock: Any) -> None:
    query = _ds(StudyTime=f"{low:%H%M%S.%f}-{high:%H%M%S.%f}")
    assert matches(query, _ds(StudyTime=f"{clock:%H%M%S.%f}")) is (low <= clock <= high)


@given(_DAY, st.integers(-3, 3))
def test_open_date_ranges(day: date, shift: int) -> None:
    other = day + timedelta(days=shift)
    assert matches(_ds(StudyDate=f"{day:%Y%m%d}-"), _ds(StudyDate=f"{other:%Y%m%d}")) is (
        other >= day)
    assert matches(_ds(StudyDate=f"-{day:%Y%m%d}"), _ds(StudyDate=f"{other:%Y%m%d}")) is (
        other <= day)


@given(st.text(alphabet="AB*?", min_size=1, max_size=6), st.text(alphabet="AB", max_size=6))
def test_wildcards_agree_with_fnmatch(pattern: str, value: str) -> None:
    query, candidate = _ds(PatientID=pattern), _ds(PatientID=value or ABSENT)
    expected = set(pattern) == {"*"} or not value or fnmatch.fnmatchcase(value, pattern)
    assert matches(query, candidate) is expected


_MOMENT = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 12, 31))


@given(_MOMENT, _MOMENT, _MOMENT)
def test_combined_range_is_one_datetime_interval(low: datetime, high: datetime,
                                                 moment: datetime) -> None:
    query = _ds(StudyDate=f"{low:%Y%m%d}-{high:%Y%m%d}",
                StudyTime=f"{low:%H%M%S.%f}-{high:%H%M%S.%f}")
    candidate = _ds(StudyDate=f"{moment:%Y%m%d}", StudyTime=f"{moment:%H%M%S.%f}")
    assert matches(query, candidate, combined_datetime=True) is (low <= moment <= high)
