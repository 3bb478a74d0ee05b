"""Matching move-mode deliveries to their retrieve (proxy.retrieve.inbound.match)."""

from __future__ import annotations

import time

from proxy.retrieve.inbound import Expectation, InboundRegistry, match


def exp(msg_id: int, expected: set[str], archive_ae: str = "PACS", calling: str = "QR_PROXY",
        seq: int = 0) -> Expectation:
    return Expectation(msg_id, "a", archive_ae, calling, expected, lambda e: 0, seq=seq)


def test_move_originator_message_id_decides() -> None:
    one, two = exp(1, {"u1"}, seq=0), exp(2, {"u1"}, seq=1)   # both want the same study
    assert match([one, two], "PACS", "QR_PROXY", 2, "u1") is two
    assert match([one, two], "PACS", "QR_PROXY", 1, "u1") is one


def test_originator_ae_must_be_ours() -> None:
    one = exp(1, set())
    assert match([one], "PACS", "SOMEONE_ELSE", 1, "u9") is None


def test_without_originator_the_oldest_waiting_retrieve_gets_each_copy() -> None:
    one, two = exp(1, {"u1", "u2"}, seq=0), exp(2, {"u1"}, seq=1)
    first = match([one, two], "PACS", None, None, "u1")
    assert first is one
    one.received.add("u1")
    assert match([one, two], "PACS", None, None, "u1") is two   # the second copy
    two.received.add("u1")
    assert match([one, two], "PACS", None, None, "u1") is None  # a third copy: nobody


def test_the_sending_archive_is_preferred() -> None:
    other, mine = exp(1, {"u1"}, archive_ae="OTHER", seq=0), exp(2, {"u1"}, seq=1)
    assert match([other, mine], "PACS", None, None, "u1") is mine


def test_unexpected_instances_match_nothing() -> None:
    assert match([exp(1, {"u1"})], "PACS", None, None, "u2") is None
    assert match([], "PACS", "QR_PROXY", 1, "u1") is None


def test_a_blind_retrieve_takes_instances_only_when_alone() -> None:
    blind = exp(1, set())
    assert match([blind], "PACS", None, None, "u5") is blind
    assert match([blind, exp(2, set(), seq=1)], "PACS", None, None, "u5") is None


def _registry_with_one() -> tuple[InboundRegistry, Expectation]:
    registry = InboundRegistry(None)  # type: ignore[arg-type]   # services: deliver only
    return registry, registry.open("a", "PACS", "QR_PROXY", {"1"}, lambda e: 0)


def test_waiting_for_nothing_or_what_arrived_returns_at_once() -> None:
    registry, exp = _registry_with_one()
    assert registry.wait_for(exp, 0, 10.0, lambda: False)
    exp.delivered = 1
    assert registry.wait_for(exp, 1, 10.0, lambda: False)


def test_waiting_for_instances_that_never_come_ends_at_the_timeout() -> None:
    registry, exp = _registry_with_one()
    started = time.monotonic()
    assert not registry.wait_for(exp, 1, 0.1, lambda: False)
    assert 0.1 <= time.monotonic() - started < 5.0


def test_waiting_stops_when_the_retrieve_is_cancelled() -> None:
    registry, exp = _registry_with_one()
    started = time.monotonic()
    assert not registry.wait_for(exp, 1, 30.0, lambda: True)
    assert time.monotonic() - started < 5.0


def test_the_archive_is_offered_what_the_receivers_of_its_retrieves_took() -> None:
    registry = InboundRegistry(None)  # type: ignore[arg-type]   # services: unused here
    ct, mr = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
    one = registry.open("a", "PACS", "QR", set(), lambda e: 0, {ct: ["1.2.840.10008.1.2.1"]})
    two = registry.open("a", "PACS", "QR", set(), lambda e: 0, {ct: ["1.2.840.10008.1.2"],
                                                                mr: ["1.2.840.10008.1.2"]})
    assert registry.syntaxes_for("a") == {ct: ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"],
                                          mr: ["1.2.840.10008.1.2"]}
    assert registry.syntaxes_for("b") is None
    registry.open("a", "PACS", "QR", set(), lambda e: 0)      # a receiver not known
    assert registry.syntaxes_for("a") is None
    registry.close(one)
    registry.close(two)
