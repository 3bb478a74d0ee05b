"""proxy.workflow.journal: per-archive FIFO on disk, durable across reopen, dead letters."""

from __future__ import annotations

import json
from pathlib import Path

from proxy.workflow.journal import KNOWN_LIMIT, Journal, Message, decode, encode

EXPLICIT = "1.2.840.10008.1.2.1"
MPPS = "1.2.840.10008.3.1.2.3.3"


def msg(op: str, uid: str, data: bytes | None = b"\x08\x00\x20\x00DA\x08\x0020240101") -> Message:
    return Message(op, MPPS, uid, EXPLICIT, data, calling_ae="QR_PROXY")


def drain(journal: Journal, archive: str) -> list[Message]:
    out = []
    while (head := journal.head(archive)) is not None:
        out.append(journal.read(archive, head).message)
        journal.delivered(archive, head)
    return out


def test_a_message_round_trips_with_its_bytes_exactly() -> None:
    for m in (msg("N-CREATE", "1.2.3"), msg("N-SET", "1.2.3", None),
              Message("N-SET", MPPS, "1.2", EXPLICIT, b"\n\x00raw\n", maybe_received=True)):
        assert decode(encode(m)) == m


def test_each_archive_is_fifo_and_independent(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    sent = [msg("N-CREATE", "1.1"), msg("N-SET", "1.1"), msg("N-CREATE", "1.2"),
            msg("N-SET", "1.1")]
    for m in sent:
        journal.append("ris", m)
    journal.append("other", msg("N-CREATE", "9.9"))
    assert journal.pending("ris") == 4 and journal.archives() == ["other", "ris"]
    assert drain(journal, "ris") == sent
    assert journal.pending("other") == 1 and journal.archives() == ["other"]


def test_pending_messages_survive_a_reopen_in_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    sent = [msg("N-CREATE", "1.1"), msg("N-SET", "1.1"), msg("N-SET", "1.1", b"x")]
    for m in sent:
        journal.append("ris/a b", m)                 # a name that is quoted on disk
    journal.know("ris/a b", "1.1")
    first = journal.head("ris/a b")
    assert first is not None
    journal.delivered("ris/a b", first)
    # A crash while writing leaves a .part file: never a pending message.
    pending_dir = next((tmp_path / "mpps").iterdir()) / "pending"
    (pending_dir / "99999999999999999999.msg.part").write_bytes(b"half")
    again = Journal(tmp_path)
    assert again.open() == {"ris/a b": 2}
    assert again.knows("ris/a b", "1.1") and not again.knows("ris/a b", "1.2")
    assert drain(again, "ris/a b") == sent[1:]
    assert not list(pending_dir.iterdir())
    # New ids never go below the ones already on disk (arrival order across restarts).
    later = again.append("ris/a b", msg("N-SET", "1.1"))
    assert int(later.id) > int(first)


def test_a_dead_letter_leaves_the_queue_with_its_reason(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    created = journal.append("ris", msg("N-CREATE", "1.1"))
    journal.append("ris", msg("N-SET", "1.1"))
    path = journal.dead_letter("ris", created.id, {"status": "0x0106", "reason": "refused"})
    assert path.exists() and path.read_bytes() == encode(created.message)
    note = json.loads(path.with_suffix(".json").read_text())
    assert note["status"] == "0x0106" and note["archive"] == "ris" and note["id"] == created.id
    assert journal.pending("ris") == 1 and journal.dead("ris") == 1
    again = Journal(tmp_path)
    assert again.open() == {"ris": 1} and again.dead("ris") == 1
    assert [m.operation for m in drain(again, "ris")] == ["N-SET"]


def test_the_known_index_is_bounded(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    path = tmp_path / "mpps" / "ris" / "known"
    path.parent.mkdir(parents=True)
    path.write_text("".join(f"1.{i}\n" for i in range(2 * KNOWN_LIMIT + 10)))
    again = Journal(tmp_path)
    again.open()
    assert again.knows("ris", f"1.{2 * KNOWN_LIMIT + 9}") and not again.knows("ris", "1.0")
    assert len(path.read_text().split()) == KNOWN_LIMIT       # compacted
