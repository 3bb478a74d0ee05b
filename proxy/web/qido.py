"""QIDO-RS requests (PS3.18 10.6) → the C-FIND identifier the route's archives are asked.

Job: pure. A resource path (``studies``, ``studies/{uid}/series``, ...) and its query
string become a ``QidoQuery``: the query level, the C-FIND identifier (matching keys and
return keys), and the paging and options the proxy applies itself.

Rule 1: the query string is percent-decoded here (``PatientName=BETA%2A`` is ``BETA*``; a
        ``+`` is a space, HTML form style), each parameter once: a key given twice is a 400.
Rule 2: an attribute is named by keyword (``PatientName``) or tag (``00100010``); an unknown
        one, a sequence path or a value the VR cannot hold (a date that is not a date, a
        reversed range) is a ``QidoError`` (400) naming the parameter and what is wrong.
        Dates (DA), times (TM) and date-times (DT) take single values and ranges
        (PS3.4 C.2.2.2.5); UIDs take lists, comma or backslash separated (C.2.2.2.2).
Rule 3: return keys: the level's defaults (PS3.18 Table 10.6.3-3 study, -4 series, -5
        instance), with the levels above for ``/series`` and ``/instances`` and the series
        level for ``/studies/{uid}/instances`` (Table 10.6.3-2); ``includefield`` adds keys
        (comma separated, repeatable), ``includefield=all`` the keys of the query level and
        the levels above it, with the ones archives commonly index (never a key below). The
        level's unique key and its parents' are always asked (paging sorts on them; the
        Retrieve URL is built from them).
Rule 4: Retrieve URL (0008,1190) is the proxy's to write (it names the proxy's own WADO-RS
        path): it is never asked of an archive. Specific Character Set ISO_IR 192 is always
        sent: values come from a URL as Unicode, and archives that honour it answer in UTF-8.
Rule 5: ``limit`` (a positive integer) and ``offset`` (a non-negative one) are the proxy's:
        they apply to the merged, de-duplicated answer sorted by unique key (``Pager``), so
        ``offset`` continues where the last page ended; with a limit, memory is bounded by
        the page's end, not by the answer's length. ``fuzzymatching=true`` is accepted
        and not performed (the archives match literally): ``QidoQuery.warnings`` says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Final, Generic, TypeVar
from urllib.parse import parse_qsl

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from proxy.observe.logs import PHI_KEYWORDS

T = TypeVar("T")
Point = Callable[[str, str], tuple[int, ...]]

STUDY: Final = "STUDY"
SERIES: Final = "SERIES"
IMAGE: Final = "IMAGE"

# PS3.18 Table 10.6.3-3: the study level's default return attributes.
STUDY_KEYS: Final = (
    "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability", "ModalitiesInStudy",
    "ReferringPhysicianName", "TimezoneOffsetFromUTC", "RetrieveURL", "PatientName",
    "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
    "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
# PS3.18 Table 10.6.3-4: series level.
SERIES_KEYS: Final = (
    "Modality", "TimezoneOffsetFromUTC", "SeriesDescription", "RetrieveURL",
    "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "RequestAttributesSequence")
# PS3.18 Table 10.6.3-5: instance level.
INSTANCE_KEYS: Final = (
    "SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "TimezoneOffsetFromUTC",
    "RetrieveURL", "InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames")
# includefield=all: the defaults of the query level and the levels above it, and the
# attributes archives commonly index at each level (never a key below the query level).
STUDY_EXTRA: Final = (
    "StudyDescription", "PatientAge", "PatientSize", "PatientWeight", "OtherPatientIDs",
    "IssuerOfPatientID", "SOPClassesInStudy")
SERIES_EXTRA: Final = (
    "SeriesDate", "SeriesTime", "BodyPartExamined", "ProtocolName", "Laterality",
    "InstitutionName", "Manufacturer", "StationName")
INSTANCE_EXTRA: Final = ("ContentDate", "ContentTime", "ImageType", "AcquisitionNumber")
_ALL: Final = {
    "STUDY": (*STUDY_KEYS, *STUDY_EXTRA),
    "SERIES": (*STUDY_KEYS, *STUDY_EXTRA, *SERIES_KEYS, *SERIES_EXTRA),
    "IMAGE": (*STUDY_KEYS, *STUDY_EXTRA, *SERIES_KEYS, *SERIES_EXTRA, *INSTANCE_KEYS,
              *INSTANCE_EXTRA),
}

UNIQUE_KEYS: Final = {STUDY: "StudyInstanceUID", SERIES: "SeriesInstanceUID",
                      IMAGE: "SOPInstanceUID"}
_PARENTS: Final = {STUDY: (), SERIES: ("StudyInstanceUID",),
                   IMAGE: ("StudyInstanceUID", "SeriesInstanceUID")}
_PROXY_KEYS: Final = frozenset({"RetrieveURL"})         # Rule 4: never asked upstream
_OPTIONS: Final = frozenset({"limit", "offset", "includefield", "fuzzymatching"})
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_TIME = re.compile(r"([01][0-9]|2[0-3])([0-5][0-9]([0-5][0-9](\.[0-9]{1,6})?)?)?")
_DT = re.compile(r"([0-9]{4})(?:([0-9]{2})(?:([0-9]{2})(.*?))?)?([+-][0-9]{4})?")

FUZZY_WARNING: Final = ("299 dicom-proxy \"The fuzzymatching parameter is not supported. "
                        "Only literal matching has been performed.\"")


class QidoError(ValueError):
    """A request the proxy cannot turn into a query: answered 400 with this text."""


class NotFound(LookupError):
    """A path that names no QIDO-RS resource: answered 404."""


@dataclass(frozen=True)
class QidoQuery:
    level: str                         # STUDY, SERIES, IMAGE
    identifier: Dataset                # what the archives are asked (C-FIND, Study Root)
    limit: int | None = None
    offset: int = 0
    fuzzy: bool = False
    return_keys: tuple[str, ...] = ()  # keywords answered (Retrieve URL among them, Rule 4)
    warnings: tuple[str, ...] = field(default=())

    @property
    def unique_key(self) -> str:
        return UNIQUE_KEYS[self.level]


def resource(parts: Sequence[str]) -> tuple[str, dict[str, str], tuple[str, ...]]:
    """The path after the route's root → (level, UIDs from the path, default return keys).

    ``studies``, ``series``, ``instances``, ``studies/{s}/series``, ``studies/{s}/instances``,
    ``studies/{s}/series/{se}/instances`` (Rule 3); anything else raises ``NotFound``.
    """
    p = [part for part in parts if part != ""]
    match p:
        case ["studies"]:
            return STUDY, {}, STUDY_KEYS
        case ["series"]:
            return SERIES, {}, (*STUDY_KEYS, *SERIES_KEYS)
        case ["instances"]:
            return IMAGE, {}, (*STUDY_KEYS, *SERIES_KEYS, *INSTANCE_KEYS)
        case ["studies", study, "series"]:
            return SERIES, {"StudyInstanceUID": _path_uid(study)}, SERIES_KEYS
        case ["studies", study, "instances"]:
            return IMAGE, {"StudyInstanceUID": _path_uid(study)}, (*SERIES_KEYS,
                                                                   *INSTANCE_KEYS)
        case ["studies", study, "series", series, "instances"]:
            return IMAGE, {"StudyInstanceUID": _path_uid(study),
                           "SeriesInstanceUID": _path_uid(series)}, INSTANCE_KEYS
    raise NotFound("/".join(p))


def parse_query_string(raw: str) -> list[tuple[str, str]]:
    """Percent-decode a raw query string into (name, value) pairs, in order (Rule 1)."""
    try:
        return parse_qsl(raw, keep_blank_values=True, strict_parsing=False,
                         encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise QidoError("the query string is not UTF-8 once percent-decoded") from None


def phi_values(params: Iterable[tuple[str, str]]) -> list[str]:
    """The values of patient-identifying parameters (by keyword or tag), for the log's
    PHI filter, before anything is validated (an error message may quote them)."""
    out = []
    for name, value in params:
        keyword = keyword_for_tag(int(name, 16)) if _TAG.fullmatch(name) else name
        if keyword in PHI_KEYWORDS and value:
            out.append(value)
    return out


def parse(parts: Sequence[str], params: Iterable[tuple[str, str]]) -> QidoQuery:
    """Build the query for resource ``parts`` with query ``params`` (Rules 1-5)."""
    level, from_path, defaults = resource(parts)
    matching: dict[str, str] = {}
    includes: list[str] = []
    include_all = False
    options: dict[str, str] = {}
    for name, value in params:
        if name == "includefield":
            for item in (v.strip() for v in value.split(",")):
                if item == "all":
                    include_all = True
                elif item:
                    includes.append(_keyword(f"includefield={item}", item))
            continue
        if name in _OPTIONS:
            _once(options, name, value, name)
            continue
        keyword = _keyword(name, name)
        _once(matching, keyword, value, name)
    for keyword, uid in from_path.items():
        if keyword in matching and _norm_uids(matching[keyword]) != uid:
            raise QidoError(f"{keyword}={matching[keyword]} contradicts the path ({uid})")
        matching[keyword] = uid
    keys = tuple(dict.fromkeys((*defaults, *(_ALL[level] if include_all else ()), *includes,
                                *_PARENTS[level], UNIQUE_KEYS[level])))
    identifier = Dataset()
    identifier.SpecificCharacterSet = "ISO_IR 192"              # Rule 4
    identifier.QueryRetrieveLevel = level
    for keyword in keys:
        if keyword not in _PROXY_KEYS:
            _set(identifier, keyword, "")
    for keyword, value in matching.items():
        _set(identifier, keyword, _match_value(keyword, value))
    fuzzy = _boolean("fuzzymatching", options.get("fuzzymatching", "false"))
    return QidoQuery(
        level=level, identifier=identifier,
        limit=_integer("limit", options["limit"], 1) if "limit" in options else None,
        offset=_integer("offset", options["offset"], 0) if "offset" in options else 0,
        fuzzy=fuzzy, return_keys=keys,
        warnings=(FUZZY_WARNING,) if fuzzy else ())


class Pager(Generic[T]):
    """One page of a stream of items sorted by unique key (Rule 5), in bounded memory.

    ``add`` every item with its key; ``page`` gives items ``offset`` to ``offset + limit``
    of the sorted stream (stable: equal keys keep their arrival order; "" sorts last) and
    whether more follow. With a limit, at most ``2 * (offset + limit)`` items are held
    whatever the stream's length: the smallest ones are kept, the rest only counted.
    """

    def __init__(self, offset: int, limit: int | None) -> None:
        self.offset = offset
        self.keep = None if limit is None else offset + limit
        self.total = 0
        self._held: list[tuple[bool, str, int, T]] = []

    def add(self, key: str, item: T) -> None:
        self._held.append((key == "", key, self.total, item))
        self.total += 1
        if self.keep is not None and len(self._held) >= 2 * self.keep + 64:
            self._trim()

    def page(self) -> tuple[list[T], bool]:
        self._trim()
        shown = [entry[3] for entry in self._held[self.offset:]]
        return shown, self.keep is not None and self.total > self.keep

    def _trim(self) -> None:
        self._held.sort(key=lambda entry: entry[:3])
        if self.keep is not None:
            del self._held[self.keep:]


def page(items: Sequence[T], sort_keys: Sequence[str], offset: int,
         limit: int | None) -> tuple[list[T], bool]:
    """``Pager`` over a whole list: the page of ``items`` sorted by ``sort_keys``."""
    pager: Pager[T] = Pager(offset, limit)
    for key, item in zip(sort_keys, items, strict=True):
        pager.add(key, item)
    return pager.page()


# -- attributes and values --------------------------------------------------------------


def _keyword(param: str, name: str) -> str:
    if "." in name:
        raise QidoError(f"{param}: sequence attribute paths are not supported")
    if _TAG.fullmatch(name):
        keyword = keyword_for_tag(int(name, 16))
        if not keyword:
            raise QidoError(f"{param}: {name} is not a DICOM attribute this proxy knows "
                            "(private and retired tags are not searchable)")
        return keyword
    if tag_for_keyword(name) is None:
        raise QidoError(f"{param}: unknown attribute or parameter {name!r} (an attribute is "
                        "a DICOM keyword such as PatientName or a tag such as 00100010)")
    return name


def _once(into: dict[str, str], key: str, value: str, param: str) -> None:
    if key in into:
        raise QidoError(f"{param} is given twice")
    into[key] = value


def _set(identifier: Dataset, keyword: str, value: str) -> None:
    vr = dictionary_VR(keyword)
    if vr == "SQ":
        setattr(identifier, keyword, DicomSequence([]))
    elif vr in ("US", "SS", "UL", "SL", "FL", "FD", "UV", "SV") and value != "":
        raise QidoError(f"{keyword}: matching on binary-valued ({vr}) attributes is not "
                        "supported by C-FIND archives")
    else:
        identifier.add_new(keyword, vr, value if value != "" else None)


def _match_value(keyword: str, value: str) -> str:
    """``value`` checked against its VR (Rule 2), as C-FIND writes it."""
    vr = dictionary_VR(keyword)
    if value == "":
        return value
    if vr == "SQ":
        raise QidoError(f"{keyword}: sequence matching is not supported")
    if vr == "DA":
        _check_range(keyword, value, _date)
    elif vr == "TM":
        _check_range(keyword, value, _time)
    elif vr == "DT":
        _check_range(keyword, value, _datetime)
    elif vr == "UI":
        value = _norm_uids(value)
        for uid in value.split("\\"):
            if len(uid) > 64 or not _UID.fullmatch(uid):
                raise QidoError(f"{keyword}={uid}: not a UID (digits and dots, at most 64)")
    return value


def _norm_uids(value: str) -> str:
    return "\\".join(u.strip() for u in re.split(r"[,\\]", value) if u.strip())


def _check_range(keyword: str, value: str, one: Point) -> None:
    """A single value or a range ``A-B``, ``-B``, ``A-`` of ``one``'s kind (PS3.4
    C.2.2.2.5). A DT's own ``-ZZXX`` offset is a dash too: every dash is tried as the range
    dash, the whole value first."""
    try:
        one(keyword, value)
        return
    except QidoError as exc:
        first = exc
    for at in (i for i, c in enumerate(value) if c == "-"):
        lo, hi = value[:at], value[at + 1:]
        if not lo and not hi:
            break
        try:
            start = one(keyword, lo) if lo else None
            end = one(keyword, hi) if hi else None
        except QidoError:
            continue
        if start is not None and end is not None and start > end:
            raise QidoError(f"{keyword}={value}: the range ends before it starts")
        return
    if "-" in value:
        raise QidoError(f"{keyword}={value}: neither a value nor a range (A-B, -B, A-) "
                        f"of valid values ({first})")
    raise first


def _date(keyword: str, text: str) -> tuple[int, ...]:
    if not re.fullmatch(r"[0-9]{8}", text):
        raise QidoError(f"{keyword}={text}: not a date (YYYYMMDD)")
    try:
        day = date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise QidoError(f"{keyword}={text}: no such date") from None
    return (day.toordinal(),)


def _time(keyword: str, text: str) -> tuple[int, ...]:
    if not _TIME.fullmatch(text):
        raise QidoError(f"{keyword}={text}: not a time (HH, HHMM, HHMMSS or HHMMSS.FFFFFF)")
    digits = text.replace(".", "").ljust(12, "0")
    return (int(digits),)


def _datetime(keyword: str, text: str) -> tuple[int, ...]:
    found = _DT.fullmatch(text)
    if not found:
        raise QidoError(f"{keyword}={text}: not a date-time (YYYYMMDDHHMMSS.FFFFFF&ZZXX)")
    year, month, day, clock, _offset = found.groups()
    try:
        date(int(year), int(month or 1), int(day or 1))
    except ValueError:
        raise QidoError(f"{keyword}={text}: no such date") from None
    if clock:
        _time(keyword, clock)
    return (int((year + (month or "01") + (day or "01") + (clock or "").replace(".", ""))
                .ljust(20, "0")),)


def _integer(name: str, value: str, minimum: int) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", value) or int(value) < minimum:
        kind = "a positive integer" if minimum else "a non-negative integer"
        raise QidoError(f"{name}={value}: must be {kind}")
    return int(value)


def _boolean(name: str, value: str) -> bool:
    if value not in ("true", "false"):
        raise QidoError(f"{name}={value}: must be true or false")
    return value == "true"


def _path_uid(text: str) -> str:
    if len(text) > 64 or not _UID.fullmatch(text):
        raise NotFound(f"{text}: not a UID")
    return text
