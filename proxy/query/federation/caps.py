"""Silent match caps: tell a capped C-FIND answer, and plan narrower sub-queries past it.

Job: from data only, decide whether one archive's answer was probably cut at its match cap,
and how to split the query so that every piece answers below the cap. No sockets here:
``proxy.query.federation.recovery`` runs the plans. Section numbers are PS3.4 Annex C.

Rule 1 (detection): an answer is capped when the archive has a cap (``max_results = N``) and
        returned N or more matches, or when it ended with Cancel (0xFE00) that the proxy never
        asked for after sending matches (Orthanc's LimitFindResults does exactly that).
Rule 2 (split keys), first that applies:
        a. a key holding a list of UIDs (List of UID Matching, C.2.2.2.2): bisect the list;
        b. STUDY: Study Date range (C.2.2.2.5). The cut points come from the Study Dates of
           the capped answer (its *sample*): the part before its first date, its span cut at
           its median, the part after its last date. Open ends stay open (``-YYYYMMDD``).
           Without a sample: plain bisection. One day left: Study Time ranges, the same way;
        c. SERIES / IMAGE without one parent UID: drill down. Enumerate the parents (STUDY for
           SERIES, SERIES for IMAGE) with the query's keys of those levels, recovered by these
           same rules, then query the children by lists of parent UIDs (batch size from the
           sample: half the cap divided by the most children one parent had);
        d. PATIENT: Patient ID prefixes (Wild Card Matching, C.2.2.2.4): ``P*`` becomes
           ``P`` plus ``P0*`` … ``Pz*`` over PATIENT_ID_ALPHABET.
        Every piece is strictly narrower than its parent, so splitting ends.
Rule 3 (helper keys): the split keys a piece needs back (HELPER_KEYS) are added as return
        keys (empty = Universal Matching, so what matches is unchanged); the recovery
        removes the ones the workstation did not ask for before answering it.
Rule 4 (limits, reported as an incomplete answer): one day and one second still capped,
        one parent UID still capped, a Patient ID that is neither empty nor ``prefix*``,
        entities the split key cannot reach (no Study Date or Study Time when that key was
        universal; a Patient ID whose next character is outside the alphabet) when the sample
        shows any. Pieces carry these as a ``caveat``; ``Stuck`` when nothing can be split.
"""

from __future__ import annotations

import copy
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from proxy.query.federation.ranges import (
    DATE_CEILING,
    DATE_FLOOR,
    LAST_SECOND,
    date_point,
    date_range,
    date_span,
    split_span,
    time_point,
    time_range,
    time_span,
)
from proxy.rawtext import element, keyword_tag, text_values
from proxy.status import Status

__all__ = [
    "HELPER_KEYS", "PATIENT_ID_ALPHABET", "SPLIT_KEYS", "DrillDown", "Piece", "Plan", "Sample",
    "Split", "Stuck", "children", "is_capped", "plan", "split_span", "with_return_keys",
]

PATIENT_ID_ALPHABET: Final = string.digits + string.ascii_uppercase + string.ascii_lowercase + "-._"
MAX_UIDS_PER_QUERY: Final = 64

HELPER_KEYS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType({
    "PATIENT": ("PatientID", "IssuerOfPatientID"),
    "STUDY": ("StudyInstanceUID", "StudyDate", "StudyTime"),
    "SERIES": ("SeriesInstanceUID", "StudyInstanceUID"),
    "IMAGE": ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"),
})
# Every key a piece may add or narrow: what the recovery removes from answers unless asked.
SPLIT_KEYS: Final = ("PatientID", "IssuerOfPatientID", "StudyInstanceUID", "StudyDate",
                     "StudyTime", "SeriesInstanceUID", "SOPInstanceUID")
PARENT: Final[Mapping[str, tuple[str, str]]] = MappingProxyType({
    "SERIES": ("STUDY", "StudyInstanceUID"), "IMAGE": ("SERIES", "SeriesInstanceUID"),
})
# Attributes of each level (PS3.4 C.6.1.1 / C.6.2.1 tables, common ones): what a parent query
# keeps of a child query when drilling down (rule 2c).
_LEVEL_KEYS: Final[Mapping[str, frozenset[str]]] = MappingProxyType({
    "PATIENT": frozenset({"PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDs",
                          "PatientBirthDate", "PatientBirthTime", "PatientSex",
                          "OtherPatientIDsSequence", "IssuerOfPatientIDQualifiersSequence"}),
    "STUDY": frozenset({"StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber",
                        "StudyID", "ReferringPhysicianName", "StudyDescription",
                        "ModalitiesInStudy", "PatientAge", "InstitutionName"}),
    "SERIES": frozenset({"SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDate",
                         "SeriesTime", "SeriesDescription", "BodyPartExamined"}),
})
_UID_KEYS: Final = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_ALWAYS_KEPT: Final = ("SpecificCharacterSet",)


def is_capped(matches: int, cap: int, status: int | None, cancelled_by_us: bool) -> bool:
    """Rule 1: did this answer (``matches`` pending responses, final ``status``) hit a cap?"""
    if cap and matches >= cap:
        return True
    return status == Status.CANCEL and not cancelled_by_us and matches > 0


def with_return_keys(query: Dataset, keywords: Iterable[str]) -> tuple[Dataset, tuple[str, ...]]:
    """A copy of ``query`` with each absent keyword added empty; and the ones added (rule 3)."""
    out = copy.deepcopy(query)
    added = tuple(k for k in keywords if k not in out)
    for keyword in added:
        _set(out, keyword, "")
    return out, added


@dataclass
class Sample:
    """The split-key values of one answer, for the helper keys its query asked back."""

    keys: tuple[str, ...]
    values: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def for_query(cls, level: str, query: Dataset) -> Sample:
        return cls(tuple(k for k in HELPER_KEYS.get(level, ()) if k in query))

    def add(self, identifier: Dataset) -> None:
        for keyword in self.keys:
            self.values.setdefault(keyword, []).append(_text(identifier, keyword))

    def of(self, keyword: str) -> list[str] | None:
        """The answer's values of ``keyword`` ("" when absent); None when not asked for."""
        return self.values.get(keyword, []) if keyword in self.keys else None


@dataclass(frozen=True)
class Piece:
    """One sub-query; ``label`` says what narrows it (never a patient identifier)."""

    query: Dataset
    label: str


@dataclass(frozen=True)
class Split:
    pieces: list[Piece]
    caveat: str | None = None           # what these pieces cannot reach (rule 4)


@dataclass(frozen=True)
class DrillDown:
    """Rule 2c: enumerate ``parent_query`` at ``parent_level``, then use ``children``."""

    parent_level: str
    parent_query: Dataset
    key: str
    batch: int


@dataclass(frozen=True)
class Stuck:
    reason: str


Plan = Split | DrillDown | Stuck


def plan(level: str, query: Dataset, sample: Sample, cap: int) -> Plan:
    """How to split ``query`` whose answer was capped (rule 2), given that answer's sample."""
    level = level.strip().upper()
    for key in _UID_KEYS:
        uids = _list(query, key)
        if len(uids) > 1:
            half = len(uids) // 2
            return Split([_piece(query, key, uids[:half], f"{key} list {len(uids[:half])}"),
                          _piece(query, key, uids[half:], f"{key} list {len(uids[half:])}")])
    if level == "STUDY":
        return _split_study(query, sample)
    if level in PARENT:
        return _drill_down(level, query, sample, cap)
    if level == "PATIENT":
        return _split_patient_ids(query, sample)
    return Stuck(f"no way to split a {level or 'level-less'} query")


def children(query: Dataset, key: str, uids: Sequence[str], batch: int) -> list[Piece]:
    """Rule 2c: ``query`` asked per list of ``batch`` parent UIDs."""
    size = max(1, batch)
    return [_piece(query, key, list(uids[i:i + size]), f"{key} list {len(uids[i:i + size])}")
            for i in range(0, len(uids), size)]


# -- STUDY: dates, then times (rule 2b) ----------------------------------------------------

def _split_study(query: Dataset, sample: Sample) -> Plan:
    text = _single(query, "StudyDate")
    span = date_span(text) if text is not None else None
    if span is None:
        return Stuck(f"cannot split StudyDate {text!r}" if text is not None
                     else "StudyDate holds several values")
    lo, hi = span
    dates = sample.of("StudyDate")
    points = [d for d in (date_point(v) for v in dates or []) if d is not None]
    parts = split_span(lo, hi, points, DATE_FLOOR, DATE_CEILING)
    if parts is not None:
        caveat = None
        if not text and dates is not None and "" in dates:
            caveat = "studies without StudyDate cannot be reached by date ranges"
        ranges = [date_range(a, b) for a, b in parts]
        return Split([_piece(query, "StudyDate", r, f"StudyDate={r}") for r in ranges], caveat)
    day = date_range(lo, hi)
    time_text = _single(query, "StudyTime")
    window = time_span(time_text) if time_text is not None else None
    if window is None:
        return Stuck(f"capped within {day} and StudyTime {time_text!r} cannot be split")
    times = sample.of("StudyTime")
    seconds = [s for s in (time_point(v) for v in times or []) if s is not None]
    cuts = split_span(window[0], window[1], seconds, 0, LAST_SECOND)
    if cuts is None:
        return Stuck(f"capped within one second of {day}")
    caveat = None
    if not time_text and times is not None and "" in times:
        caveat = f"studies of {day} without StudyTime cannot be reached by time ranges"
    pieces = []
    for a, b in cuts:
        value = time_range(0 if a is None else a, LAST_SECOND if b is None else b)
        pieces.append(_piece(query, "StudyTime", value, f"StudyDate={day} StudyTime={value}"))
    return Split(pieces, caveat)


# -- SERIES / IMAGE: drill down by parent UIDs (rule 2c) ----------------------------------

def _drill_down(level: str, query: Dataset, sample: Sample, cap: int) -> Plan:
    parent_level, key = PARENT[level]
    if any(_list(query, key)):
        return Stuck(f"more than the cap of {level} matches under one {key}")
    keep = set(_ALWAYS_KEPT)
    for lvl in ("PATIENT", "STUDY", "SERIES"):
        keep |= _LEVEL_KEYS[lvl]
        if lvl == parent_level:
            break
    parent_query = Dataset()
    for elem in query:
        if elem.keyword in keep:
            parent_query.add(copy.deepcopy(elem))
    _set(parent_query, "QueryRetrieveLevel", parent_level)
    for keyword in HELPER_KEYS[parent_level]:          # rule 3, for the parent's own splits
        if keyword not in parent_query:
            _set(parent_query, keyword, "")
    per_parent = Counter(v for v in (sample.of(key) or []) if v)
    most = max(per_parent.values(), default=1)
    limit = cap or sum(per_parent.values()) or MAX_UIDS_PER_QUERY
    batch = max(1, min(MAX_UIDS_PER_QUERY, limit // (2 * most)))
    return DrillDown(parent_level, parent_query, key, batch)


# -- PATIENT: Patient ID prefixes (rule 2d) ------------------------------------------------

def _split_patient_ids(query: Dataset, sample: Sample) -> Plan:
    text = _single(query, "PatientID")
    if text is None:
        return Stuck("PatientID holds several values")
    prefix = text[:-1] if text.endswith("*") else text
    if (text and not text.endswith("*")) or any(c in prefix for c in "*?\\"):
        return Stuck("PatientID is neither empty nor a prefix followed by *")
    pieces = [_piece(query, "PatientID", prefix, f"PatientID prefix of {len(prefix)}, exact")
              ] if prefix else []
    pieces += [_piece(query, "PatientID", f"{prefix}{c}*", f"PatientID prefix of {len(prefix) + 1}")
               for c in PATIENT_ID_ALPHABET]
    ids = sample.of("PatientID") or []
    unreachable = [v for v in ids if v.startswith(prefix) and v != prefix
                   and v[len(prefix)] not in PATIENT_ID_ALPHABET]
    caveat = None
    if unreachable or (not prefix and "" in ids):
        caveat = "Patient IDs outside the split alphabet cannot be reached by prefixes"
    return Split(pieces, caveat)


# -- datasets --------------------------------------------------------------------------

def _piece(query: Dataset, keyword: str, value: str | list[str], label: str) -> Piece:
    out = copy.deepcopy(query)
    _set(out, keyword, value[0] if isinstance(value, list) and len(value) == 1 else value)
    return Piece(out, label)


def _set(ds: Dataset, keyword: str, value: str | list[str]) -> None:
    tag = Tag(keyword)
    ds[tag] = DataElement(tag, dictionary_VR(tag), value, validation_mode=config.IGNORE)


def _list(ds: Dataset, keyword: str) -> list[str]:
    elem = element(ds, Tag(keyword))     # the query goes upstream as its bytes: no conversion
    if elem is None or elem.is_empty:
        return []
    values = list(elem.value) if elem.VM > 1 else [elem.value]
    return [str(v).strip(" \0") for v in values if str(v).strip(" \0")]


def _single(ds: Dataset, keyword: str) -> str | None:
    """The key's one value ("" when absent or empty); None when it holds several."""
    elem = element(ds, Tag(keyword))
    if elem is None or elem.is_empty:
        return ""
    if elem.VM > 1:
        return None
    return str(elem.value).strip(" \0")


def _text(ds: Dataset, keyword: str) -> str:
    # Per streamed match (Sample.add): read the raw bytes, do not convert (proxy.rawtext).
    values = text_values(ds, keyword_tag(keyword))
    return values[0].strip(" \0") if values else ""
