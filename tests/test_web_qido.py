"""proxy.web.qido: QIDO-RS parameters → the C-FIND identifier, level, paging (pure)."""

from __future__ import annotations

import pytest
from pydicom.sequence import Sequence

from proxy.web import qido
from proxy.web.qido import NotFound, QidoError, page, parse, parse_query_string, resource


def _query(path: str, query: str = "") -> qido.QidoQuery:
    return parse(path.split("/"), parse_query_string(query))


def test_percent_encoding_and_plus_are_decoded() -> None:
    assert parse_query_string("PatientName=BETA%2A&StudyDescription=a+b%20c") == [
        ("PatientName", "BETA*"), ("StudyDescription", "a b c")]
    q = _query("studies", "PatientName=BETA%2A")
    assert q.identifier.PatientName == "BETA*"
    assert parse_query_string("PatientName=%C3%84neas*") == [("PatientName", "Äneas*")]
    with pytest.raises(QidoError, match="UTF-8"):
        parse_query_string("PatientName=%C4neas")


@pytest.mark.parametrize("path, level, parents", [
    ("studies", "STUDY", {}),
    ("series", "SERIES", {}),
    ("instances", "IMAGE", {}),
    ("studies/1.2.3/series", "SERIES", {"StudyInstanceUID": "1.2.3"}),
    ("studies/1.2.3/instances", "IMAGE", {"StudyInstanceUID": "1.2.3"}),
    ("studies/1.2.3/series/4.5/instances", "IMAGE",
     {"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "4.5"}),
])
def test_resources_and_their_levels(path: str, level: str, parents: dict[str, str]) -> None:
    q = _query(path)
    assert q.level == level and q.identifier.QueryRetrieveLevel == level
    for keyword, uid in parents.items():
        assert q.identifier[keyword].value == uid
    assert q.identifier[q.unique_key].value in ("", None)


@pytest.mark.parametrize("path", ["patients", "studies/1.2.3", "studies/x.y/series",
                                  "studies/1.2/series/3/frames", ""])
def test_other_paths_are_not_qido_resources(path: str) -> None:
    with pytest.raises(NotFound):
        resource(path.split("/"))


def test_default_return_keys_follow_the_tables() -> None:
    study = _query("studies").identifier
    for keyword in ("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
                    "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate",
                    "PatientSex", "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries",
                    "NumberOfStudyRelatedInstances", "InstanceAvailability",
                    "TimezoneOffsetFromUTC"):
        assert keyword in study, keyword
    assert "RetrieveURL" not in study                   # the proxy's (Rule 4)
    assert "RetrieveURL" in _query("studies").return_keys
    assert "Modality" not in study
    assert study.SpecificCharacterSet == "ISO_IR 192"
    series = _query("studies/1.2/series").identifier
    assert {"Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription",
            "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate"} <= set(
        e.keyword for e in series)
    assert isinstance(series.RequestAttributesSequence, Sequence)
    assert "PatientName" not in series                  # the study is named in the path
    all_series = _query("series").identifier
    assert "PatientName" in all_series and "Modality" in all_series   # Table 10.6.3-2
    instances = _query("studies/1.2/instances").identifier
    assert {"SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns",
            "BitsAllocated", "NumberOfFrames", "Modality", "SeriesInstanceUID"} <= set(
        e.keyword for e in instances)
    assert "PatientName" not in instances
    assert "PatientName" in _query("instances").identifier


def test_attributes_by_keyword_or_tag() -> None:
    q = _query("studies", "00100020=ID1&StudyDescription=Head*&00080061=CT")
    assert q.identifier.PatientID == "ID1"
    assert q.identifier.StudyDescription == "Head*"
    assert q.identifier.ModalitiesInStudy == "CT"


def test_includefield_lists_repeats_and_all() -> None:
    q = _query("studies", "includefield=StudyDescription,00101010&includefield=PatientWeight")
    assert {"StudyDescription", "PatientAge", "PatientWeight"} <= set(q.return_keys)
    assert "StudyDescription" in q.identifier and q.identifier.StudyDescription in ("", None)
    every = {e.keyword for e in _query("studies", "includefield=all").identifier}
    assert {"StudyDescription", "PatientAge", *qido.STUDY_KEYS} - {"RetrieveURL"} <= every
    assert not every & {"SOPInstanceUID", "Rows", "SeriesInstanceUID", "Modality"}
    images = {e.keyword for e in _query("instances", "includefield=all").identifier}
    assert {"StudyDescription", "BodyPartExamined", "ImageType", "Rows"} <= images
    with pytest.raises(QidoError, match="includefield=Nope"):
        _query("studies", "includefield=Nope")


@pytest.mark.parametrize("query", [
    "StudyDate=20200101", "StudyDate=20200101-20201231", "StudyDate=-20201231",
    "StudyDate=20200101-", "StudyTime=0800-1230", "StudyTime=083000.123",
    "AcquisitionDateTime=20200101083000-20200102", "AcquisitionDateTime=2020",
    "AcquisitionDateTime=20200101083000%2B0100", "AcquisitionDateTime=20200101083000-0500",
    "StudyInstanceUID=1.2.3,4.5.6", "StudyDate=",
])
def test_valid_values(query: str) -> None:
    _query("studies", query)


@pytest.mark.parametrize("query, says", [
    ("StudyDate=2020130", "not a date"),
    ("StudyDate=20201345", "no such date"),
    ("StudyDate=2020-01-01", "StudyDate"),
    ("StudyDate=20201231-20200101", "ends before it starts"),
    ("StudyDate=-", "StudyDate"),
    ("StudyTime=2500", "not a time"),
    ("AcquisitionDateTime=20201301", "no such date"),
    ("StudyInstanceUID=1.2.x", "not a UID"),
    ("NoSuchThing=1", "unknown attribute"),
    ("00191010=1", "private"),
    ("ReferencedStudySequence.StudyInstanceUID=1.2", "sequence"),
    ("PatientName=A&PatientName=B", "twice"),
    ("limit=0", "positive"),
    ("limit=ten", "positive"),
    ("offset=-1", "non-negative"),
    ("fuzzymatching=yes", "true or false"),
    ("Rows=512", "binary"),
])
def test_bad_values_are_400_with_a_clear_text(query: str, says: str) -> None:
    with pytest.raises(QidoError, match=says):
        _query("studies", query)


def test_uid_lists_and_the_path_must_agree() -> None:
    q = _query("studies", "StudyInstanceUID=1.2.3,4.5.6")
    assert q.identifier.StudyInstanceUID == ["1.2.3", "4.5.6"]
    assert _query("studies/1.2/series", "StudyInstanceUID=1.2").identifier.StudyInstanceUID \
        == "1.2"
    with pytest.raises(QidoError, match="contradicts the path"):
        _query("studies/1.2/series", "StudyInstanceUID=9.9")


def test_paging_options_and_fuzzymatching() -> None:
    q = _query("studies", "limit=10&offset=20&fuzzymatching=true")
    assert (q.limit, q.offset, q.fuzzy) == (10, 20, True)
    assert q.warnings == (qido.FUZZY_WARNING,)
    plain = _query("studies")
    assert (plain.limit, plain.offset, plain.fuzzy, plain.warnings) == (None, 0, False, ())


def test_pages_are_stable_and_concatenate() -> None:
    items = ["c", "a", "", "b", "d"]
    keys = list(items)
    pages = [page(items, keys, offset, 2) for offset in (0, 2, 4, 6)]
    assert pages == [(["a", "b"], True), (["c", "d"], True), ([""], False), ([], False)]
    assert page(items, keys, 0, None) == (["a", "b", "c", "d", ""], False)


def test_a_pager_holds_a_bounded_number_of_items_and_stays_stable() -> None:
    pager: qido.Pager[int] = qido.Pager(offset=10, limit=5)
    keys = [f"{(k * 7919) % 1000:04d}" for k in range(1000)]      # a shuffled stream
    peak = 0
    for k, key in enumerate(keys):
        pager.add(key, k)
        peak = max(peak, len(pager._held))
    shown, more = pager.page()
    assert peak <= 2 * 15 + 64 and pager.total == 1000 and more
    assert [keys[i] for i in shown] == sorted(keys)[10:15]
    twins: qido.Pager[str] = qido.Pager(0, 2)
    for item in ("first", "second", "third"):
        twins.add("1.2", item)                   # equal keys (merging rule 1b): arrival order
    assert twins.page() == (["first", "second"], True)


def test_patient_identifying_values_are_known_before_validation() -> None:
    params = parse_query_string("PatientBirthDate=1960x&00100020=MRN7&StudyDate=2020&"
                                "PatientName=&limit=3")
    assert qido.phi_values(params) == ["1960x", "MRN7"]
