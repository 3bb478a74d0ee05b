"""proxy.workflow.commitments: durable pending commitments, states forward only, restart."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

from proxy.workflow.commitments import (
    FORWARDED,
    REPORTED,
    WAITING,
    Commitment,
    CommitmentJournal,
)

EXPLICIT = "1.2.840.10008.1.2.1"
ACTION = b"\x08\x00\x95\x11\x04\x00" + b"9.8\x00"


def new(uid: str = "9.8", archive: str = "pacs") -> Commitment:
    return Commitment("", uid, archive, "CT_1", "ROUTE", EXPLICIT, ("1.1", "1.2"))


def opened(root: Path) -> CommitmentJournal:
    journal = CommitmentJournal(root)
    journal.open()
    return journal


def test_a_request_is_kept_with_its_bytes_and_found_by_transaction(tmp_path: Path) -> None:
    journal = opened(tmp_path)
    item = journal.add(new(), ACTION)
    assert item.id and item.state == WAITING
    assert journal.action(item) == ACTION
    assert journal.by_transaction("9.8") == item and journal.by_transaction("7.7") is None
    assert journal.add(new(), b"other") == item          # a repeated N-ACTION: the same one
    assert journal.counts() == {"pacs": 1}
    assert journal.in_state(WAITING, "pacs") == [item] and journal.in_state(WAITING, "x") == []


def test_states_only_move_forward_and_a_report_may_come_early(tmp_path: Path) -> None:
    journal = opened(tmp_path)
    early = journal.add(new("1"), ACTION)
    late = journal.add(new("2"), ACTION)
    reported = journal.reported("1", 2, EXPLICIT, b"report-bytes")  # before forwarded
    assert reported is not None and reported.state == REPORTED and reported.event_type == 2
    assert not journal.forwarded(early.id)               # never back to forwarded
    assert journal.report(reported) == b"report-bytes"
    assert journal.forwarded(late.id)
    assert journal.in_state(FORWARDED) == [journal.by_transaction("2")]
    assert journal.reported("3", 1, EXPLICIT, b"") is None          # not ours
    again = journal.reported("1", 1, EXPLICIT, b"second")            # the first one stays
    assert again is not None and again.event_type == 2 and journal.report(again) == b"report-bytes"


def test_a_restart_keeps_everything_and_sends_forwarded_ones_again(tmp_path: Path) -> None:
    journal = opened(tmp_path)
    waiting = journal.add(new("1"), ACTION)
    forwarded = journal.add(new("2"), ACTION)
    journal.forwarded(forwarded.id)
    journal.add(new("3"), ACTION)
    journal.reported("3", 1, EXPLICIT, b"rep")
    (journal.root / "123.action").write_bytes(b"orphan")             # never acknowledged
    (journal.root / "124.json.part").write_bytes(b"{")
    again = opened(tmp_path)
    assert [i.transaction_uid for i in again.in_state(WAITING)] == ["1", "2"]  # Rule 3
    assert again.by_transaction("1") == waiting
    [rep] = again.in_state(REPORTED)
    assert again.report(rep) == b"rep" and again.action(rep) == ACTION
    assert not (journal.root / "123.action").exists()
    assert not (journal.root / "124.json.part").exists()
    assert again.add(new("4"), ACTION).id > rep.id                   # ids keep increasing


def test_done_and_dead_letters(tmp_path: Path) -> None:
    journal = opened(tmp_path)
    one = journal.add(new("1"), ACTION)
    two = journal.add(new("2"), ACTION)
    journal.reported("2", 1, EXPLICIT, b"rep")
    journal.done(one.id)
    assert not list(journal.root.glob(f"{one.id}.*"))
    note = journal.dead_letter(two.id, {"reason": "modality unknown"})
    assert json.loads(note.read_text())["reason"] == "modality unknown"
    assert (journal.root / "dead" / f"{two.id}.report").read_bytes() == b"rep"
    assert journal.counts() == {} and journal.dead() == 1
    assert opened(tmp_path).dead() == 1


def test_an_unreadable_record_goes_to_dead_letters_not_the_proxy(tmp_path: Path) -> None:
    journal = opened(tmp_path)
    item = journal.add(new("1"), ACTION)
    journal.add(new("2"), ACTION)
    (journal.root / f"{item.id}.json").write_bytes(b"{not json")
    again = opened(tmp_path)
    assert [i.transaction_uid for i in again.in_state(WAITING)] == ["2"]
    assert len(again.unreadable) == 1 and item.id in again.unreadable[0]
    assert (journal.root / "dead" / f"{item.id}.action").read_bytes() == ACTION


def test_a_report_racing_the_forwarded_mark_is_kept_on_disk(tmp_path: Path) -> None:
    """The archive's report (listener thread) and its N-ACTION-RSP (committer thread) move
    one commitment at once: neither fails, and the record on disk says reported."""
    journal = opened(tmp_path)
    items = [journal.add(new(str(n)), ACTION) for n in range(150)]
    failures: list[BaseException] = []

    def run(step: Callable[[], object], start: threading.Barrier) -> None:
        try:
            start.wait()
            step()
        except BaseException as exc:  # the test reports what the race raised
            failures.append(exc)

    for item in items:
        start = threading.Barrier(2)
        threads = [threading.Thread(target=run, args=(lambda i=item: journal.forwarded(i.id),
                                                       start)),
                   threading.Thread(target=run, args=(
                       lambda i=item: journal.reported(i.transaction_uid, 1, EXPLICIT, b"r"),
                       start))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
    assert {i.state for i in journal.in_state(REPORTED)} == {REPORTED}
    assert len(journal.in_state(REPORTED)) == len(items)
    again = opened(tmp_path)
    assert len(again.in_state(REPORTED)) == len(items)     # what is on disk is the latest
    assert list(tmp_path.glob("commitment/*.part")) == []
