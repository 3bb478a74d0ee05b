"""Sub-operation counts and the final C-MOVE/C-GET status (proxy.retrieve.tally)."""

from __future__ import annotations

import pytest

from proxy.retrieve.tally import Tally, final_status, response
from proxy.status import Status


def tally_of(expected: int, completed: int = 0, failed: int = 0, warning: int = 0) -> Tally:
    t = Tally()
    t.expect([f"1.2.{i}" for i in range(expected)])
    uids = iter(t.expected)
    for _ in range(completed):
        t.record(next(uids), Status.SUCCESS)
    for _ in range(warning):
        t.record(next(uids), 0xB007)
    for _ in range(failed):
        t.record(next(uids), 0xA700, "destination out of resources")
    return t


@pytest.mark.parametrize(("t", "upstream", "sink", "expected"), [
    (tally_of(3, completed=3), None, None, Status.SUCCESS),
    (tally_of(0), None, None, Status.UNABLE_TO_PROCESS),         # nothing matched: no "Success"
    (tally_of(0), "a: refused", None, Status.UNABLE_TO_PROCESS),  # could not even ask
    (tally_of(3, completed=2, failed=1), None, None, Status.WARNING_SUBOPS_FAILED),
    (tally_of(3, completed=2, warning=1), None, None, Status.WARNING_SUBOPS_FAILED),
    (tally_of(3, failed=3), None, None, Status.REFUSED_OUT_OF_RESOURCES_SUBOPS),
    (tally_of(3, failed=3), None, "destination unreachable",
     Status.REFUSED_OUT_OF_RESOURCES_SUBOPS),
    (tally_of(3, failed=3), "a: aborted", None, Status.UNABLE_TO_PROCESS),
])
def test_final_status_tells_the_truth(t: Tally, upstream: str | None, sink: str | None,
                                      expected: int) -> None:
    status, hint = final_status(t, cancelled=False, upstream_failure=upstream,
                                sink_failure=sink)
    assert status == expected
    if status not in (Status.SUCCESS, Status.WARNING_SUBOPS_FAILED):
        assert hint  # a failure always says why


def test_cancel_wins_and_reports_remaining() -> None:
    t = tally_of(5, completed=2)
    status, _ = final_status(t, cancelled=True, upstream_failure=None, sink_failure=None)
    ds = response(status, t, remaining=True)
    assert ds.Status == Status.CANCEL
    assert (ds.NumberOfRemainingSuboperations, ds.NumberOfCompletedSuboperations) == (3, 2)
    assert "FailedSOPInstanceUIDList" not in ds


def test_undelivered_instances_become_failed_with_their_uids() -> None:
    t = tally_of(4, completed=1)
    assert t.settle("archive aborted") == 3
    status, hint = final_status(t, cancelled=False, upstream_failure="a: aborted",
                                sink_failure=None)
    ds = response(status, t, hint)
    assert status == Status.WARNING_SUBOPS_FAILED
    assert (ds.NumberOfCompletedSuboperations, ds.NumberOfFailedSuboperations) == (1, 3)
    assert list(ds.FailedSOPInstanceUIDList) == ["1.2.1", "1.2.2", "1.2.3"]
    assert "ErrorComment" not in ds       # a warning carries no error comment


def test_success_with_nothing_delivered_is_impossible() -> None:
    """A dead destination: every expected instance is Failed, status is a failure."""
    t = tally_of(7)
    t.settle("destination unreachable: connection refused")
    status, hint = final_status(t, cancelled=False, upstream_failure=None,
                                sink_failure="destination unreachable: connection refused")
    ds = response(status, t, hint)
    assert status == Status.REFUSED_OUT_OF_RESOURCES_SUBOPS
    assert (ds.NumberOfCompletedSuboperations, ds.NumberOfFailedSuboperations) == (0, 7)
    assert len(ds.FailedSOPInstanceUIDList) == 7
    assert ds.ErrorComment.startswith("destination unreachable")


def test_total_grows_when_more_arrive_than_surveyed() -> None:
    t = tally_of(2)
    t.record("1.2.0", Status.SUCCESS)
    t.record("9.9.9", Status.SUCCESS)     # not in the survey: still a sub-operation
    assert (t.total, t.remaining) == (3, 1)
    t.upstream_total = 10                  # the archive says there are more
    assert t.remaining == 8


def test_pending_response_has_all_counts() -> None:
    t = tally_of(3, completed=1, failed=1)
    ds = response(Status.PENDING, t, remaining=True)
    assert [ds.NumberOfRemainingSuboperations, ds.NumberOfCompletedSuboperations,
            ds.NumberOfFailedSuboperations, ds.NumberOfWarningSuboperations] == [1, 1, 1, 0]
    assert "FailedSOPInstanceUIDList" not in ds
