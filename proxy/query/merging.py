"""De-duplicating and merging the C-FIND matches of several archives (federation).

Job: when the proxy fans one C-FIND out to several archives, the same entity may come back
from more than one of them. This module says which answers are the same entity and, in the
"complete" merge mode, folds them into one identifier. Data in, data out.

Rule 1: two answers are the same entity when their Unique Key at the query level is equal
        (PS3.4 C.2.2.1.1: a Unique Key value identifies a single entity at its level), see
        LEVEL_UNIQUE_KEYS. A patient is (Patient ID, Issuer of Patient ID): the same Patient
        ID under two issuers is two patients; an absent issuer equals an empty one. Values
        compare without their padding (spaces; a UID's trailing NUL).
        Decision (issue #10): at STUDY, SERIES and IMAGE level the UID alone is the key,
        even when the answers' Patient IDs differ: archives of a federation commonly file
        the same study under their own Patient ID domains (no Issuer to compare them), and
        a retrieve by that UID cannot tell the entities apart anyway.
Rule 1b: answers of one source (one archive's answer; one upstream response) are never
        duplicates of each other: an archive holding two studies of two patients under the
        same Study Instance UID (a UID collision, merged patients) answers two matches,
        and the workstation gets both. Across sources an entity counts once per answer it
        had within a source: the n-th answer with a key from one source is a duplicate of
        the n-th with that key from another (multiset maximum), so two archives holding the
        same two colliding studies give two answers, not four and not one.
Rule 1c: a Modality Worklist answer (``WORKLIST``, no Query/Retrieve Level) is one
        Scheduled Procedure Step: the same item when its Accession Number and the
        Scheduled Procedure Step ID (in its Scheduled Procedure Step Sequence) are equal —
        an SPS ID is unique within its Requested Procedure (PS3.3 C.4.10), which the
        Accession Number names (issue #14). Worklists are de-duplicated, not merged.
Rule 2: an answer without its unique key (absent or empty) cannot be de-duplicated: it is
        passed through, never dropped.
Rule 3: streaming mode (Deduplicator): the first answer with a key is sent at once, later
        ones are counted and dropped. Memory is one tuple of short strings per distinct
        entity, about 150 bytes for a UID (and the same again per source while it is not
        ``forget``-ten): some 15 MB for 100,000 studies, bounded by how many matches the
        archives may return.
Rule 4: complete mode (merge): the first answer wins. Each attribute it lacks, or has empty,
        is filled from the later one. The count attributes (COUNT_KEYWORDS) take the larger
        value, a lower bound of the federated truth. Modalities In Study and SOP Classes In
        Study take the ordered union, first answer's values first. Not merged: Retrieve AE
        Title (the proxy overwrites it), Specific Character Set (rule 5), private elements
        (two archives' private creator blocks need not agree), and sequences item by item
        (a non-empty sequence in the first answer wins whole; one whose items are all empty
        counts as empty).
Rule 5: character sets: a value taken from an answer with the same Specific Character Set
        keeps its bytes. When the answers declare different Specific Character Sets and a
        text value is taken from the later one, the result declares ISO_IR 192 (UTF-8,
        PS3.3 C.12.1.1.2), which encodes both: every text value of that result is then
        re-encoded in UTF-8 (decoded with its own answer's character set first). Nothing
        else is decoded or re-encoded: elements the merge leaves alone pass as their bytes.
Rule 6: inputs are never mutated: every Dataset returned is new — except with
        ``merge_all(..., consume=True)``, where the caller gives its answers away (the C-FIND
        handler does: nothing else holds them) and they are merged in place, uncopied, some
        ten times faster.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Iterable, Mapping
from types import MappingProxyType
from typing import Final

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from proxy.rawtext import element, keyword_tag, text_values

__all__ = [
    "COUNT_KEYWORDS",
    "LEVEL_UNIQUE_KEYS",
    "UNION_KEYWORDS",
    "WORKLIST",
    "Deduplicator",
    "merge",
    "merge_all",
    "unique_key",
]

WORKLIST: Final = "WORKLIST"        # the Modality Worklist model's pseudo-level (rule 1c)
_SPS_SEQUENCE = Tag(0x00400100)     # Scheduled Procedure Step Sequence
_SPS_ID = Tag(0x00400009)           # Scheduled Procedure Step ID

LEVEL_UNIQUE_KEYS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType({
    "PATIENT": ("PatientID", "IssuerOfPatientID"),
    "STUDY": ("StudyInstanceUID",),
    "SERIES": ("SeriesInstanceUID",),
    "IMAGE": ("SOPInstanceUID",),
})

COUNT_KEYWORDS: Final = frozenset({
    "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances", "NumberOfSeriesRelatedInstances",
})
UNION_KEYWORDS: Final = frozenset({"ModalitiesInStudy", "SOPClassesInStudy"})

_NOT_MERGED: Final = frozenset({Tag("RetrieveAETitle"), Tag("SpecificCharacterSet")})
_COMBINED_TAGS: Final = frozenset(Tag(k) for k in COUNT_KEYWORDS | UNION_KEYWORDS)
_CHARSET: Final = Tag("SpecificCharacterSet")
_UTF8: Final = "ISO_IR 192"
_DEFAULT_CHARSET: Final = ("ISO_IR 6",)
_TEXT_VRS: Final = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN", "SQ"})


def unique_key(level: str, identifier: Dataset) -> tuple[str, ...] | None:
    """The entity's unique key at ``level`` (rule 1); ``None`` when it has none (rule 2).

    Raises ValueError for a level that is not PATIENT, STUDY, SERIES, IMAGE or WORKLIST.
    """
    if level.strip().upper() == WORKLIST:
        return _worklist_key(identifier)
    values = tuple(_text(identifier, keyword) for keyword in _unique_keywords(level))
    return values if values[0] else None


class Deduplicator:
    """Streaming de-duplication of one query's matches (rules 1b, 3).

    ``offer`` says whether to send an answer now: True the first time its unique key is
    seen, or when it has none (rule 2), or when its ``source`` has answered that key more
    often than any source before (rule 1b); False for a duplicate, which is counted.
    ``source`` None: the answer is a source of its own (one answer per key).
    """

    def __init__(self, level: str) -> None:
        _unique_keywords(level)
        self._level = level
        self._sent: dict[tuple[str, ...], int] = {}
        self._by_source: dict[Hashable, dict[tuple[str, ...], int]] = {}
        self._duplicates = 0
        self._without_key = 0

    def offer(self, identifier: Dataset, source: Hashable = None) -> bool:
        key = unique_key(self._level, identifier)
        if key is None:
            self._without_key += 1
            return True
        nth = 1
        if source is not None:
            counts = self._by_source.setdefault(source, {})
            nth = counts[key] = counts.get(key, 0) + 1
        if nth <= self._sent.get(key, 0):
            self._duplicates += 1
            return False
        self._sent[key] = nth
        return True

    def forget(self, source: Hashable) -> None:
        """``source`` has answered in full: drop its counts (what was sent is kept)."""
        self._by_source.pop(source, None)

    @property
    def duplicates(self) -> int:
        """Answers dropped as duplicates so far."""
        return self._duplicates

    @property
    def unique(self) -> int:
        """Distinct unique keys seen so far."""
        return len(self._sent)

    @property
    def without_key(self) -> int:
        """Answers passed through because they lacked their unique key."""
        return self._without_key


def merge(a: Dataset, b: Dataset) -> Dataset:
    """One identifier from two answers for the same entity, ``a`` winning (rules 4-6)."""
    result = copy.deepcopy(a)
    _merge_into(result, copy.deepcopy(b))
    return result


def _merge_into(result: Dataset, later: Dataset) -> Dataset:
    """Rules 4-5, merging ``later`` into ``result``; both are the caller's to change.

    Elements are read without converting them in place (``proxy.rawtext.element``): what
    ``result`` keeps is relayed as its archive's bytes. Only what the merge changes is
    written: a value taken from ``later`` (its bytes when the two agree on character
    set and VR encoding), a count or a union; and with mixed character sets, once a text
    value is taken, the whole of ``result`` (it is then re-encoded in UTF-8, rule 5).
    """
    mixed_charsets = _charset(result) != _charset(later)
    decoded = False
    for tag in list(later.keys()):
        tag = BaseTag(tag)
        if tag.is_private or tag in _NOT_MERGED:
            continue
        if tag not in _COMBINED_TAGS and tag in result and _known_filled(result.get_item(tag)):
            continue               # ours stands: no need to decode theirs
        theirs = element(later, tag)
        if theirs is None or _is_blank(theirs):
            continue
        mine = element(result, tag)
        if mine is not None and not _is_blank(mine):
            keyword = theirs.keyword
            if ((keyword in COUNT_KEYWORDS and _take_larger(mine, theirs))
                    or (keyword in UNION_KEYWORDS and _take_union(mine, theirs))):
                result[tag] = mine          # changed: written from its value (rule 4)
            continue
        if mixed_charsets and theirs.VR in _TEXT_VRS:
            if not decoded:        # rule 5: every text of result now goes out in UTF-8
                result.decode()
                result.SpecificCharacterSet = _UTF8
                decoded = True
            if theirs.VR == "SQ":  # items decoded with later's character set
                for item in theirs.value:
                    item.decode()
            result[tag] = theirs
        else:
            result[tag] = _as_raw(later.get_item(tag), result) or theirs
    return result


def _as_raw(elem: DataElement | RawDataElement, result: Dataset) -> RawDataElement | None:
    """``elem``'s bytes as an element of ``result``'s VR encoding, when they are the same
    bytes there: a raw, little endian, non-sequence element with a known VR."""
    if not isinstance(elem, RawDataElement) or not isinstance(elem.value, bytes):
        return None
    implicit, little = result.original_encoding
    vr = elem.VR or _dictionary_vr(elem.tag)
    if vr in ("SQ", "UN") or len(vr) != 2 or not elem.is_little_endian or little is False:
        return None
    return elem._replace(VR=vr, is_implicit_VR=implicit if implicit is not None else True,
                         is_little_endian=True)


def merge_all(level: str, identifiers: Iterable[Dataset], *,
              consume: bool = False,
              sources: Iterable[Hashable] | None = None) -> list[Dataset]:
    """Group answers by unique key and merge each group, in order of first appearance.

    Answers without a unique key stay, each on its own (rule 2). ``sources``: where each
    answer came from, in the same order; the n-th answer with a key from one source
    merges with the n-th with that key from another (rule 1b); None: every answer is
    a source of its own. ``consume``: the answers may be changed and returned themselves
    (rule 6).
    """
    _unique_keywords(level)
    merged: list[Dataset] = []
    position: dict[tuple[tuple[str, ...], int], int] = {}
    counts: dict[tuple[Hashable, tuple[str, ...]], int] = {}
    origins = iter(sources) if sources is not None else None
    for identifier in identifiers:
        source = next(origins) if origins is not None else None
        found = unique_key(level, identifier)
        key = None
        if found is not None:
            nth = 1
            if source is not None:
                nth = counts[(source, found)] = counts.get((source, found), 0) + 1
            key = (found, nth)
        at = None if key is None else position.get(key)
        if at is not None:
            if consume:
                _merge_into(merged[at], identifier)
            else:
                merged[at] = merge(merged[at], identifier)
            continue
        if key is not None:
            position[key] = len(merged)
        merged.append(identifier if consume else copy.deepcopy(identifier))
    return merged


def _worklist_key(identifier: Dataset) -> tuple[str, ...] | None:
    """Rule 1c: (Accession Number, Scheduled Procedure Step ID); None without an SPS ID."""
    sequence = element(identifier, _SPS_SEQUENCE)       # read, not converted in place
    if sequence is None or sequence.VR != "SQ" or not sequence.value:
        return None
    step = "\\".join(v.strip(" \0") for v in text_values(sequence.value[0], _SPS_ID))
    if not step:
        return None
    return _text(identifier, "AccessionNumber"), step


def _unique_keywords(level: str) -> tuple[str, ...]:
    if level.strip().upper() == WORKLIST:
        return ("AccessionNumber", "ScheduledProcedureStepID")
    keywords = LEVEL_UNIQUE_KEYS.get(level.strip().upper())
    if keywords is None:
        known = ", ".join(LEVEL_UNIQUE_KEYS)
        raise ValueError(f"Query/Retrieve Level {level!r} is not one of {known}")
    return keywords


def _text(identifier: Dataset, keyword: str) -> str:
    # Per streamed match: read the raw bytes, do not convert the element (proxy.rawtext).
    return "\\".join(v.strip(" \0") for v in text_values(identifier, keyword_tag(keyword)))


def _values(elem: DataElement) -> list[str]:
    if elem.is_empty:
        return []
    items = list(elem.value) if elem.VM > 1 else [elem.value]
    return [str(v).strip(" \0") for v in items]


def _known_filled(elem: DataElement | RawDataElement) -> bool:
    """True when ``elem`` surely holds a value, read without decoding it (not for sequences)."""
    if isinstance(elem, RawDataElement):
        if (elem.VR or _dictionary_vr(elem.tag)) == "SQ" or elem.value is None:
            return False
        return bytes(elem.value).strip(b" \0\\") != b""
    return elem.VR != "SQ" and not _is_blank(elem)


def _dictionary_vr(tag: BaseTag) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _is_blank(elem: DataElement) -> bool:
    if elem.VR == "SQ":
        return all(len(item) == 0 for item in elem.value)
    return elem.is_empty or not any(_values(elem))


def _take_larger(mine: DataElement, theirs: DataElement) -> bool:
    try:
        if int(float(_values(theirs)[0])) > int(float(_values(mine)[0])):
            mine.value = theirs.value
            return True
    except (ValueError, IndexError):
        pass                        # an unreadable count never replaces ours
    return False


def _take_union(mine: DataElement, theirs: DataElement) -> bool:
    values = [v for v in _values(mine) if v]
    extra = [v for v in _values(theirs) if v and v not in values]
    extra = list(dict.fromkeys(extra))
    if extra:
        mine.value = values + extra
    return bool(extra)


def _charset(identifier: Dataset) -> tuple[str, ...]:
    elem = element(identifier, _CHARSET)
    values = tuple(v for v in _values(elem) if v) if elem is not None else ()
    return values or _DEFAULT_CHARSET
