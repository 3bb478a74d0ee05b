"""Sub-operation counts of one workstation retrieve, and the final status they imply.

Rule 1 (truth): a sub-operation is Completed only when the Move Destination (C-MOVE)
        or the workstation itself (C-GET) answered Success for that instance, Warning
        when it answered a warning; everything else is Failed. An instance the survey
        said exists but the archive never delivered is Failed too, with its SOP
        Instance UID in the Failed SOP Instance UID List (PS3.4 C.4.2.1.4.2 and
        C.4.3.1.3.2). A retrieve where nothing arrived can therefore never end in
        Success.
Rule 2: ``final_status`` is the only place the final status is chosen (PS3.4
        C.4.2.1.5 for C-MOVE, C.4.3.1.4 for C-GET), see its docstring.
Rule 3: pure: no I/O, no threads; the relay feeds it and reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom import Dataset

from proxy.status import Status, category

MAX_FAILED_LIST = 4096    # UIDs in one response identifier (a 64-KiB-ish element at worst)

# The hint of a retrieve that found nothing anywhere (no archive failed): WADO-RS's 404.
NOTHING_TO_RETRIEVE = ("nothing to retrieve: no instance matched the identifier in the "
                       "route's archives")


@dataclass
class Tally:
    """Counts so far; ``expected`` is what the survey found (arrival order kept)."""

    expected: dict[str, None] = field(default_factory=dict)
    completed: int = 0
    warning: int = 0
    failed: int = 0
    failed_uids: list[str] = field(default_factory=list)
    done: set[str] = field(default_factory=set)
    upstream_total: int = 0           # the archive's own count (pending responses), if larger
    reasons: dict[str, int] = field(default_factory=dict)   # why sub-operations failed

    def expect(self, uids: list[str]) -> None:
        for uid in uids:
            self.expected.setdefault(uid, None)

    @property
    def total(self) -> int:
        """Number of sub-operations as far as known (the survey, or more if more came)."""
        extra = sum(1 for uid in self.done if uid not in self.expected)
        return max(len(self.expected) + extra, self.upstream_total)

    @property
    def processed(self) -> int:
        return self.completed + self.warning + self.failed

    @property
    def remaining(self) -> int:
        return max(self.total - self.processed, 0)

    def record(self, uid: str, status: int | None, reason: str | None = None) -> str:
        """Count one sub-operation outcome; returns completed, warning or failed."""
        self.done.add(uid)
        kind = category(status)
        if kind == "success":
            self.completed += 1
            return "completed"
        if kind == "warning":
            self.warning += 1
            return "warning"
        self.fail(uid, reason or f"status {'none' if status is None else hex(status)}")
        return "failed"

    def fail(self, uid: str, reason: str) -> None:
        self.done.add(uid)
        self.failed += 1
        if len(self.failed_uids) < MAX_FAILED_LIST:
            self.failed_uids.append(uid)
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def undelivered(self) -> list[str]:
        return [uid for uid in self.expected if uid not in self.done]

    def settle(self, reason: str) -> int:
        """At the end (not cancelled): every expected instance not delivered is Failed."""
        missing = self.undelivered()
        for uid in missing:
            self.fail(uid, reason)
        return len(missing)

    def settle_unlisted(self, reason: str) -> int:
        """Sub-operations the archive counted but nobody could name: Failed, without UIDs."""
        missing = self.remaining
        self.failed += missing
        if missing:
            self.reasons[reason] = self.reasons.get(reason, 0) + missing
        return missing

    def details(self) -> dict[str, int]:
        return {"completed": self.completed, "failed": self.failed, "warning": self.warning}


def final_status(tally: Tally, *, cancelled: bool, upstream_failure: str | None,
                 sink_failure: str | None) -> tuple[int, str | None]:
    """The final status and, when it is not Success, a hint saying why.

    - C-CANCEL from the workstation: Cancel (0xFE00, PS3.4 C.4.2.1.5).
    - Nothing at all to report (0 completed, failed, warning): 0xC000, Unable to
      process, with why (nothing matched, or an archive could not be asked) — a
      workstation must never hear "Success" when nothing arrived.
    - No sub-operation failed or warned: Success — unless an archive failed and nothing
      at all was retrieved (then 0xC000, Unable to process).
    - Some completed (or warned) and some failed, or only warnings: 0xB000, Warning:
      sub-operations complete, one or more failures or warnings.
    - Nothing delivered: 0xA702 (Refused: out of resources, unable to perform
      sub-operations) when the destination side failed (unreachable, every instance
      refused); 0xC000 (Unable to process) when the archive side did.
    """
    if cancelled:
        return Status.CANCEL, None
    if tally.completed == tally.failed == tally.warning == 0:
        # "Success, 0 sub-operations" is what a workstation hears as "it worked"
        # while nothing arrived; the proxy never says that (0xC000, with why).
        return Status.UNABLE_TO_PROCESS, upstream_failure or NOTHING_TO_RETRIEVE
    if tally.failed == 0 and tally.warning == 0:
        if upstream_failure and tally.completed == 0:
            return Status.UNABLE_TO_PROCESS, upstream_failure
        return Status.SUCCESS, None
    if tally.completed + tally.warning > 0:
        why = sink_failure or upstream_failure or _top_reason(tally)
        return Status.WARNING_SUBOPS_FAILED, why
    if sink_failure or not upstream_failure:
        return Status.REFUSED_OUT_OF_RESOURCES_SUBOPS, sink_failure or _top_reason(tally)
    return Status.UNABLE_TO_PROCESS, upstream_failure


def _top_reason(tally: Tally) -> str | None:
    if not tally.reasons:
        return None
    reason, count = max(tally.reasons.items(), key=lambda kv: kv[1])
    return f"{count} failed: {reason}"


def response(status: int, tally: Tally, comment: str | None = None,
             remaining: bool = False) -> Dataset:
    """A C-MOVE/C-GET response (status dataset) with the counts of ``tally``.

    Remaining is sent in pending and Cancel responses only (PS3.4 C.4.2.1.6);
    the Failed SOP Instance UID List whenever a final status is not Success.
    """
    ds = Dataset()
    ds.Status = int(status)
    if remaining:
        ds.NumberOfRemainingSuboperations = tally.remaining
    ds.NumberOfCompletedSuboperations = tally.completed
    ds.NumberOfFailedSuboperations = tally.failed
    ds.NumberOfWarningSuboperations = tally.warning
    if status not in (Status.SUCCESS, Status.PENDING) and (tally.failed_uids or tally.failed):
        ds.FailedSOPInstanceUIDList = list(tally.failed_uids)
    if comment and category(status) == "failure":
        ds.ErrorComment = comment[:64]
    return ds
