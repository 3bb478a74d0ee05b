"""C-FIND attribute matching (PS3.4 C.2.2.2): does an archive's answer satisfy the query?

Job: decide whether a candidate identifier (one C-FIND match from an archive) satisfies
every matching key of the query identifier a workstation sent, so the proxy can drop the
answers of archives that ignore keys they do not support. Data in, ``bool`` out.
Section numbers below are PS3.4 Annex C; PS3.5 6.2 gives the VR padding rules.

Rule 1 (C.2.2.2.3): an empty key is Universal Matching: it only asks for the attribute
        back and matches every candidate, whether the candidate has the attribute or not.
        The same holds for a Wild Card key made only of ``*`` (C.2.2.2.4 note), a DA/TM/DT
        key ``-`` (an unbounded range) and a sequence key whose item holds no matching key
        (C.2.2.2.6).
Rule 2: keys that are never matched are skipped: Specific Character Set (C.2.2.2 says so),
        Query/Retrieve Level and View, Timezone Offset From UTC (they steer the query),
        and the "where is it" return keys (Retrieve AE Title, Instance Availability, Storage
        Media File-Set ID/UID, Retrieve URL/URI/Location UID), which differ per archive and
        which the proxy rewrites. Private tags, tags unknown to the data dictionary, group
        lengths and binary VRs (OB OD OF OL OV OW UN) are passed through: never a reason to drop.
Rule 3 (C.2.2.1.2): an attribute the candidate lacks or has empty is "unknown", and "all
        matching against the zero length Required Key shall be considered a successful
        match"; the proxy treats Optional Keys alike, since an archive may not support them.
        So by default a candidate is never dropped for what it does not say. With
        ``unknown_matches=False`` (the Modality Worklist rule, K.2.2.1.1.1, or a strict filter)
        an unknown value fails every non-universal key. Either way, Empty Value Matching
        (C.2.2.2.7) holds: a key of two QUOTATION MARKs ``""`` matches an absent or empty
        attribute, and the literal value ``""``, and nothing else.
Rule 4 (C.2.2.2.1): Single Value Matching is exact and case-sensitive after removing the
        padding PS3.5 declares insignificant: leading and trailing spaces for AE CS SH LO
        AS DA DT TM IS DS; trailing spaces for ST LT UT UC UR PN; trailing NULs and spaces
        for UI. IS and DS compare as numbers. PN: trailing ``^`` and ``=`` delimiters are
        insignificant, and case is ignored only with ``pn_case_insensitive`` (the
        implementation-defined choice C.2.2.2.1 allows). A PN key without ``=`` may match the
        whole name or any single component group (alphabetic, ideographic, phonetic); a key
        with ``=`` is matched group by group, an empty key group matching any group.
Rule 5 (C.2.2.2.4): in AE CS LO LT PN SH ST UC UR UT a key holding ``*`` or ``?`` is Wild Card
        Matching (``*`` any run of characters including none, ``?`` one character).
        Never in DA TM DT UI AS or numbers: there they are ordinary characters (so a UID
        key ``1.2.*`` matches no real UID, and a date key ``2024*`` is unreadable, rule 10).
Rule 6 (C.2.2.2.2 and multiple values): a multi-valued UI key is List of UID Matching: any of
        its UIDs may match. A multi-valued key of another VR is taken as "any value" too
        (C.2.2.2.8 defines "all values" only under Extended Negotiation of Multiple Value
        Matching; without it the meaning is undefined, and "any" never drops an answer
        "all" would keep). A multi-valued candidate matches when any of its values matches,
        e.g. Modalities In Study ``CT\\MR`` against the key ``CT``.
Rule 7 (C.2.2.2.5): DA, TM and DT support Range Matching ``a-b``, ``-b``, ``a-``. A value of
        reduced precision denotes its whole period (TM ``10`` is 10:00:00 to 10:59:59.999999,
        DT ``2024`` the whole year) and a key matches when its period or range overlaps the
        candidate's, so ``-1015`` includes 10:15:59 and a candidate ``1015`` matches ``101530``.
        TM ranges do not cross midnight (C.2.2.2.5.2). DT offsets from UTC count when both
        sides carry one; otherwise wall-clock values are compared. A DT key that reads both
        as a value with a negative offset and as a range (``20240101-0500``) is the value.
Rule 8 (C.2.2.2.5): date and time keys are ranged independently, unless the workstation
        negotiated combined datetime matching (``combined_datetime=True``): then a DA key and
        its TM partner (StudyDate/StudyTime, SeriesDate/SeriesTime, any ``...Date``/``...Time``
        pair) holding the same form of range are matched as one DT range, so 20060705-20060707
        with 1000-1800 means 5 July 10:00 to 7 July 18:00, not 10:00-18:00 on each day.
        A candidate with the date but no time is known to that day only (rule 3).
Rule 9 (C.2.2.2.6): a sequence key holds one item; the candidate matches when some item of its
        sequence matches all of that item's keys (recursively, by these rules). If the key
        holds several items, any of them may be the one.
Rule 10: a key value the proxy cannot read (a malformed date, a non-numeric IS) never drops an
        answer: the archive judged it. A candidate value the proxy cannot read matches only
        a key value equal to it character for character.
Rule 11: neither identifier is changed: elements are decoded apart (``proxy.rawtext.element``),
        so a match that passes is relayed as the archive's bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from functools import lru_cache
from itertools import zip_longest
from typing import Final

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from proxy.rawtext import element

__all__ = ["NEVER_MATCHED", "is_matching_key", "matches"]

NEVER_MATCHED: Final[frozenset[BaseTag]] = frozenset(Tag(keyword) for keyword in (
    "SpecificCharacterSet",      # (0008,0005) C.2.2.2: "never matched"
    "QueryRetrieveLevel",        # (0008,0052) selects the level, C.4.1.1.3.1
    "QueryRetrieveView",         # (0008,0053) selects the view
    "TimezoneOffsetFromUTC",     # (0008,0201) qualifies other keys, C.2.2.2.5
    "RetrieveAETitle",           # (0008,0054) return key, rewritten by the proxy
    "InstanceAvailability",      # (0008,0056) return key, per archive
    "RetrieveURL",               # (0008,1190) return key, per archive
    "RetrieveURI",               # (0040,E010) return key, per archive
    "RetrieveLocationUID",       # (0040,E011) return key, per archive
    "StorageMediaFileSetID",     # (0088,0130) return key, per archive
    "StorageMediaFileSetUID",    # (0088,0140) return key, per archive
))

_WILDCARD_VRS: Final = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_EMPTY_VALUE_VRS: Final = _WILDCARD_VRS | {"DA", "DT", "TM"}
_DATETIME_VRS: Final = frozenset({"DA", "DT", "TM"})
_NUMERIC_STRING_VRS: Final = frozenset({"IS", "DS"})
_TRAILING_PADDING_VRS: Final = frozenset({"LT", "ST", "UT", "UC", "UR", "PN"})
_BOTH_PADDING_VRS: Final = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "SH", "TM"})
_STRING_VRS: Final = _TRAILING_PADDING_VRS | _BOTH_PADDING_VRS | {"UI"}
_UNMATCHABLE_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_EMPTY_VALUE_KEY: Final = '""'

_US_PER_SECOND: Final = 1_000_000
_US_PER_DAY: Final = 86_400 * _US_PER_SECOND
_DT_RE: Final = re.compile(
    r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?")
_TM_RE: Final = re.compile(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?")
_LEGACY_DA_RE: Final = re.compile(r"\d{4}\.\d{2}\.\d{2}")                 # ACR-NEMA
_LEGACY_TM_RE: Final = re.compile(r"\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?")  # ACR-NEMA


@dataclass(frozen=True)
class _Options:
    pn_case_insensitive: bool
    combined_datetime: bool
    unknown_matches: bool


@dataclass(frozen=True)
class _Instant:
    """Microseconds on a wall clock; ``offset`` (µs east of UTC) when the value said so."""

    us: int
    offset: int | None = None


@dataclass(frozen=True)
class _Span:
    """A half-open period ``[start, end)``; ``None`` is an open end."""

    start: _Instant | None
    end: _Instant | None


_UNBOUNDED: Final = _Span(None, None)


def matches(query: Dataset, candidate: Dataset, *, pn_case_insensitive: bool = False,
            combined_datetime: bool = False, unknown_matches: bool = True) -> bool:
    """True when ``candidate`` satisfies every matching key of ``query`` (rules 1-10).

    ``pn_case_insensitive``: PN keys ignore case (rule 4). ``combined_datetime``: the
    workstation negotiated combined datetime matching (rule 8). ``unknown_matches``: an
    attribute the candidate lacks or has empty matches any key (rule 3).
    """
    opts = _Options(pn_case_insensitive, combined_datetime, unknown_matches)
    return _matches(query, candidate, opts)


def is_matching_key(elem: DataElement) -> bool:
    """True when ``elem`` constrains the match: a key of a matchable attribute that is not
    Universal Matching (rules 1 and 2). A False key is a return key only, or is ignored."""
    tag = BaseTag(elem.tag)
    if tag.is_private or tag.element == 0 or tag in NEVER_MATCHED:
        return False
    if not keyword_for_tag(tag) or elem.VR in _UNMATCHABLE_VRS:
        return False
    return not _is_universal(elem)


def _matches(query: Dataset, candidate: Dataset, opts: _Options) -> bool:
    done: set[BaseTag] = set()
    if opts.combined_datetime:
        for date_key, time_key in _datetime_pairs(query):
            verdict = _combined_matches(date_key, time_key, candidate, opts)
            if verdict is None:        # unreadable as one range: match them independently
                continue
            if not verdict:
                return False
            done.update((BaseTag(date_key.tag), BaseTag(time_key.tag)))
    for key in _elements(query):
        if key.tag in done or not is_matching_key(key):
            continue
        found = element(candidate, key.tag)
        if not _element_matches(key, found, opts):
            return False
    return True


def _is_universal(elem: DataElement) -> bool:
    if elem.VR == "SQ":
        return all(not any(is_matching_key(k) for k in _elements(item)) for item in elem.value)
    for value in _values(elem):
        if value == "" or (elem.VR in _DATETIME_VRS and value == "-"):
            continue
        if elem.VR in _WILDCARD_VRS and isinstance(value, str) and set(value) == {"*"}:
            continue
        return False
    return True


def _element_matches(key: DataElement, found: DataElement | None, opts: _Options) -> bool:
    if key.VR == "SQ":
        if found is None or found.VR != "SQ" or found.is_empty:
            return opts.unknown_matches
        return any(_matches(k, c, opts) for k in key.value for c in found.value)
    key_values = [v for v in _values(key) if v != ""]
    found_values = [] if found is None else [v for v in _values(found) if v != ""]
    if not found_values:
        empty_value_key = key.VR in _EMPTY_VALUE_VRS and _EMPTY_VALUE_KEY in key_values
        return empty_value_key or opts.unknown_matches
    return any(_value_matches(key.VR, k, c, opts) for k in key_values for c in found_values)


def _value_matches(vr: str, key: object, value: object, opts: _Options) -> bool:
    if not (isinstance(key, str) and isinstance(value, str)):
        return key == value
    if key == _EMPTY_VALUE_KEY and vr in _EMPTY_VALUE_VRS:
        return value == _EMPTY_VALUE_KEY              # rule 3: Empty Value Matching
    if vr == "PN":
        return _person_name_matches(key, value, opts.pn_case_insensitive)
    if vr in _WILDCARD_VRS:
        return _text_matches(key, value)
    if vr in _DATETIME_VRS:
        span = _key_span(vr, key)
        if span is None:
            return True                               # rule 10
        found = _value_span(vr, value)
        return key == value if found is None else _overlaps(span, found)
    if vr in _NUMERIC_STRING_VRS:
        try:
            wanted = float(key)
        except ValueError:
            return True                               # rule 10
        try:
            return wanted == float(value)
        except ValueError:
            return key == value
    return key == value


def _text_matches(key: str, value: str) -> bool:
    if "*" in key or "?" in key:
        return _wildcard(key).fullmatch(value) is not None
    return key == value


@lru_cache(maxsize=512)
def _wildcard(key: str) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in key)
    return re.compile("".join(parts), re.DOTALL)


def _person_name_matches(key: str, value: str, case_insensitive: bool) -> bool:
    key, value = _person_name(key), _person_name(value)
    if case_insensitive:
        key, value = key.casefold(), value.casefold()
    key_groups, value_groups = key.split("="), value.split("=")
    if len(key_groups) == 1:
        return any(_text_matches(key, v) for v in (value, *value_groups))
    return all(k == "" or _text_matches(k, v)
               for k, v in zip_longest(key_groups, value_groups, fillvalue=""))


def _person_name(text: str) -> str:
    """PS3.5 6.2.1: trailing component (``^``) and group (``=``) delimiters are padding."""
    return "=".join(group.rstrip("^ ") for group in text.rstrip(" ").split("=")).rstrip("=")


# --- values -----------------------------------------------------------------------------------

def _values(elem: DataElement) -> list[object]:
    """The element's values, strings freed of the padding their VR declares insignificant."""
    if elem.is_empty:
        return []
    items = list(elem.value) if elem.VM > 1 else [elem.value]
    if elem.VR not in _STRING_VRS:
        return items
    return [_unpad(elem.VR, _as_text(v)) for v in items]


def _as_text(value: object) -> str:
    original = getattr(value, "original_string", None)
    if isinstance(original, str):
        return original
    if isinstance(value, datetime):
        return value.strftime("%Y%m%d%H%M%S.%f")
    if isinstance(value, date):
        return value.strftime("%Y%m%d")
    if isinstance(value, time):
        return value.strftime("%H%M%S.%f")
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return "" if value is None else str(value)


def _unpad(vr: str, text: str) -> str:
    if vr in _TRAILING_PADDING_VRS:
        return text.rstrip(" \0")
    return text.strip(" \0")


# --- dates and times (rules 7 and 8) ------------------------------------------------------------

def _key_span(vr: str, text: str) -> _Span | None:
    """The period a DA/TM/DT key selects (single value or range); ``None`` if unreadable."""
    single = _value_span(vr, text)
    if single is not None or "-" not in text:
        return single
    for at in (i for i, char in enumerate(text) if char == "-"):
        low, high = text[:at].strip(), text[at + 1:].strip()
        low_span = _value_span(vr, low) if low else _UNBOUNDED
        high_span = _value_span(vr, high) if high else _UNBOUNDED
        if low_span is not None and high_span is not None:
            return _Span(low_span.start, high_span.end)
    return None


def _value_span(vr: str, text: str) -> _Span | None:
    if vr == "TM":
        return _time_span(text)
    if vr == "DA":
        plain = _plain_date(text)
        return None if plain is None else _datetime_span(plain)
    return _datetime_span(text)


def _plain_date(text: str) -> str | None:
    if _LEGACY_DA_RE.fullmatch(text):
        text = text.replace(".", "")
    return text if len(text) == 8 and text.isdigit() else None


def _plain_time(text: str) -> str | None:
    if _LEGACY_TM_RE.fullmatch(text):
        text = text.replace(":", "")
    return text if _TM_RE.fullmatch(text) and _time_span(text) is not None else None


def _time_span(text: str) -> _Span | None:
    if _LEGACY_TM_RE.fullmatch(text):
        text = text.replace(":", "")
    m = _TM_RE.fullmatch(text)
    if m is None:
        return None
    hh, mm, ss, fraction = m.groups()
    if fraction is not None and ss is None:
        return None
    if int(hh) > 23 or int(mm or 0) > 59 or int(ss or 0) > 60:   # 60: a leap second
        return None
    start = ((int(hh) * 60 + int(mm or 0)) * 60 + int(ss or 0)) * _US_PER_SECOND
    start, length = _clock_period(start, mm, ss, fraction)
    return _Span(_Instant(start), _Instant(start + length))


def _datetime_span(text: str) -> _Span | None:
    m = _DT_RE.fullmatch(text)
    if m is None:
        return None
    yyyy, mo, dd, hh, mm, ss, fraction, offset = m.groups()
    if fraction is not None and ss is None:
        return None
    try:
        day = date(int(yyyy), int(mo or 1), int(dd or 1))
        clock = time(int(hh or 0), int(mm or 0))
    except ValueError:
        return None
    if int(ss or 0) > 60:
        return None
    start = day.toordinal() * _US_PER_DAY + (
        (clock.hour * 60 + clock.minute) * 60 + int(ss or 0)) * _US_PER_SECOND
    if hh is not None:
        start, length = _clock_period(start, mm, ss, fraction)
        end = start + length
    elif dd is not None:
        end = start + _US_PER_DAY
    elif mo is not None:
        end = _next_month_ordinal(day) * _US_PER_DAY
    else:
        end = (date(day.year, 12, 31).toordinal() + 1) * _US_PER_DAY
    shift = None
    if offset is not None:
        hours, minutes = int(offset[1:3]), int(offset[3:5])
        if hours > 14 or minutes > 59:
            return None
        shift = (-1 if offset[0] == "-" else 1) * (hours * 60 + minutes) * 60 * _US_PER_SECOND
    return _Span(_Instant(start, shift), _Instant(end, shift))


def _next_month_ordinal(day: date) -> int:
    if day.month == 12:
        return date(day.year, 12, 31).toordinal() + 1
    return date(day.year, day.month + 1, 1).toordinal()


def _clock_period(start: int, mm: str | None, ss: str | None,
                  fraction: str | None) -> tuple[int, int]:
    """The start moved by the fraction, and the length of the period the precision denotes."""
    if fraction is not None:
        return start + int(fraction.ljust(6, "0")), 10 ** (6 - len(fraction))
    if ss is not None:
        return start, _US_PER_SECOND
    return start, (60 if mm is not None else 3600) * _US_PER_SECOND


def _before(a: _Instant, b: _Instant) -> bool:
    if a.offset is not None and b.offset is not None:
        return a.us - a.offset < b.us - b.offset
    return a.us < b.us


def _overlaps(key: _Span, found: _Span) -> bool:
    return ((key.start is None or found.end is None or _before(key.start, found.end))
            and (found.start is None or key.end is None or _before(found.start, key.end)))


def _datetime_pairs(query: Dataset) -> Iterator[tuple[DataElement, DataElement]]:
    """DA keys and their TM partners (``XDate``/``XTime``) holding the same form of range."""
    for key in _elements(query):
        if key.VR != "DA" or not key.keyword.endswith("Date"):
            continue
        partner = tag_for_keyword(key.keyword[:-4] + "Time")
        if partner is None or partner not in query:
            continue
        time_key = element(query, partner)
        assert time_key is not None
        form = _range_form(key)
        if time_key.VR == "TM" and form is not None and form == _range_form(time_key):
            yield key, time_key


def _range_form(elem: DataElement) -> tuple[bool, bool] | None:
    """Which ends a single-valued range key bounds: ``a-b``, ``-b`` or ``a-``."""
    values = _values(elem)
    if len(values) != 1 or not isinstance(values[0], str) or values[0].count("-") != 1:
        return None
    low, high = (part.strip() for part in values[0].split("-"))
    return (bool(low), bool(high)) if low or high else None


def _combined_matches(date_key: DataElement, time_key: DataElement, candidate: Dataset,
                      opts: _Options) -> bool | None:
    """Rule 8; ``None`` when the two keys do not read as one datetime range."""
    bounds: list[_Span] = []
    date_ends = str(_values(date_key)[0]).split("-")
    time_ends = str(_values(time_key)[0]).split("-")
    for day_text, clock_text in zip(date_ends, time_ends, strict=True):
        day, clock = _plain_date(day_text.strip()), _plain_time(clock_text.strip())
        if not day_text.strip():
            bounds.append(_UNBOUNDED)
            continue
        bound = None if day is None or clock is None else _datetime_span(day + clock)
        if bound is None:
            return None
        bounds.append(bound)
    span = _Span(bounds[0].start, bounds[1].end)
    day_texts = _found_texts(candidate, date_key.tag)
    clock_texts = _found_texts(candidate, time_key.tag)
    if not day_texts:
        return opts.unknown_matches
    days = [d for d in map(_plain_date, day_texts) if d]
    if clock_texts:
        clocks = [c for c in map(_plain_time, clock_texts) if c]
        moments = [_datetime_span(d + c) for d in days for c in clocks]
    else:
        moments = [_datetime_span(d) for d in days] if opts.unknown_matches else []
    return any(m is not None and _overlaps(span, m) for m in moments)


def _found_texts(candidate: Dataset, tag: BaseTag) -> list[str]:
    found = element(candidate, tag)
    if found is None:
        return []
    return [v for v in _values(found) if isinstance(v, str) and v]


def _elements(ds: Dataset) -> Iterator[DataElement]:
    """``iter(ds)`` without converting ``ds``'s elements in place: a candidate is relayed
    as the archive's bytes (``proxy.rawtext``), the query goes upstream as the
    workstation's."""
    for tag in list(ds.keys()):
        elem = element(ds, tag)
        if elem is not None:
            yield elem
