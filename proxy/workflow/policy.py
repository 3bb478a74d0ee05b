"""What the proxy does with one MPPS message for one archive: pure decisions.

Rule 1: a message goes to the archive at once, while the modality waits, when nothing is
        queued for that archive; otherwise it is journaled behind what is (order: an
        N-CREATE before its N-SETs, everything FIFO per archive).
Rule 2: an N-SET for an instance the proxy does not know (its N-CREATE did not go through
        the proxy to that archive, and the archive never accepted an N-SET for it) always
        goes to the archive at once — no queued message concerns it — so the modality
        gets the archive's own answer (0x0112 No Such SOP Instance, PS3.4 F.7.2.2.2),
        never a made-up Success. If the archive cannot be reached it is refused with
        0x0110 (Processing failure, PS3.7 C.4.2), not journaled.
Rule 3: a message the archive did not answer (unreachable, timeout, abort) is journaled
        (Rule 2 aside) and the modality gets Success once it is on disk.
Rule 4: a journaled message the archive answers with success or a warning is delivered;
        a resource shortage (0xA7xx, 0x0213) or no answer is retried with backoff; any
        other failure is final: dead letter. An N-CREATE that may already have reached
        the archive (an earlier attempt got no answer) and now meets 0x0111 Duplicate SOP
        Instance was delivered by that attempt.
Rule 5: an instance becomes known to the proxy, per archive, when its N-CREATE is
        journaled or answered with success/warning, or an N-SET for it is.
"""

from __future__ import annotations

import enum

from proxy.status import Status, category


class Step(enum.Enum):
    FORWARD = "forwarded"             # sent at once; the modality gets the archive's answer
    JOURNAL = "journaled"             # kept on disk; the modality gets Success
    REFUSE = "refused"                # neither: the modality gets a failure


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD = "dead"


def first_step(operation: str, queue_empty: bool, known: bool) -> Step:
    """Rules 1, 2."""
    if operation == "N-SET" and not known:
        return Step.FORWARD
    return Step.FORWARD if queue_empty else Step.JOURNAL


def when_unanswered(operation: str, known: bool) -> Step:
    """Rules 2, 3."""
    return Step.REFUSE if operation == "N-SET" and not known else Step.JOURNAL


def verdict(operation: str, status: int | None, maybe_received: bool) -> Verdict:
    """Rule 4: a journaled message's fate after one delivery attempt."""
    if status is None:
        return Verdict.RETRY
    if category(status) in ("success", "warning"):
        return Verdict.DELIVERED
    if (operation == "N-CREATE" and status == Status.DUPLICATE_SOP_INSTANCE
            and maybe_received):
        return Verdict.DELIVERED
    if (status == Status.RESOURCE_LIMITATION                        # PS3.7 Annex C
            or status >> 8 == Status.REFUSED_OUT_OF_RESOURCES >> 8):  # the 0xA7xx family
        return Verdict.RETRY
    return Verdict.DEAD


def remembers(status: int) -> bool:
    """Rule 5: whether an archive's answer makes the instance known to it."""
    return category(status) in ("success", "warning")
