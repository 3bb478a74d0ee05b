"""The final C-FIND status of a federated query (proxy.query.search.final_status)."""

from __future__ import annotations

import pytest

from proxy.query.fanout import Outcome
from proxy.query.search import final_status
from proxy.status import Status
from proxy.upstream import UpstreamError

OK_A = Outcome("a", Status.SUCCESS, 3)
OK_B = Outcome("b", Status.SUCCESS, 0)
DOWN_B = Outcome("b", None, 0, UpstreamError("b", "refused", kind="refused"))
SLOW_B = Outcome("b", None, 2, UpstreamError("b", "no answer in 4s", kind="timeout"))
CAPPED_B = Outcome("b", Status.REFUSED_OUT_OF_RESOURCES, 500)


@pytest.mark.parametrize(("outcomes", "status", "hint"), [
    ([OK_A, OK_B], Status.SUCCESS, None),
    ([OK_A, DOWN_B], Status.REFUSED_OUT_OF_RESOURCES, "incomplete answer from: b (refused)"),
    ([OK_A, CAPPED_B], Status.REFUSED_OUT_OF_RESOURCES,
     "incomplete answer from: b (capped, partly recovered)"),
    ([Outcome("a", None, 0, UpstreamError("a", "x", kind="rejected")), DOWN_B],
     Status.UNABLE_TO_PROCESS, "no archive answered: a (rejected), b (refused)"),
    # every archive failed, but one had sent matches first: they stand, the answer is partial
    ([Outcome("a", None, 0, UpstreamError("a", "x", kind="aborted")), SLOW_B],
     Status.REFUSED_OUT_OF_RESOURCES, "incomplete answer from: a (aborted), b (timeout)"),
])
def test_federated_final_status(outcomes: list[Outcome], status: int, hint: str | None) -> None:
    assert final_status(outcomes, cancelled=False, federated=True) == (status, hint)


def test_cancel_wins() -> None:
    assert final_status([OK_A, DOWN_B], cancelled=True, federated=True) == (Status.CANCEL, None)
