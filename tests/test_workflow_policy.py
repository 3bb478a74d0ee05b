"""proxy.workflow.policy: when an MPPS message goes at once, is journaled or refused."""

from __future__ import annotations

import pytest

from proxy.workflow.policy import Step, Verdict, first_step, remembers, verdict, when_unanswered


@pytest.mark.parametrize(("operation", "queue_empty", "known", "step"), [
    ("N-CREATE", True, False, Step.FORWARD),
    ("N-CREATE", False, False, Step.JOURNAL),     # behind what is queued: order
    ("N-SET", True, True, Step.FORWARD),
    ("N-SET", False, True, Step.JOURNAL),
    ("N-SET", False, False, Step.FORWARD),        # unknown: the RIS's own answer, queue or not
    ("N-SET", True, False, Step.FORWARD),
])
def test_first_step(operation: str, queue_empty: bool, known: bool, step: Step) -> None:
    assert first_step(operation, queue_empty, known) is step


@pytest.mark.parametrize(("operation", "known", "step"), [
    ("N-CREATE", False, Step.JOURNAL), ("N-CREATE", True, Step.JOURNAL),
    ("N-SET", True, Step.JOURNAL), ("N-SET", False, Step.REFUSE),
])
def test_when_unanswered(operation: str, known: bool, step: Step) -> None:
    assert when_unanswered(operation, known) is step


@pytest.mark.parametrize(("operation", "status", "maybe", "result"), [
    ("N-CREATE", 0x0000, False, Verdict.DELIVERED),
    ("N-SET", 0x0106, False, Verdict.DEAD),         # invalid attribute value: failure
    ("N-SET", 0x0107, False, Verdict.DELIVERED),    # attribute list error: a warning
    ("N-CREATE", None, False, Verdict.RETRY),
    ("N-CREATE", 0xA700, False, Verdict.RETRY),
    ("N-SET", 0x0213, False, Verdict.RETRY),
    ("N-CREATE", 0x0111, True, Verdict.DELIVERED),  # its own earlier, unanswered attempt
    ("N-CREATE", 0x0111, False, Verdict.DEAD),
    ("N-SET", 0x0112, True, Verdict.DEAD),
    ("N-SET", 0x0110, False, Verdict.DEAD),
])
def test_verdict(operation: str, status: int | None, maybe: bool, result: Verdict) -> None:
    assert verdict(operation, status, maybe) is result


def test_remembers_success_and_warning_only() -> None:
    assert remembers(0x0000) and remembers(0x0107) and not remembers(0x0112)
