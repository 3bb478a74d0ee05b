"""The MPPS journal: per archive, the N-CREATEs and N-SETs still to deliver, on disk, FIFO.

Layout under ``[spool] dir``/mpps (the rest of ``[spool] dir`` belongs to other subsystems):

    <archive>/pending/<id>.msg    one message still to deliver to that archive
    <archive>/dead/<id>.msg       refused for good by that archive ...
    <archive>/dead/<id>.json      ... and why (status, reason, hint, when)
    <archive>/known               MPPS instances the archive got an N-CREATE for (one UID a line)

A ``.msg`` file is one JSON line (operation, SOP class and instance UID, transfer syntax,
calling AE title, whether it may already have reached the archive) and then the data set
bytes exactly as the modality sent them.

Rule 1: ``append`` makes a message durable before the caller may answer Success: the
        file is written as ``.part``, fsynced, renamed into ``pending/``, the directory
        fsynced. A crash before that leaves at most a ``.part`` file, removed at ``open``.
Rule 2: ids are arrival order: nanoseconds since the epoch, strictly increasing across
        restarts (never below the largest id on disk); each archive's messages are
        delivered in id order, so an N-CREATE goes before the N-SETs that follow it.
Rule 3: ``know`` adds an instance UID to the archive's durable index (appended, fsynced);
        the index keeps the last ``KNOWN_LIMIT`` UIDs and is compacted at ``open`` when
        its file holds twice that.
Rule 4: file I/O and bookkeeping only: no DICOM decisions, no events (``delivery`` and
        the handler emit them).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from proxy.store.spool import fsync_dir

SUFFIX = ".msg"
KNOWN_LIMIT = 100_000


def write_durably(path: Path, body: bytes) -> None:
    """``body`` at ``path``, surviving a crash once this returns (Rule 1): written as
    ``.part``, fsynced, renamed, the directory fsynced."""
    part = path.with_name(path.name + ".part")
    with open(part, "wb") as out:
        out.write(body)
        out.flush()
        os.fsync(out.fileno())
    os.replace(part, path)
    fsync_dir(path.parent)


class JournalError(OSError):
    """The journal directory cannot be used (created, written, scanned)."""


@dataclass(frozen=True)
class Message:
    """One N-CREATE or N-SET as the proxy keeps and sends it."""

    operation: str                    # "N-CREATE" or "N-SET"
    sop_class: str
    sop_instance: str
    transfer_syntax: str              # the data set's, as received
    data: bytes | None
    calling_ae: str = ""              # the calling AE title to deliver it with
    maybe_received: bool = False      # an attempt sent it and got no answer


@dataclass(frozen=True)
class Entry:
    id: str
    archive: str
    message: Message

    @property
    def received_at(self) -> float:
        return int(self.id) / 1e9


def encode(message: Message) -> bytes:
    head = {k: v for k, v in asdict(message).items() if k != "data"}
    head["data_set"] = message.data is not None
    return json.dumps(head, separators=(",", ":")).encode() + b"\n" + (message.data or b"")


def decode(raw: bytes) -> Message:
    line, sep, data = raw.partition(b"\n")
    if not sep:
        raise ValueError("no header line")
    head = json.loads(line)
    if not isinstance(head, dict) or head.get("operation") not in ("N-CREATE", "N-SET"):
        raise ValueError("not an MPPS journal message")
    return Message(str(head["operation"]), str(head["sop_class"]), str(head["sop_instance"]),
                   str(head["transfer_syntax"]), data if head.get("data_set") else None,
                   str(head.get("calling_ae", "")), bool(head.get("maybe_received", False)))


class Journal:
    """The on-disk queues and known-instance indexes; safe to use from many threads."""

    def __init__(self, root: Path) -> None:
        self.root = root / "mpps"
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)
        self._queues: dict[str, list[str]] = {}
        self._dead: dict[str, int] = {}
        self._known: dict[str, OrderedDict[str, None]] = {}
        self._last_id = 0
        self._made: set[Path] = set()

    # -- start -----------------------------------------------------------------------

    def open(self) -> dict[str, int]:
        """Create the root, drop ``.part`` leftovers, index pending, dead and known;
        the pending count per archive."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with self._lock:
                for archive_dir in sorted(self.root.iterdir()):
                    if archive_dir.is_dir():
                        self._scan(unquote(archive_dir.name), archive_dir)
        except OSError as exc:
            raise JournalError(f"cannot use MPPS journal directory {self.root}: "
                               f"{exc.strerror or exc}") from exc
        return {name: len(q) for name, q in self._queues.items() if q}

    def _scan(self, archive: str, where: Path) -> None:
        ids: list[str] = []
        for kind in ("pending", "dead"):
            folder = where / kind
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if path.name.endswith(".part"):
                    path.unlink(missing_ok=True)           # never acknowledged (Rule 1)
                elif path.suffix == SUFFIX and path.stem.isdigit():
                    self._last_id = max(self._last_id, int(path.stem))
                    if kind == "pending":
                        ids.append(path.stem)
                    else:
                        self._dead[archive] = self._dead.get(archive, 0) + 1
        self._queues[archive] = sorted(ids)
        known = self._known[archive] = OrderedDict()
        path = where / "known"
        if path.exists():
            lines = [u for u in path.read_text("ascii", "replace").split("\n") if u]
            for uid in lines:
                known[uid] = None
                known.move_to_end(uid)
            while len(known) > KNOWN_LIMIT:
                known.popitem(last=False)
            if len(lines) > 2 * KNOWN_LIMIT:                 # Rule 3: compact
                self._write_durably(path, "".join(f"{u}\n" for u in known).encode())

    # -- writing -----------------------------------------------------------------------

    def append(self, archive: str, message: Message) -> Entry:
        """Make ``message`` durable at the end of ``archive``'s queue (Rules 1, 2)."""
        with self._lock:
            entry_id = self._next_id()
        path = self._dir(archive, "pending") / f"{entry_id}{SUFFIX}"
        self._write_durably(path, encode(message))
        with self._lock:
            queue = self._queues.setdefault(archive, [])
            queue.append(entry_id)
            queue.sort()               # ids are taken in order; a racing writer may finish first
            self.changed.notify_all()
        return Entry(entry_id, archive, message)

    def know(self, archive: str, sop_instance: str) -> None:
        """Remember that ``archive`` has (or will get first) this instance's N-CREATE."""
        with self._lock:
            known = self._known.setdefault(archive, OrderedDict())
            if sop_instance in known:
                return
            known[sop_instance] = None
            while len(known) > KNOWN_LIMIT:
                known.popitem(last=False)
        folder = self._dir(archive, None)
        with open(folder / "known", "ab") as out:
            out.write(sop_instance.encode("ascii", "replace") + b"\n")
            out.flush()
            os.fsync(out.fileno())

    def knows(self, archive: str, sop_instance: str) -> bool:
        with self._lock:
            return sop_instance in self._known.get(archive, {})

    def _write_durably(self, path: Path, body: bytes) -> None:
        write_durably(path, body)

    # -- delivering --------------------------------------------------------------------

    def pending(self, archive: str) -> int:
        with self._lock:
            return len(self._queues.get(archive, ()))

    def head(self, archive: str) -> str | None:
        """The id of the oldest message pending for ``archive``."""
        with self._lock:
            queue = self._queues.get(archive)
            return queue[0] if queue else None

    def read(self, archive: str, entry_id: str) -> Entry:
        """The pending message ``entry_id``; ValueError/OSError when it cannot be read."""
        raw = (self._dir(archive, "pending") / f"{entry_id}{SUFFIX}").read_bytes()
        return Entry(entry_id, archive, decode(raw))

    def delivered(self, archive: str, entry_id: str) -> None:
        """The archive answered: the message leaves the queue."""
        folder = self._dir(archive, "pending")
        (folder / f"{entry_id}{SUFFIX}").unlink(missing_ok=True)
        fsync_dir(folder)
        self._settle(archive, entry_id)

    def dead_letter(self, archive: str, entry_id: str, record: dict[str, Any]) -> Path:
        """Move the message to ``dead/`` next to ``record`` (JSON); its new path."""
        dead = self._dir(archive, "dead")
        note = dead / f"{entry_id}.json"
        body = {"archive": archive, "id": entry_id, "dead_at": time.time(), **record}
        self._write_durably(note, json.dumps(body, indent=2, default=str).encode())
        target = dead / f"{entry_id}{SUFFIX}"
        os.replace(self._dir(archive, "pending") / f"{entry_id}{SUFFIX}", target)
        fsync_dir(dead)
        with self._lock:
            self._dead[archive] = self._dead.get(archive, 0) + 1
        self._settle(archive, entry_id)
        return target

    def _settle(self, archive: str, entry_id: str) -> None:
        with self._lock:
            queue = self._queues.get(archive, [])
            if entry_id in queue:
                queue.remove(entry_id)
            self.changed.notify_all()

    def wait(self, timeout: float) -> None:
        """Block until something changes (or ``timeout``)."""
        with self._lock:
            self.changed.wait(timeout)

    # -- state -------------------------------------------------------------------------

    def archives(self) -> list[str]:
        """Every archive with messages pending."""
        with self._lock:
            return sorted(name for name, queue in self._queues.items() if queue)

    def dead(self, archive: str) -> int:
        with self._lock:
            return self._dead.get(archive, 0)

    def _next_id(self) -> str:
        self._last_id = max(time.time_ns(), self._last_id + 1)
        return f"{self._last_id:020d}"

    def _dir(self, archive: str, kind: str | None) -> Path:
        folder = self.root / quote(archive, safe="")
        if kind is not None:
            folder = folder / kind
        if folder not in self._made:
            for level in (folder.parent, folder) if kind is not None else (folder,):
                if not level.is_dir():
                    level.mkdir(exist_ok=True)
                    fsync_dir(level.parent)      # the new directory survives a crash too
            self._made.add(folder)
        return folder
