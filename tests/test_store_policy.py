"""Pure forwarding decisions (proxy.store.policy): status meaning, backoff, contexts, sending."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    RLELossless,
)

from proxy.store.policy import Choice, Verdict, backoff_delay, choose, classify, plan_contexts
from proxy.store.spool import InstanceMeta


def meta(sop: str = CTImageStorage, ts: str = ExplicitVRLittleEndian,
         uid: str = "1.2.3") -> InstanceMeta:
    return InstanceMeta(sop, uid, ts)


@pytest.mark.parametrize(("status", "verdict"), [
    (0x0000, Verdict.DELIVERED),
    (0xB000, Verdict.WARNING),            # coercion of data elements
    (0xB007, Verdict.WARNING),            # data set does not match SOP class (stored anyway)
    (0xB006, Verdict.WARNING),            # elements discarded
    (None, Verdict.RETRY_ARCHIVE),        # no answer: timeout or abort
    (0xA700, Verdict.RETRY_ARCHIVE),      # out of resources: the archive is full
    (0xA7FF, Verdict.RETRY_ARCHIVE),
    (0x0110, Verdict.RETRY_INSTANCE),     # processing failure
    (0x0213, Verdict.RETRY_INSTANCE),     # resource limitation
    (0x0122, Verdict.REFUSED),            # SOP class not supported
    (0x0124, Verdict.REFUSED),            # not authorized
    (0xA900, Verdict.REFUSED),            # data set does not match SOP class
    (0xC000, Verdict.REFUSED),            # cannot understand
    (0xC211, Verdict.REFUSED),
    (0x0211, Verdict.REFUSED),            # unrecognized operation
])
def test_classify(status: int | None, verdict: Verdict) -> None:
    assert classify(status) is verdict


def test_backoff_doubles_from_initial_up_to_the_cap() -> None:
    delays = [backoff_delay(n, 1.0, 60.0) for n in range(0, 10)]
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert backoff_delay(10_000, 0.5, 30.0) == 30.0   # no overflow after days of outage


@given(st.integers(1, 200), st.floats(0.01, 10), st.floats(0.01, 600), st.floats(0, 1))
def test_backoff_jitter_stays_between_half_and_all_of_the_nominal_delay(
        failures: int, initial: float, maximum: float, rand: float) -> None:
    nominal = backoff_delay(failures, initial, maximum)
    delay = backoff_delay(failures, initial, maximum, rand)
    assert nominal / 2 - 1e-9 <= delay <= nominal + 1e-9
    assert nominal <= max(initial, maximum)


def test_each_instance_is_proposed_in_its_own_syntax_plus_an_uncompressed_fallback() -> None:
    contexts, covered = plan_contexts([meta(), meta(MRImageStorage, RLELossless),
                                       meta(), meta(CTImageStorage, JPEG2000Lossless)])
    assert covered == 4
    assert contexts == [
        (CTImageStorage, [ExplicitVRLittleEndian]),
        (CTImageStorage, [ImplicitVRLittleEndian]),
        (MRImageStorage, [RLELossless]),             # compressed: never a fallback
        (CTImageStorage, [JPEG2000Lossless]),
    ]


def test_big_endian_falls_back_to_both_little_endian_syntaxes() -> None:
    contexts, _ = plan_contexts([meta(ts=ExplicitVRBigEndian)])
    assert contexts == [(CTImageStorage, [ExplicitVRBigEndian]),
                        (CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]


def test_planning_stops_before_the_instance_that_would_pass_the_context_limit() -> None:
    metas = [meta(sop=f"1.2.840.10008.5.1.4.1.1.{i}", ts=RLELossless) for i in range(10)]
    contexts, covered = plan_contexts(metas, limit=4)
    assert covered == 4 and len(contexts) == 4
    contexts, covered = plan_contexts([meta()] * 3 + [meta(sop=MRImageStorage)], limit=3)
    assert covered == 3                                # the MR needs 2 more contexts


def test_choose_prefers_the_stored_bytes() -> None:
    accepted = [(CTImageStorage, ExplicitVRLittleEndian), (CTImageStorage, JPEG2000Lossless)]
    assert choose(meta(ts=JPEG2000Lossless), accepted) == Choice(True, JPEG2000Lossless)
    assert choose(meta(), accepted) == Choice(True, ExplicitVRLittleEndian)


def test_choose_reencodes_only_between_uncompressed_syntaxes() -> None:
    accepted = [(CTImageStorage, ImplicitVRLittleEndian)]
    assert choose(meta(), accepted) == Choice(False, ImplicitVRLittleEndian)
    assert choose(meta(ts=ExplicitVRBigEndian), accepted) == Choice(False, ImplicitVRLittleEndian)
    assert choose(meta(ts=RLELossless), accepted) is None          # never transcode pixels
    assert choose(meta(sop=MRImageStorage), accepted) is None      # SOP class not accepted
