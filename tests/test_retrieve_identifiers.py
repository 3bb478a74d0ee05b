"""proxy.retrieve.identifiers: levels inferred, selecting keys, what goes upstream."""

from __future__ import annotations

import pytest
from pydicom import Dataset

from proxy.retrieve.identifiers import (
    level_of,
    selecting_keys,
    upstream_identifier,
    valued_keys,
    with_selection,
)


def ds(**keys: object) -> Dataset:
    out = Dataset()
    for keyword, value in keys.items():
        setattr(out, keyword, value)
    return out


@pytest.mark.parametrize(("identifier", "root", "level"), [
    (ds(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2"), "STUDY", "SERIES"),   # given
    (ds(QueryRetrieveLevel="FOO"), "STUDY", "FOO"),               # given, judged elsewhere
    (ds(AccessionNumber="CT16000988", StudyInstanceUID=""), "STUDY", "STUDY"),
    (ds(PatientID="P1"), "STUDY", "STUDY"),           # Study Root: patient keys are study's
    (ds(PatientID="P1"), "PATIENT", "PATIENT"),
    (ds(PatientID="P1", StudyInstanceUID="1.2"), "PATIENT", "STUDY"),
    (ds(StudyInstanceUID="1.2", SeriesInstanceUID="1.2.3"), "STUDY", "SERIES"),
    (ds(StudyInstanceUID="1.2", SeriesInstanceUID="1.2.3", SOPInstanceUID="1.2.3.4"),
     "STUDY", "IMAGE"),
    (ds(StudyInstanceUID="1.2", SeriesInstanceUID=""), "STUDY", "STUDY"),   # empty: no vote
    (ds(StudyInstanceUID="", PatientName=""), "STUDY", None),     # nothing has a value
    (ds(), "PATIENT", None),
])
def test_level_given_or_inferred(identifier: Dataset, root: str, level: str | None) -> None:
    assert level_of(identifier, root) == level


def test_keys_of_no_known_level_do_not_vote() -> None:
    identifier = ds(StudyInstanceUID="1.2", InstitutionName="Hospital")
    assert level_of(identifier, "STUDY") == "STUDY"
    assert level_of(ds(InstitutionName="Hospital"), "STUDY") is None


def test_valued_keys_ignore_empty_values_level_and_charset() -> None:
    identifier = ds(QueryRetrieveLevel="STUDY", SpecificCharacterSet="ISO_IR 100",
                    StudyInstanceUID="", AccessionNumber="A1", PatientID=" ")
    assert valued_keys(identifier) == ["AccessionNumber"]


def test_the_unique_key_alone_selects_when_it_has_a_value() -> None:
    identifier = ds(StudyInstanceUID="1.2", SeriesInstanceUID="1.2.3", Modality="CT",
                    PatientID="P1")
    assert selecting_keys(identifier, "SERIES") == [
        "PatientID", "StudyInstanceUID", "SeriesInstanceUID"]


def test_every_valued_key_selects_when_the_unique_key_is_empty() -> None:
    identifier = ds(AccessionNumber="A1", StudyInstanceUID="", PatientName="DOE^J")
    assert sorted(selecting_keys(identifier, "STUDY")) == ["AccessionNumber", "PatientName"]
    assert selecting_keys(ds(StudyInstanceUID=""), "STUDY") == []


def test_the_survey_query_gains_the_selecting_keys_it_lacks() -> None:
    query = ds(QueryRetrieveLevel="IMAGE", StudyInstanceUID="", SOPInstanceUID="")
    identifier = ds(AccessionNumber="A1", StudyInstanceUID="")
    out = with_selection(query, identifier, "STUDY")
    assert out.AccessionNumber == "A1" and out.StudyInstanceUID == ""
    assert "AccessionNumber" not in query                          # input untouched


def test_a_unique_key_request_goes_upstream_unchanged() -> None:
    identifier = ds(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2",
                    SeriesInstanceUID="1.2.3")
    assert upstream_identifier(identifier, "SERIES", ["9.9"]) is identifier


def test_a_missing_level_is_added_upstream_and_the_rest_kept() -> None:
    identifier = ds(StudyInstanceUID="1.2")
    out = upstream_identifier(identifier, "STUDY", ["1.2"])
    assert (out.QueryRetrieveLevel, out.StudyInstanceUID) == ("STUDY", "1.2")
    assert "QueryRetrieveLevel" not in identifier


def test_a_selection_by_other_keys_is_retrieved_by_the_uids_found_in_one_request() -> None:
    identifier = ds(AccessionNumber="A1", StudyInstanceUID="", SpecificCharacterSet="ISO_IR 100")
    one = upstream_identifier(identifier, "STUDY", ["1.2", "1.2"])
    assert (one.QueryRetrieveLevel, one.StudyInstanceUID) == ("STUDY", "1.2")
    assert "AccessionNumber" not in one and one.SpecificCharacterSet == "ISO_IR 100"
    two = upstream_identifier(identifier, "STUDY", ["1.2", "1.3"])
    assert list(two.StudyInstanceUID) == ["1.2", "1.3"]


def test_nothing_found_relays_the_workstations_selection_for_the_archive_to_judge() -> None:
    identifier = ds(AccessionNumber="A1", StudyInstanceUID="")
    out = upstream_identifier(identifier, "STUDY", [])
    assert (out.QueryRetrieveLevel, out.AccessionNumber) == ("STUDY", "A1")
