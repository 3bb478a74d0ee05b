"""The Storage Commitment journal: the commitments the proxy still owes a modality, on disk.

Layout under ``[spool] dir``/commitment (the rest of ``[spool] dir`` belongs to others):

    <id>.json            one commitment: its state and what it needs (JSON)
    <id>.action          the N-ACTION's Action Information, as the modality sent it
    <id>.report          the archive's Event Information, as the archive sent it
    dead/<id>.*          a report that could not be delivered, and why (<id>.why.json)

Rule 1: a commitment's files are written durably (``journal.write_durably``: fsync, rename,
        fsync the directory) before the caller answers: the ``.action`` before the
        ``.json`` naming it, the ``.report`` before the ``.json`` saying ``reported``; the
        ``.json`` is the commit point. ``open`` removes ``.part`` files and data files
        no ``.json`` names (never acknowledged), and moves a record it cannot read to
        ``dead/`` (``unreadable`` says which), so one bad file never stops the proxy.
Rule 2: states move forward only: ``waiting`` (the spool still holds instances it
        references, or the archive has not accepted it yet), ``forwarded`` (the archive
        answered the N-ACTION Success; its report is awaited), ``reported`` (the report
        awaits delivery to the modality). A report may arrive in any earlier state: an
        archive may answer on another association before the proxy has read its
        N-ACTION-RSP.
Rule 3: at ``open`` a ``forwarded`` commitment is ``waiting`` again: a report the archive
        sent while the proxy was down is lost, so the N-ACTION is sent again with the
        same Transaction UID (the archive answers it again, PS3.4 J.3.2).
Rule 4: one pending commitment per Transaction UID (``add`` of a known one returns it:
        a modality repeating its N-ACTION).
Rule 5: file I/O and bookkeeping only: no DICOM decisions, no events.
Rule 6: one writer at a time (``_writing``): a record's change in memory and its files are
        written together, so two threads moving one commitment (the archive's report
        arriving while the N-ACTION-RSP is being recorded) never write one ``.part`` at
        once, and the ``.json`` on disk is always the latest state. Readers only take
        ``_lock``; they never wait for an fsync.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from proxy.store.spool import fsync_dir
from proxy.workflow.journal import JournalError, write_durably

WAITING, FORWARDED, REPORTED = "waiting", "forwarded", "reported"
_ORDER = {WAITING: 0, FORWARDED: 1, REPORTED: 2}


@dataclass(frozen=True)
class Commitment:
    """One Storage Commitment request on its way (Rule 2)."""

    id: str
    transaction_uid: str
    archive: str                      # the route's commit_to
    modality: str                     # the N-ACTION's calling AE title: the report goes there
    route: str                        # the called AE title it came in on
    syntax: str                       # the Action Information's transfer syntax
    instances: tuple[str, ...]        # its Referenced SOP Instance UIDs
    state: str = WAITING
    event_type: int | None = None     # the report's (1: all committed, 2: failures)
    report_syntax: str = ""           # the Event Information's transfer syntax

    @property
    def received_at(self) -> float:
        return int(self.id) / 1e9


def _decode(raw: bytes) -> Commitment:
    body = json.loads(raw)
    if not isinstance(body, dict) or body.get("state") not in _ORDER:
        raise ValueError("not a commitment record")
    body["instances"] = tuple(str(u) for u in body.get("instances", ()))
    return Commitment(**body)


class CommitmentJournal:
    """Pending commitments on disk and in memory; safe to use from many threads."""

    def __init__(self, root: Path) -> None:
        self.root = root / "commitment"
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)
        self._writing = threading.RLock()          # Rule 6
        self._items: dict[str, Commitment] = {}
        self._dead = 0
        self._last_id = 0
        self.unreadable: list[str] = []      # records ``open`` moved to dead/ (Rule 1)

    # -- start -----------------------------------------------------------------------

    def open(self) -> dict[str, int]:
        """Create the root, drop leftovers, load pending commitments (Rules 1, 3); the
        pending count per archive."""
        try:
            (self.root / "dead").mkdir(parents=True, exist_ok=True)
            named: set[str] = set()
            for path in sorted(self.root.glob("*.json")):
                if not path.stem.isdigit():
                    continue                       # not a record (a reason moved back?)
                try:
                    item = _decode(path.read_bytes())
                except (OSError, ValueError, TypeError) as exc:
                    self.unreadable.append(f"{path.name}: {type(exc).__name__}: {exc}")
                    for data in self.root.glob(f"{path.stem}.*"):
                        os.replace(data, self.root / "dead" / data.name)
                    continue
                if item.state == FORWARDED:
                    item = replace(item, state=WAITING)         # Rule 3
                self._items[item.id] = item
                named.add(item.id)
                self._last_id = max(self._last_id, int(item.id))
            for path in self.root.iterdir():
                if path.is_file() and (path.name.endswith(".part")
                                       or path.name.split(".")[0] not in named):
                    path.unlink(missing_ok=True)
            self._dead = sum(1 for p in (self.root / "dead").glob("*.json")
                             if not p.name.endswith(".why.json"))
        except OSError as exc:
            raise JournalError(f"cannot use commitment journal directory {self.root}: "
                               f"{exc.strerror or exc}") from exc
        return self.counts()

    # -- writing -----------------------------------------------------------------------

    def add(self, item: Commitment, action: bytes | None) -> Commitment:
        """Keep a new commitment durably (Rule 1); a pending one with the same Transaction
        UID is returned instead (Rule 4). ``item.id`` is assigned here."""
        with self._writing:
            with self._lock:
                known = self._by_transaction(item.transaction_uid)
                if known is not None:
                    return known
                self._last_id = max(time.time_ns(), self._last_id + 1)
                item = replace(item, id=f"{self._last_id:020d}")
            if action is not None:
                write_durably(self._path(item.id, ".action"), action)
            self._save(item)
            with self._lock:
                self._items[item.id] = item
                self.changed.notify_all()
            return item

    def forwarded(self, item_id: str) -> bool:
        """The archive accepted the N-ACTION: ``waiting`` → ``forwarded`` (only from there)."""
        return self._advance(item_id, FORWARDED) is not None

    def reported(self, transaction_uid: str, event_type: int, syntax: str,
                 report: bytes | None) -> Commitment | None:
        """The archive's report for ``transaction_uid``, kept durably (Rule 1); None when no
        pending commitment has it. A second report for one already reported keeps the
        first."""
        with self._writing:
            with self._lock:
                item = self._by_transaction(transaction_uid)
            if item is None or item.state == REPORTED:
                return item
            write_durably(self._path(item.id, ".report"), report or b"")
            return self._advance(item.id, REPORTED, event_type=event_type,
                                 report_syntax=syntax)

    def _advance(self, item_id: str, state: str, **changes: Any) -> Commitment | None:
        with self._writing:
            with self._lock:
                item = self._items.get(item_id)
                if item is None or _ORDER[item.state] >= _ORDER[state]:
                    return None
                item = replace(item, state=state, **changes)
            self._save(item)
            with self._lock:          # in memory once on disk: readers see what is kept
                self._items[item_id] = item
                self.changed.notify_all()
            return item

    def _save(self, item: Commitment) -> None:
        body = asdict(item)
        body["instances"] = list(item.instances)
        write_durably(self._path(item.id, ".json"), json.dumps(body).encode())

    def done(self, item_id: str) -> None:
        """The modality has the report: the commitment's files go."""
        with self._writing:
            with self._lock:
                self._items.pop(item_id, None)
                self.changed.notify_all()
            self._forget(item_id)

    def _forget(self, item_id: str) -> None:
        self._path(item_id, ".json").unlink(missing_ok=True)     # the commit point first
        for suffix in (".action", ".report"):
            self._path(item_id, suffix).unlink(missing_ok=True)
        fsync_dir(self.root)

    def dead_letter(self, item_id: str, record: dict[str, Any]) -> Path:
        """Move the commitment to ``dead/`` with ``record`` (why); the record's path."""
        with self._writing:
            dead = self.root / "dead"
            note = dead / f"{item_id}.why.json"
            write_durably(note, json.dumps({"id": item_id, "dead_at": time.time(), **record},
                                           indent=2, default=str).encode())
            for suffix in (".action", ".report", ".json"):
                source = self._path(item_id, suffix)
                if source.exists():
                    os.replace(source, dead / source.name)
            fsync_dir(dead)
            fsync_dir(self.root)
            with self._lock:
                self._items.pop(item_id, None)
                self._dead += 1
                self.changed.notify_all()
            return note

    # -- reading -----------------------------------------------------------------------

    def action(self, item: Commitment) -> bytes | None:
        path = self._path(item.id, ".action")
        return path.read_bytes() if path.exists() else None

    def report(self, item: Commitment) -> bytes | None:
        data = self._path(item.id, ".report").read_bytes()
        return data or None

    def by_transaction(self, transaction_uid: str) -> Commitment | None:
        with self._lock:
            return self._by_transaction(transaction_uid)

    def _by_transaction(self, transaction_uid: str) -> Commitment | None:
        return next((i for i in self._items.values() if i.transaction_uid == transaction_uid),
                    None)

    def in_state(self, state: str, archive: str | None = None) -> list[Commitment]:
        """Pending commitments in ``state`` (for ``archive``), oldest first."""
        with self._lock:
            return sorted((i for i in self._items.values() if i.state == state
                           and (archive is None or i.archive == archive)), key=lambda i: i.id)

    def counts(self) -> dict[str, int]:
        """Pending commitments per archive."""
        with self._lock:
            out: dict[str, int] = {}
            for item in self._items.values():
                out[item.archive] = out.get(item.archive, 0) + 1
            return out

    def dead(self) -> int:
        with self._lock:
            return self._dead

    def wait(self, timeout: float) -> None:
        with self._lock:
            self.changed.wait(timeout)

    def _path(self, item_id: str, suffix: str) -> Path:
        return self.root / f"{item_id}{suffix}"
