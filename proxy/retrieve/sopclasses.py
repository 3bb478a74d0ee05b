"""What a retrieve needs negotiated: SOP classes and transfer syntaxes, learned before pulling.

A C-GET requester (and the proxy's association to a Move Destination) may propose
at most 128 presentation contexts (PS3.8 9.3.2.2), and an archive sends an
instance in its original encoding only over a context that names exactly that
SOP class *and* that transfer syntax — otherwise it transcodes or fails. So the
proxy first asks the archive an IMAGE-level C-FIND ("the survey") for every
instance's SOP Class UID and, when the archive says, its transfer syntax(es)
(Available Transfer Syntax UID (0008,3002), or (0002,0010) which some archives
return), and proposes exactly those.

Rule 1: each proposed context carries ONE transfer syntax, so the acceptor cannot
        pick a different one than the instance's own (several contexts may share a
        SOP class, PS3.8 9.3.2.2).
Rule 2: per SOP class the wishes are, in order: the syntaxes the archive named,
        Explicit VR Little Endian and Implicit VR Little Endian (the universal
        fallbacks), then — only when the archive did not say — the common
        encodings of ``CANDIDATE_SYNTAXES``. Classes are served round-robin,
        most frequent first, so every class gets its first wish before any class
        gets its second, and the total never exceeds the limit.
Rule 3: deflated syntaxes are never proposed (an unbounded inflate for a few bytes on
        the wire, see ``proxy.contexts``); the archive sends those inflated.
Rule 4: pure: datasets in, datasets and contexts out.
Rule 5 (the receiver decides, ``for_receiver``): once the receiver (the Move Destination,
        or the C-GET workstation's association) has accepted its contexts, the archive is
        asked, per SOP class, for the instance's own syntax where the receiver accepted
        it and for the receiver's accepted syntaxes where it did not — so the archive
        converts exactly as it would when sending to the receiver directly, and the proxy
        forwards bytes it never has to touch. A class the receiver accepted in no syntax
        is still asked for in its own syntax: the sub-operation then fails at the
        receiver's side with the reason, and the archive's answer is not derailed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.tag import Tag
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import StoragePresentationContexts
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.presentation import PresentationContext, build_context, build_role

from proxy.contexts import DEFLATED

MAX_CONTEXTS = 128                                # PS3.8 9.3.2.2
AVAILABLE_TRANSFER_SYNTAX = Tag(0x0008, 0x3002)   # Available Transfer Syntax UID
TRANSFER_SYNTAX = Tag(0x0002, 0x0010)
FALLBACK_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# When the archive does not say: the encodings archives commonly hold, commonest first.
CANDIDATE_SYNTAXES = (
    JPEGBaseline8Bit, JPEGLosslessSV1, JPEG2000Lossless, JPEG2000, JPEGExtended12Bit,
    JPEGLSLossless, RLELossless, JPEGLossless, JPEGLSNearLossless, ExplicitVRBigEndian,
    HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K,
)
UNIQUE_KEYS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


@dataclass(frozen=True)
class Instance:
    """One instance as the survey saw it; ``syntaxes`` empty when the archive did not say."""

    uid: str
    sop_class: str
    syntaxes: tuple[str, ...] = ()
    study: str = ""                   # Study and Series Instance UID, when the survey listed
    series: str = ""                  # them (to ask for this instance alone again)


Accepted = dict[str, list[str]]       # SOP class → transfer syntaxes a receiver accepted


def accepted_by(contexts: Iterable[tuple[str, str]]) -> Accepted:
    """SOP class → the transfer syntaxes accepted for it, in the order given."""
    out: Accepted = {}
    for sop_class, syntax in contexts:
        taken = out.setdefault(sop_class, [])
        if syntax not in taken:
            taken.append(syntax)
    return out


def survey_identifier(identifier: Dataset) -> Dataset:
    """The IMAGE-level C-FIND that lists what a C-MOVE/C-GET identifier will retrieve.

    The retrieve's unique keys are kept as matching keys (UID lists included);
    the IMAGE-level keys it lacks are asked for as return keys.
    """
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    for keyword in UNIQUE_KEYS:
        elem = identifier.data_element(keyword) if keyword in identifier else None
        if elem is not None and not elem.is_empty:
            query.add_new(elem.tag, elem.VR, elem.value)
        elif keyword != "PatientID":
            setattr(query, keyword, "")
    if "SpecificCharacterSet" in identifier:
        query.SpecificCharacterSet = identifier.SpecificCharacterSet
    query.SOPClassUID = ""
    if "StudyInstanceUID" not in query:
        query.StudyInstanceUID = ""
    query.add_new(AVAILABLE_TRANSFER_SYNTAX, "UI", None)
    return query


SOP_CLASSES_IN_STUDY = Tag(0x0008, 0x0062)


def count_identifier(identifier: Dataset) -> Dataset:
    """STUDY-level C-FIND for how many instances and which SOP classes a study holds.

    Number of Study Related Instances (0020,1208) and SOP Classes in Study
    (0008,0062) are optional return keys (PS3.4 C.6.1.1.3.2 / C.6.2.1.2.2): one
    response per study instead of one per instance.
    """
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    for keyword in ("PatientID", "StudyInstanceUID"):
        elem = identifier.data_element(keyword) if keyword in identifier else None
        if elem is not None and not elem.is_empty:
            query.add(elem)
    if "StudyInstanceUID" not in query:
        query.StudyInstanceUID = ""
    query.NumberOfStudyRelatedInstances = None
    query.add_new(SOP_CLASSES_IN_STUDY, "UI", None)
    return query


def count_of(match: Dataset) -> tuple[int, list[str]] | None:
    """(instances, SOP classes) of one STUDY-level match, or None if it lacks either."""
    count = match.get("NumberOfStudyRelatedInstances")
    elem = match.get(SOP_CLASSES_IN_STUDY)
    if count in (None, "") or elem is None or elem.is_empty:
        return None
    try:
        n = int(count)
    except (TypeError, ValueError):
        return None
    values = list(elem.value) if elem.VM > 1 else [elem.value]
    return n, [str(v).strip(" \0") for v in values if str(v).strip(" \0")]


def instance_of(match: Dataset) -> Instance | None:
    """The instance one survey match describes (None without its SOP Instance UID).

    Some archives (pynetdicom's qrscp among them) do not return SOP Class UID at
    IMAGE level: the instance still counts, with an unknown class ("") for which
    the common storage classes are proposed.
    """
    uid = _text(match.get("SOPInstanceUID"))
    sop_class = _text(match.get("SOPClassUID"))   # "" when the archive does not say
    if not uid:
        return None
    syntaxes: list[str] = []
    for tag in (TRANSFER_SYNTAX, AVAILABLE_TRANSFER_SYNTAX):
        elem = match.get(tag)
        if elem is None or elem.is_empty:
            continue
        values = list(elem.value) if elem.VM > 1 else [elem.value]
        for value in values:
            ts = str(value).strip(" \0")
            if ts and ts not in syntaxes and ts not in DEFLATED:
                syntaxes.append(ts)
    return Instance(uid, sop_class, tuple(syntaxes), _text(match.get("StudyInstanceUID")),
                    _text(match.get("SeriesInstanceUID")))


def named_syntaxes(instances: Iterable[Instance]) -> list[tuple[str, list[str], bool]]:
    """Per SOP class (most frequent first): the syntaxes the survey named for its instances,
    and whether some of its instances came without one (their syntax is unknown)."""
    counts: Counter[str] = Counter()
    named: dict[str, list[str]] = {}
    unknown: set[str] = set()
    for inst in instances:
        counts[inst.sop_class] += 1
        known = named.setdefault(inst.sop_class, [])
        for ts in inst.syntaxes:
            if ts not in known:
                known.append(ts)
        if not inst.syntaxes:
            unknown.add(inst.sop_class)
    return [(c, named[c], c in unknown) for c, _ in counts.most_common()]


def wishes(instances: Iterable[Instance]) -> list[tuple[str, list[str]]]:
    """Per SOP class (most frequent first), the transfer syntaxes to propose, in order."""
    out = []
    for sop_class, named, unknown in named_syntaxes(instances):
        wish = list(named)
        extra = [*FALLBACK_SYNTAXES, *(CANDIDATE_SYNTAXES if unknown else ())]
        wish += [ts for ts in extra if ts not in wish]
        out.append((sop_class, wish))
    return out


def propose(instances: Iterable[Instance], limit: int = MAX_CONTEXTS) -> list[PresentationContext]:
    """Single-syntax storage contexts for ``instances``, at most ``limit`` (Rules 1-2).

    Instances of unknown class ("") bring in the common storage classes, uncompressed.
    """
    listed = list(instances)
    table = wishes(inst for inst in listed if inst.sop_class)
    if any(not inst.sop_class for inst in listed):
        named = {sop_class for sop_class, _ in table}
        table += [(str(cx.abstract_syntax), list(FALLBACK_SYNTAXES))
                  for cx in StoragePresentationContexts
                  if str(cx.abstract_syntax) not in named]
    return _round_robin(table, limit)


def for_receiver(instances: Iterable[Instance], accepted: Accepted,
                 limit: int = MAX_CONTEXTS) -> list[PresentationContext]:
    """Contexts to ask the archive for, given what the receiver accepted (Rule 5).

    When the archive did not name an instance's syntax (Orthanc does not), every syntax
    the receiver accepted for the class is offered: the archive sends the instance's own
    where it is among them and otherwise converts to the one it prefers of them (Orthanc:
    Implicit, then Explicit VR Little Endian) — where, directly, the receiver would have
    picked among the archive's offer. Same values, same pixel data; README, "What the
    proxy changes"."""
    listed = [inst for inst in instances if inst.sop_class]
    own = dict(wishes(listed))
    table = []
    for sop_class, named, _unknown in named_syntaxes(listed):
        taken = [ts for ts in accepted.get(sop_class, []) if ts not in DEFLATED]
        if not taken:
            table.append((sop_class, own[sop_class]))
            continue
        first = [ts for ts in named if ts in taken]
        table.append((sop_class, first + [ts for ts in taken if ts not in first]))
    return _round_robin(table, limit)


def originals(instances: Iterable[Instance], accepted: Accepted,
              limit: int = MAX_CONTEXTS) -> list[PresentationContext]:
    """Contexts for asking again for instances the archive could not convert: their own
    syntaxes first (the proxy converts them itself), then what the receiver accepted."""
    table = []
    for sop_class, wish in wishes(inst for inst in instances if inst.sop_class):
        taken = [ts for ts in accepted.get(sop_class, []) if ts not in wish]
        table.append((sop_class, wish + taken))
    return _round_robin(table, limit)


def _round_robin(table: list[tuple[str, list[str]]], limit: int) -> list[PresentationContext]:
    """Every class its first wish before any class its second, at most ``limit`` (Rule 2)."""
    contexts: list[PresentationContext] = []
    depth = 0
    while len(contexts) < limit:
        added = False
        for sop_class, wish in table:
            if depth < len(wish) and len(contexts) < limit:
                contexts.append(build_context(sop_class, [wish[depth]]))
                added = True
        if not added:
            break
        depth += 1
    return contexts


def roles(contexts: Sequence[PresentationContext]) -> list[SCP_SCU_RoleSelectionNegotiation]:
    """SCP role for each storage SOP class: the archive's C-STOREs come back (C-GET)."""
    seen: dict[str, None] = {}
    for cx in contexts:
        seen.setdefault(str(cx.abstract_syntax), None)
    return [build_role(uid, scp_role=True) for uid in seen]


def _text(elem: object) -> str:
    value = getattr(elem, "value", elem)
    return str(value).strip(" \0") if value not in (None, "") else ""
