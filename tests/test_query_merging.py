"""Tests for proxy.query.merging: de-duplication and merging of federated C-FIND matches."""

from __future__ import annotations

import copy
from io import BytesIO
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode, encode

from proxy import fastencode
from proxy.query.merging import (
    COUNT_KEYWORDS,
    LEVEL_UNIQUE_KEYS,
    UNION_KEYWORDS,
    Deduplicator,
    merge,
    merge_all,
    unique_key,
)


def _ds(**keywords: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in keywords.items():
        setattr(ds, keyword, value)
    return ds


def _wire(ds: Dataset) -> Dataset:
    """The identifier as an archive's answer arrives: raw elements, decoded on access."""
    raw = encode(ds, True, True)
    assert raw is not None
    decoded: Dataset = decode(BytesIO(raw), True, True)
    return decoded


def test_level_unique_keys_table() -> None:
    assert dict(LEVEL_UNIQUE_KEYS) == {
        "PATIENT": ("PatientID", "IssuerOfPatientID"),
        "STUDY": ("StudyInstanceUID",),
        "SERIES": ("SeriesInstanceUID",),
        "IMAGE": ("SOPInstanceUID",),
    }


UNIQUE_KEY: list[Any] = [
    pytest.param("STUDY", {"StudyInstanceUID": "1.2.3"}, ("1.2.3",), id="study"),
    pytest.param("study", {"StudyInstanceUID": "1.2.3"}, ("1.2.3",), id="level-any-case"),
    pytest.param(" STUDY ", {"StudyInstanceUID": "1.2.3"}, ("1.2.3",), id="level-padded"),
    pytest.param("STUDY", {"StudyInstanceUID": ""}, None, id="study-empty"),
    pytest.param("STUDY", {"PatientID": "P1"}, None, id="study-absent"),
    pytest.param("SERIES", {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3"},
                 ("1.2.3",), id="series"),
    pytest.param("IMAGE", {"SOPInstanceUID": "1.2.3.4"}, ("1.2.3.4",), id="image"),
    pytest.param("IMAGE", {"SeriesInstanceUID": "1.2.3"}, None, id="image-absent"),
    pytest.param("PATIENT", {"PatientID": "P1", "IssuerOfPatientID": "HOSP"}, ("P1", "HOSP"),
                 id="patient-with-issuer"),
    pytest.param("PATIENT", {"PatientID": "P1"}, ("P1", ""), id="patient-issuer-absent"),
    pytest.param("PATIENT", {"PatientID": "P1 ", "IssuerOfPatientID": ""}, ("P1", ""),
                 id="patient-issuer-empty-equals-absent"),
    pytest.param("PATIENT", {"PatientID": "", "IssuerOfPatientID": "HOSP"}, None,
                 id="patient-id-empty"),
]


@pytest.mark.parametrize(("level", "values", "expected"), UNIQUE_KEY)
def test_unique_key(level: str, values: dict[str, Any], expected: tuple[str, ...] | None) -> None:
    assert unique_key(level, _ds(**values)) == expected


def test_unique_key_of_a_raw_identifier() -> None:
    assert unique_key("STUDY", _wire(_ds(StudyInstanceUID="1.2.3"))) == ("1.2.3",)
    padded = _ds()
    padded.add_new(0x0020000D, "UI", "1.2.3")    # odd length: encoded with a trailing NUL
    assert unique_key("STUDY", _wire(padded)) == ("1.2.3",)


@pytest.mark.parametrize("level", ["", "FRAME", "INSTANCE"])
def test_unknown_level_is_an_error(level: str) -> None:
    with pytest.raises(ValueError, match="Query/Retrieve Level"):
        unique_key(level, _ds(StudyInstanceUID="1.2.3"))
    with pytest.raises(ValueError, match="Query/Retrieve Level"):
        Deduplicator(level)
    with pytest.raises(ValueError, match="Query/Retrieve Level"):
        merge_all(level, [])


# (level, unique key values offered in order, expected send decisions, duplicates, unique,
#  without key); None stands for an answer without its unique key.
DEDUPLICATION: list[Any] = [
    pytest.param("STUDY", ["1", "2", "3"], [True, True, True], 0, 3, 0, id="all-distinct"),
    pytest.param("STUDY", ["1", "1", "2", "1"], [True, False, True, False], 2, 2, 0,
                 id="repeats"),
    pytest.param("STUDY", [None, None, "1"], [True, True, True], 0, 1, 2, id="no-key-passes"),
    pytest.param("STUDY", [], [], 0, 0, 0, id="nothing"),
    pytest.param("SERIES", ["1", "1"], [True, False], 1, 1, 0, id="series"),
    pytest.param("IMAGE", ["1", "2", "2"], [True, True, False], 1, 2, 0, id="image"),
]


@pytest.mark.parametrize(("level", "keys", "sends", "duplicates", "unique", "without_key"),
                         DEDUPLICATION)
def test_deduplicator(level: str, keys: list[str | None], sends: list[bool], duplicates: int,
                      unique: int, without_key: int) -> None:
    keyword = LEVEL_UNIQUE_KEYS[level][0]
    dedup = Deduplicator(level)
    offered = [dedup.offer(_ds(**({} if k is None else {keyword: k}))) for k in keys]
    assert offered == sends
    assert (dedup.duplicates, dedup.unique, dedup.without_key) == (duplicates, unique,
                                                                   without_key)


@pytest.mark.parametrize(("offers", "sends"), [
    ([("P1", "HOSP"), ("P1", "HOSP")], [True, False]),
    ([("P1", "HOSP"), ("P1", "CLINIC")], [True, True]),
    ([("P1", None), ("P1", "")], [True, False]),
    ([("P1", None), ("P1", "HOSP")], [True, True]),
])
def test_deduplicator_patient_issuer(offers: list[tuple[str, str | None]],
                                     sends: list[bool]) -> None:
    dedup = Deduplicator("PATIENT")
    answers = [_ds(PatientID=pid, **({} if issuer is None else {"IssuerOfPatientID": issuer}))
               for pid, issuer in offers]
    assert [dedup.offer(a) for a in answers] == sends


# (source, study UID) offered in order, whether each is sent - rule 1b
SOURCES: list[Any] = [
    pytest.param([("a", "1"), ("a", "1")], [True, True], id="one-source-never-duplicates"),
    pytest.param([("a", "1"), ("b", "1")], [True, False], id="across-sources-once"),
    pytest.param([("a", "1"), ("a", "1"), ("b", "1"), ("b", "1")], [True, True, False, False],
                 id="replicas-of-a-collision"),
    pytest.param([("a", "1"), ("b", "1"), ("b", "1")], [True, False, True],
                 id="the-second-source-holds-more"),
    pytest.param([("a", "1"), (None, "1"), (None, "1")], [True, False, False],
                 id="no-source-is-its-own"),
]


@pytest.mark.parametrize(("offers", "sends"), SOURCES)
def test_deduplicator_sources(offers: list[tuple[str | None, str]], sends: list[bool]) -> None:
    dedup = Deduplicator("STUDY")
    assert [dedup.offer(_ds(StudyInstanceUID=uid), source)
            for source, uid in offers] == sends
    assert dedup.duplicates == sends.count(False)


def test_a_forgotten_source_keeps_what_it_sent() -> None:
    dedup = Deduplicator("STUDY")
    assert [dedup.offer(_ds(StudyInstanceUID="1"), 0) for _ in range(2)] == [True, True]
    dedup.forget(0)
    assert [dedup.offer(_ds(StudyInstanceUID="1"), 1) for _ in range(3)] == [False, False,
                                                                           True]


def test_merge_all_merges_the_nth_answer_of_each_source() -> None:
    answers = [_ds(StudyInstanceUID="1", PatientID="P1"),
               _ds(StudyInstanceUID="1", PatientID="P2"),
               _ds(StudyInstanceUID="1", PatientID="P1", StudyDescription="from b"),
               _ds(StudyInstanceUID="1", PatientID="P2")]
    merged = merge_all("STUDY", answers, sources=["a", "a", "b", "b"])
    assert [str(ds.PatientID) for ds in merged] == ["P1", "P2"]
    assert merged[0].StudyDescription == "from b" and "StudyDescription" not in merged[1]
    assert len(merge_all("STUDY", answers)) == 1          # no sources: one per key


STUDY = {"StudyInstanceUID": "1.2.3"}

# (answer a, answer b, expected merge) - rule 4
MERGE: list[Any] = [
    pytest.param({"PatientName": "SMITH"}, {"PatientName": "JONES"}, {"PatientName": "SMITH"},
                 id="a-wins"),
    pytest.param({}, {"StudyDescription": "Head"}, {"StudyDescription": "Head"},
                 id="fill-absent"),
    pytest.param({"StudyDescription": ""}, {"StudyDescription": "Head"},
                 {"StudyDescription": "Head"}, id="fill-empty"),
    pytest.param({"StudyDescription": "Head"}, {"StudyDescription": ""},
                 {"StudyDescription": "Head"}, id="keep-when-b-empty"),
    pytest.param({"AccessionNumber": "A1"}, {}, {"AccessionNumber": "A1"}, id="keep-when-b-absent"),
    pytest.param({"ReferringPhysicianName": ""}, {}, {"ReferringPhysicianName": ""},
                 id="empty-stays-empty"),
    pytest.param({"NumberOfStudyRelatedInstances": "10"}, {"NumberOfStudyRelatedInstances": "12"},
                 {"NumberOfStudyRelatedInstances": "12"}, id="count-takes-larger"),
    pytest.param({"NumberOfStudyRelatedInstances": "12"}, {"NumberOfStudyRelatedInstances": "10"},
                 {"NumberOfStudyRelatedInstances": "12"}, id="count-keeps-larger"),
    pytest.param({"NumberOfStudyRelatedSeries": ""}, {"NumberOfStudyRelatedSeries": "3"},
                 {"NumberOfStudyRelatedSeries": "3"}, id="count-fills-empty"),
    pytest.param({"NumberOfPatientRelatedStudies": "1"}, {"NumberOfPatientRelatedStudies": "2"},
                 {"NumberOfPatientRelatedStudies": "2"}, id="count-patient-studies"),
    pytest.param({"ModalitiesInStudy": ["CT", "SR"]}, {"ModalitiesInStudy": ["MR", "CT"]},
                 {"ModalitiesInStudy": ["CT", "SR", "MR"]}, id="modalities-ordered-union"),
    pytest.param({"ModalitiesInStudy": "CT"}, {"ModalitiesInStudy": "CT"},
                 {"ModalitiesInStudy": "CT"}, id="modalities-same"),
    pytest.param({"ModalitiesInStudy": ""}, {"ModalitiesInStudy": ["MR", "CT"]},
                 {"ModalitiesInStudy": ["MR", "CT"]}, id="modalities-fill"),
    pytest.param({"ModalitiesInStudy": ["CT"]}, {"ModalitiesInStudy": ["MR", "MR"]},
                 {"ModalitiesInStudy": ["CT", "MR"]}, id="modalities-no-repeats"),
    pytest.param({"SOPClassesInStudy": "1.2.840.10008.5.1.4.1.1.2"},
                 {"SOPClassesInStudy": ["1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.2"]},
                 {"SOPClassesInStudy": ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"]},
                 id="sop-classes-union"),
    pytest.param({"RetrieveAETitle": "ARCHIVE1"}, {"RetrieveAETitle": "ARCHIVE2"},
                 {"RetrieveAETitle": "ARCHIVE1"}, id="retrieve-ae-kept"),
    pytest.param({}, {"RetrieveAETitle": "ARCHIVE2"}, {}, id="retrieve-ae-not-filled"),
    pytest.param({"ProcedureCodeSequence": [_ds(CodeValue="A")]},
                 {"ProcedureCodeSequence": [_ds(CodeValue="B")]},
                 {"ProcedureCodeSequence": [_ds(CodeValue="A")]}, id="sequence-a-wins-whole"),
    pytest.param({"ProcedureCodeSequence": [_ds()]},
                 {"ProcedureCodeSequence": [_ds(CodeValue="B")]},
                 {"ProcedureCodeSequence": [_ds(CodeValue="B")]}, id="sequence-empty-item-filled"),
    pytest.param({}, {"ProcedureCodeSequence": [_ds(CodeValue="B")]},
                 {"ProcedureCodeSequence": [_ds(CodeValue="B")]}, id="sequence-filled"),
]


@pytest.mark.parametrize(("a", "b", "expected"), MERGE)
def test_merge(a: dict[str, Any], b: dict[str, Any], expected: dict[str, Any]) -> None:
    assert merge(_ds(**STUDY, **a), _ds(**STUDY, **b)) == _ds(**STUDY, **expected)


def test_merge_never_mutates_its_inputs() -> None:
    a = _ds(**STUDY, ModalitiesInStudy="CT", NumberOfStudyRelatedInstances="1",
            StudyDescription="")
    b = _ds(**STUDY, ModalitiesInStudy="MR", NumberOfStudyRelatedInstances="9",
            StudyDescription="Head", ProcedureCodeSequence=[_ds(CodeValue="B")])
    a_before, b_before = copy.deepcopy(a), copy.deepcopy(b)
    merged = merge(a, b)
    merged.ProcedureCodeSequence[0].CodeValue = "changed"
    merged.ModalitiesInStudy = "US"
    assert (a, b) == (a_before, b_before)


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")
@pytest.mark.parametrize(("ours", "theirs", "expected"), [
    ("7", "x", "7"),
    ("x", "7", "x"),
])
def test_merge_keeps_our_count_when_one_is_unreadable(ours: str, theirs: str,
                                                     expected: str) -> None:
    def answer(count: str) -> Dataset:
        ds = _ds(**STUDY)
        ds.add_new(0x00201209, "LO", count)     # an archive's malformed IS, as it arrives
        return _wire(ds)

    merged = merge(answer(ours), answer(theirs))
    assert str(merged.NumberOfSeriesRelatedInstances) == expected


def test_merge_skips_private_elements_of_b() -> None:
    a, b = _ds(**STUDY), _ds(**STUDY)
    a.private_block(0x0009, "ACME", create=True).add_new(0x10, "LO", "ours")
    b.private_block(0x0011, "OTHER", create=True).add_new(0x10, "LO", "theirs")
    merged = merge(a, b)
    assert merged == a
    assert 0x00111010 not in merged


@pytest.mark.parametrize(("a_charset", "b_charset", "expected_charset"), [
    pytest.param("ISO_IR 100", "ISO_IR 192", "ISO_IR 192", id="latin1-and-utf8"),
    pytest.param(None, "ISO_IR 192", "ISO_IR 192", id="default-and-utf8"),
    pytest.param("ISO_IR 192", "ISO_IR 192", "ISO_IR 192", id="same-utf8"),
])
def test_merge_of_raw_answers_in_different_character_sets(
        a_charset: str | None, b_charset: str, expected_charset: str) -> None:
    a = _ds(**STUDY, PatientName="Muller^Hans" if a_charset is None else "Müller^Hans")
    if a_charset is not None:
        a.SpecificCharacterSet = a_charset
    b = _ds(**STUDY, SpecificCharacterSet=b_charset, StudyDescription="頭部 CT")
    merged = merge(_wire(a), _wire(b))
    assert merged.SpecificCharacterSet == expected_charset
    assert str(merged.PatientName) == str(a.PatientName)
    assert merged.StudyDescription == "頭部 CT"
    again = _wire(merged)               # the merged answer encodes and reads back the same
    assert (str(again.PatientName), again.StudyDescription) == (str(a.PatientName), "頭部 CT")


def test_merge_keeps_charset_when_no_text_is_taken() -> None:
    a = _ds(**STUDY, SpecificCharacterSet="ISO_IR 100", PatientName="Müller")
    b = _ds(**STUDY, SpecificCharacterSet="ISO_IR 192", NumberOfStudyRelatedInstances="4")
    merged = merge(_wire(a), _wire(b))
    assert merged.SpecificCharacterSet == "ISO_IR 100"
    assert merged.NumberOfStudyRelatedInstances == 4
    assert str(merged.PatientName) == "Müller"


def test_merge_all_groups_in_order_of_first_appearance() -> None:
    answers = [
        _ds(StudyInstanceUID="1", ModalitiesInStudy="CT"),
        _ds(StudyInstanceUID="2", StudyDescription="two"),
        _ds(PatientID="no-key"),
        _ds(StudyInstanceUID="1", ModalitiesInStudy="MR", StudyDescription="one"),
        _ds(PatientID="no-key"),
        _ds(StudyInstanceUID="3"),
        _ds(StudyInstanceUID="2", NumberOfStudyRelatedInstances="5"),
    ]
    before = copy.deepcopy(answers)
    merged = merge_all("STUDY", answers)
    assert merged == [
        _ds(StudyInstanceUID="1", ModalitiesInStudy=["CT", "MR"], StudyDescription="one"),
        _ds(StudyInstanceUID="2", StudyDescription="two", NumberOfStudyRelatedInstances="5"),
        _ds(PatientID="no-key"),
        _ds(PatientID="no-key"),
        _ds(StudyInstanceUID="3"),
    ]
    assert answers == before
    assert all(m is not a for m in merged for a in answers)


def test_merge_all_of_nothing() -> None:
    assert merge_all("IMAGE", iter([])) == []


def test_tables_name_real_attributes() -> None:
    for keyword in COUNT_KEYWORDS | UNION_KEYWORDS:
        assert tag_for_keyword(keyword) is not None, keyword


# --- properties -------------------------------------------------------------------------------

_WORD = st.text(alphabet="ABCDEFXYZ019", min_size=0, max_size=6)
_COUNT = st.one_of(st.just(""), st.integers(0, 500).map(str))
_ANSWER = st.fixed_dictionaries(
    {"StudyInstanceUID": st.just("1.2.3")},
    optional={
        "PatientName": _WORD,
        "PatientID": _WORD,
        "StudyDescription": _WORD,
        "AccessionNumber": _WORD,
        "RetrieveAETitle": _WORD.filter(bool),
        "NumberOfStudyRelatedInstances": _COUNT,
        "NumberOfStudyRelatedSeries": _COUNT,
        "ModalitiesInStudy": st.lists(st.sampled_from(["CT", "MR", "PT", "SR"]), max_size=3,
                                      unique=True),
    },
).map(lambda values: _ds(**values))


@given(_ANSWER)
def test_merge_with_itself_is_itself(a: Dataset) -> None:
    assert merge(a, a) == a


@given(_ANSWER, _ANSWER)
def test_merge_is_idempotent(a: Dataset, b: Dataset) -> None:
    once = merge(a, b)
    assert merge(once, b) == once
    assert merge(once, a) == once


@given(_ANSWER, _ANSWER)
def test_merge_loses_nothing_of_a_and_fills_from_b(a: Dataset, b: Dataset) -> None:
    merged = merge(a, b)
    for elem in a:
        assert elem.tag in merged
        if elem.keyword not in COUNT_KEYWORDS | UNION_KEYWORDS and not elem.is_empty:
            assert merged[elem.tag] == elem
    for elem in b:
        if not elem.is_empty and elem.keyword != "RetrieveAETitle":
            assert elem.tag in merged and not merged[elem.tag].is_empty


@given(st.lists(st.sampled_from(["1", "2", "3", ""]), max_size=12))
def test_merge_all_has_one_answer_per_key(keys: list[str]) -> None:
    merged = merge_all("STUDY", [_ds(StudyInstanceUID=k) for k in keys])
    with_key = [m.StudyInstanceUID for m in merged if m.StudyInstanceUID]
    assert with_key == list(dict.fromkeys(k for k in keys if k))
    assert len(merged) - len(with_key) == keys.count("")


def test_merge_all_consuming_gives_the_same_answer_without_copies() -> None:
    def answers() -> list[Dataset]:
        return [_ds(StudyInstanceUID="1", ModalitiesInStudy="CT"),
                _ds(StudyInstanceUID="2", StudyDescription="two"),
                _ds(StudyInstanceUID="1", ModalitiesInStudy="MR", StudyDescription="one",
                    NumberOfStudyRelatedInstances="3"),
                _ds(StudyInstanceUID="1", NumberOfStudyRelatedInstances="7")]
    given = answers()
    merged = merge_all("STUDY", given, consume=True)
    assert merged == merge_all("STUDY", answers())
    assert merged[0] is given[0] and merged[1] is given[1]
    assert merged[0].NumberOfStudyRelatedInstances == 7



def _answer(implicit: bool, **raw: bytes) -> Dataset:
    """An answer as pynetdicom hands it over: ISO_IR 13 text given as its bytes."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 13"
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = "1.2.3"
    for keyword, value in raw.items():
        tag = tag_for_keyword(keyword)
        assert tag is not None
        ds.add_new(tag, "PN" if keyword.endswith("Name") else "LO", value)
    data = encode(ds, implicit, True)
    assert data is not None
    return decode(BytesIO(data), implicit, True)


@pytest.mark.parametrize("later_implicit", [False, True])
def test_a_value_filled_from_the_same_charset_keeps_its_bytes(later_implicit: bool) -> None:
    """Rule 5: no decoding, no re-encoding: ISO_IR 13 bytes pydicom could not write back."""
    name, desc = b"Test-\x84D\x83\xa6\xc8", b"\x83\xa2\x83\xc7 "
    first = _answer(False, PatientName=b"", StudyDescription=desc)
    later = _answer(later_implicit, PatientName=name + b" ", StudyDescription=b"other ")
    pn = tag_for_keyword("PatientName")
    theirs = later.get_item(pn).value
    [merged] = merge_all("STUDY", [first, later], consume=True)
    expected = _answer(False, PatientName=name + b" ", StudyDescription=desc)
    assert fastencode.encode(merged, False, True) == fastencode.encode(expected, False, True)
    assert merged.get_item(pn).value == theirs and theirs.startswith(name)


# -- Modality Worklist items (rule 1c) ----------------------------------------------------------

def _worklist(accession: str, step: str | None, name: str = "DOE^JANE") -> Dataset:
    item = Dataset()
    item.PatientName = name
    item.AccessionNumber = accession
    sps = Dataset()
    sps.Modality = "CT"
    if step is not None:
        sps.ScheduledProcedureStepID = step
    item.ScheduledProcedureStepSequence = [sps]
    return item


def test_worklist_items_are_keyed_by_accession_and_step_id() -> None:
    wire = _wire(_worklist("ACC1", "SPS1"))
    assert unique_key("WORKLIST", wire) == ("ACC1", "SPS1")
    assert "ScheduledProcedureStepSequence" in wire and \
        type(wire.get_item(0x00400100)).__name__ == "RawDataElement"     # read, not converted
    assert unique_key("WORKLIST", _wire(_worklist("ACC1", None))) is None   # no step: rule 2
    assert unique_key("WORKLIST", _wire(_worklist("", "SPS1"))) == ("", "SPS1")


def test_worklist_deduplication_across_providers() -> None:
    dedupe = Deduplicator("WORKLIST")
    assert dedupe.offer(_wire(_worklist("ACC1", "SPS1")), "ris_a")
    assert dedupe.offer(_wire(_worklist("ACC1", "SPS2")), "ris_a")       # another step
    assert dedupe.offer(_wire(_worklist("ACC2", "SPS1")), "ris_a")       # another accession
    assert not dedupe.offer(_wire(_worklist("ACC1", "SPS1", "OTHER^NAME")), "ris_b")
    assert dedupe.offer(_wire(_worklist("ACC9", None)), "ris_b")           # no key: kept
    assert dedupe.offer(_wire(_worklist("ACC9", "X")), "ris_a")
    assert dedupe.duplicates == 1
