"""What a workstation's C-MOVE/C-GET identifier selects, read as the archive reads it.

Workstations send identifiers archives serve but PS3.4 C.4.2.2.1 does not describe:
no Query/Retrieve Level (DCMTK ``movescu --study -k AccessionNumber=…``), or a level
whose unique key is empty while another key (Accession Number) selects. The archive is
the judge of its identifiers; the proxy refuses only what it cannot route (issue #10).

Rule 1 (level, ``level_of``): a Query/Retrieve Level that is present is used as it is.
        When it is absent it is inferred as archives do: the deepest level of the keys
        given with a value — in the Study Root model Patient keys are Study keys
        (PS3.4 C.6.2.1), so Study Root with study-level keys only is STUDY, Patient Root
        with patient keys only is PATIENT. Keys of no known level do not vote.
        An identifier without any valued key selects nothing to infer from: None.
Rule 2 (selection, ``selecting_keys``): when the level's unique key (LEVEL_KEYS) has a
        value, that key (with the unique keys above it) selects, as PS3.4 C.4.2.2.1 says:
        other keys are not matched, archives ignore them in a retrieve. Otherwise every
        valued key selects (e.g. Accession Number): the survey C-FIND asks the archive
        with them, its own matching decides.
Rule 3 (upstream, ``upstream_identifier``): the archive is sent the identifier as the
        workstation sent it, with the inferred level added when it was missing (the
        level the archive would infer itself). When the selection was not by the unique
        key and the survey found the entities, the request names them instead: the
        level and the unique key's values found (one UID list, so still one request).
Rule 4: pure: data sets in, data sets out; the input is never changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from pydicom import Dataset

LEVELS: Final = ("PATIENT", "STUDY", "SERIES", "IMAGE")
LEVEL_KEYS: Final = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID",
                     "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}
# Keys of each level (PS3.4 C.6.1.1.2-5 / C.6.2.1.2-4, the common ones): what votes.
KEY_LEVELS: Final = {
    **dict.fromkeys(("PatientID", "PatientName", "IssuerOfPatientID", "PatientBirthDate",
                     "PatientSex", "OtherPatientIDsSequence", "PatientBirthTime",
                     "NumberOfPatientRelatedStudies"), "PATIENT"),
    **dict.fromkeys(("StudyInstanceUID", "AccessionNumber", "StudyDate", "StudyTime",
                     "StudyID", "ReferringPhysicianName", "StudyDescription",
                     "ModalitiesInStudy", "IssuerOfAccessionNumberSequence",
                     "NumberOfStudyRelatedInstances", "NumberOfStudyRelatedSeries"), "STUDY"),
    **dict.fromkeys(("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
                     "SeriesDate", "SeriesTime", "BodyPartExamined",
                     "NumberOfSeriesRelatedInstances"), "SERIES"),
    **dict.fromkeys(("SOPInstanceUID", "SOPClassUID", "InstanceNumber"), "IMAGE"),
}
_NOT_KEYS: Final = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet"})


def level_of(identifier: Dataset, root: str) -> str | None:
    """The identifier's level: given (upper-cased) or inferred (Rule 1).

    ``root`` is the model's top level: "PATIENT" (Patient Root) or "STUDY" (Study Root).
    """
    given = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if given:
        return given
    voted = [KEY_LEVELS[k] for k in valued_keys(identifier) if k in KEY_LEVELS]
    if not voted:
        return None
    deepest = max(LEVELS.index(level) for level in voted)
    return LEVELS[max(deepest, LEVELS.index(root))]


def valued_keys(identifier: Dataset) -> list[str]:
    """Keywords of the keys given with a value (sequences: with a non-empty item)."""
    out = []
    for elem in identifier:
        if not elem.keyword or elem.keyword in _NOT_KEYS:
            continue
        if elem.VR == "SQ":
            if any(len(item) for item in elem.value):
                out.append(elem.keyword)
        elif not elem.is_empty and str(elem.value).strip(" \0\\"):
            out.append(elem.keyword)
    return out


def by_unique_key(identifier: Dataset, level: str) -> bool:
    """True when the level's unique key has a value: it alone selects (Rule 2)."""
    return LEVEL_KEYS[level] in valued_keys(identifier)


def selecting_keys(identifier: Dataset, level: str) -> list[str]:
    """The keys that select what a retrieve moves (Rule 2); empty when nothing selects."""
    valued = valued_keys(identifier)
    if LEVEL_KEYS[level] in valued:
        above = LEVELS[:LEVELS.index(level) + 1]
        return [LEVEL_KEYS[lv] for lv in above if LEVEL_KEYS[lv] in valued]
    return valued


def with_selection(query: Dataset, identifier: Dataset, level: str) -> Dataset:
    """``query`` (a survey C-FIND) also matching on the selecting keys it lacks (Rule 2)."""
    out = Dataset()
    out.update(query)
    for keyword in selecting_keys(identifier, level):
        elem = identifier.data_element(keyword)
        current = out.get(keyword)
        if elem is not None and (current is None or current == "" or current == []):
            out.add(elem)
    return out


def upstream_identifier(identifier: Dataset, level: str,
                        found: Iterable[str] | None = None) -> Dataset:
    """What the archive is asked to retrieve (Rule 3).

    ``found``: the level's unique key values the survey found, used when the selection
    was not by the unique key; None or empty: the workstation's identifier is relayed.
    """
    uids = list(dict.fromkeys(found or ()))
    if uids and not by_unique_key(identifier, level):
        out = Dataset()
        if "SpecificCharacterSet" in identifier:
            out.SpecificCharacterSet = identifier.SpecificCharacterSet
        out.QueryRetrieveLevel = level
        setattr(out, LEVEL_KEYS[level], uids if len(uids) > 1 else uids[0])
        return out
    if "QueryRetrieveLevel" in identifier and str(identifier.QueryRetrieveLevel).strip():
        return identifier
    out = Dataset()
    out.update(identifier)
    out.QueryRetrieveLevel = level
    return out
