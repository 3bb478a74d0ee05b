"""Survey query and presentation-context proposal (proxy.retrieve.sopclasses)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    MRImageStorage,
    RLELossless,
)

from proxy.retrieve.sopclasses import (
    AVAILABLE_TRANSFER_SYNTAX,
    CANDIDATE_SYNTAXES,
    MAX_CONTEXTS,
    Instance,
    for_receiver,
    instance_of,
    originals,
    propose,
    roles,
    survey_identifier,
    wishes,
)


def test_survey_keeps_unique_keys_and_asks_for_what_the_proxy_needs() -> None:
    ident = Dataset()
    ident.QueryRetrieveLevel = "SERIES"
    ident.StudyInstanceUID = "1.2.3"
    ident.SeriesInstanceUID = ["1.2.3.1", "1.2.3.2"]      # a UID list (PS3.4 C.2.2.2.2)
    q = survey_identifier(ident)
    assert q.QueryRetrieveLevel == "IMAGE"
    assert q.StudyInstanceUID == "1.2.3"
    assert list(q.SeriesInstanceUID) == ["1.2.3.1", "1.2.3.2"]
    assert q.SOPInstanceUID == "" and q.SOPClassUID == ""
    assert AVAILABLE_TRANSFER_SYNTAX in q
    assert "PatientID" not in q                            # not a Study Root key


def test_instance_of_reads_available_syntaxes_and_drops_deflated() -> None:
    match = Dataset()
    match.SOPInstanceUID = "1.2.3.4"
    match.SOPClassUID = CTImageStorage
    match.add_new(AVAILABLE_TRANSFER_SYNTAX, "UI",
                  [JPEG2000Lossless, DeflatedExplicitVRLittleEndian])
    assert instance_of(match) == Instance("1.2.3.4", CTImageStorage, (JPEG2000Lossless,))
    assert instance_of(Dataset()) is None


def test_each_context_has_exactly_one_syntax_and_known_ones_come_first() -> None:
    cts = propose([Instance("1", CTImageStorage, (JPEG2000Lossless,)),
                   Instance("2", CTImageStorage, (RLELossless,))])
    assert all(len(cx.transfer_syntax) == 1 for cx in cts)
    assert [cx.transfer_syntax[0] for cx in cts] == [
        JPEG2000Lossless, RLELossless, ExplicitVRLittleEndian, ImplicitVRLittleEndian]


def test_unknown_syntaxes_get_the_candidates() -> None:
    cts = propose([Instance("1", MRImageStorage)])
    syntaxes = [cx.transfer_syntax[0] for cx in cts]
    assert syntaxes[:2] == [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    assert JPEGBaseline8Bit in syntaxes and len(syntaxes) == 2 + len(CANDIDATE_SYNTAXES)


def test_every_class_gets_its_first_wish_before_any_gets_a_second() -> None:
    classes = [f"1.2.840.10008.5.1.4.1.1.{i}" for i in range(60)]
    cts = propose([Instance(str(i), c) for i, c in enumerate(classes)], limit=100)
    assert len(cts) == 100
    firsts = [cx for cx in cts if cx.transfer_syntax[0] == ExplicitVRLittleEndian]
    assert {cx.abstract_syntax for cx in firsts} == set(classes)


def test_most_frequent_class_is_served_first() -> None:
    insts = [Instance("1", MRImageStorage)] + [Instance(str(i), CTImageStorage)
                                               for i in range(2, 5)]
    assert [sop for sop, _ in wishes(insts)] == [CTImageStorage, MRImageStorage]


def test_roles_once_per_class() -> None:
    cts = propose([Instance("1", CTImageStorage), Instance("2", MRImageStorage)])
    items = roles(cts)
    assert sorted(i.sop_class_uid for i in items) == sorted([CTImageStorage, MRImageStorage])
    assert all(i.scp_role and not i.scu_role for i in items)


@given(st.lists(st.tuples(st.integers(0, 200), st.sampled_from(
    [None, JPEG2000Lossless, RLELossless, JPEGBaseline8Bit])), max_size=400),
       st.integers(1, MAX_CONTEXTS))
def test_never_more_than_the_limit_and_no_duplicates(pairs: list[tuple[int, str | None]],
                                                     limit: int) -> None:
    insts = [Instance(str(n), f"1.2.840.10008.5.1.4.1.1.{c}", (ts,) if ts else ())
             for n, (c, ts) in enumerate(pairs)]
    cts = propose(insts, limit)
    keys = [(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in cts]
    assert len(keys) <= limit and len(set(keys)) == len(keys)
    classes = {i.sop_class for i in insts}
    assert len({k[0] for k in keys}) == min(len(classes), limit)


# -- the receiver decides (Rule 5) -------------------------------------------------------

SC = "1.2.840.10008.5.1.4.1.1.7"


def syntaxes_of(contexts: list, sop_class: str) -> list[str]:
    return [cx.transfer_syntax[0] for cx in contexts if cx.abstract_syntax == sop_class]


def test_the_archive_is_asked_for_the_own_syntax_when_the_receiver_takes_it() -> None:
    accepted = {CTImageStorage: [JPEGBaseline8Bit, ExplicitVRLittleEndian]}
    cts = for_receiver([Instance("1", CTImageStorage, (JPEGBaseline8Bit,))], accepted)
    assert syntaxes_of(cts, CTImageStorage) == [JPEGBaseline8Bit, ExplicitVRLittleEndian]


def test_the_archive_is_asked_for_the_receiver_s_syntaxes_when_it_does_not() -> None:
    accepted = {SC: [ExplicitVRLittleEndian, ImplicitVRLittleEndian]}
    cts = for_receiver([Instance("1", SC, (JPEGBaseline8Bit,))], accepted)
    assert syntaxes_of(cts, SC) == [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


def test_unknown_syntaxes_offer_what_the_receiver_took_never_deflated() -> None:
    accepted = {SC: [RLELossless, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian]}
    cts = for_receiver([Instance("1", SC)], accepted)
    assert syntaxes_of(cts, SC) == [RLELossless, ExplicitVRLittleEndian]


def test_a_class_the_receiver_refused_is_still_asked_for_in_its_own_syntax() -> None:
    """The sub-operation then fails at the receiver's side, with the reason."""
    cts = for_receiver([Instance("1", MRImageStorage, (RLELossless,))], {})
    assert syntaxes_of(cts, MRImageStorage)[0] == RLELossless


def test_asking_again_offers_the_own_syntax_first_then_the_receiver_s() -> None:
    accepted = {SC: [ExplicitVRLittleEndian]}
    cts = originals([Instance("1", SC, (JPEG2000Lossless,))], accepted)
    assert syntaxes_of(cts, SC)[0] == JPEG2000Lossless
    assert ExplicitVRLittleEndian in syntaxes_of(cts, SC)


@given(st.lists(st.tuples(st.integers(0, 150), st.sampled_from(
    [None, JPEG2000Lossless, RLELossless, JPEGBaseline8Bit, ExplicitVRLittleEndian])),
    max_size=300), st.integers(1, MAX_CONTEXTS))
def test_receiver_proposals_stay_within_the_limit_and_the_receiver_s_syntaxes(
        pairs: list[tuple[int, str | None]], limit: int) -> None:
    insts = [Instance(str(n), f"1.2.840.10008.5.1.4.1.1.{c}", (ts,) if ts else ())
             for n, (c, ts) in enumerate(pairs)]
    accepted = {f"1.2.840.10008.5.1.4.1.1.{c}": [ExplicitVRLittleEndian]
                for c in range(0, 150, 2)}
    cts = for_receiver(insts, accepted, limit)
    keys = [(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in cts]
    assert len(keys) <= limit and len(set(keys)) == len(keys)
    for sop_class, syntax in keys:
        if sop_class in accepted:
            assert syntax in accepted[sop_class]
