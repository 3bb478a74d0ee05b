"""The durable store-and-forward queue: every received instance is on disk before Success.

Layout under ``[spool] dir``/store (the rest of ``[spool] dir`` belongs to other subsystems):

    tmp/                          instances being received; cleared at every start
    free/                         delivered instances' files, kept to receive new ones
                                  into (Rule 6); cleared at every start
    pending/<archive>/<id>.dcm    one hard link per archive still to receive the instance
    dead/<archive>/<id>.dcm       refused for good by that archive ...
    dead/<archive>/<id>.json      ... and why (status, reason, hint, UIDs, when)

Rule 1: ``commit`` makes an instance durable before the caller may answer
        Success: fdatasync the file (its bytes and what reading them needs: POSIX
        fdatasync), ``os.replace`` it into the first archive's
        pending dir, hard-link it into the others', fsync those directories.
        A crash before that ends leaves at most links the modality was never
        told about (it resends; archives keep an instance once per SOP
        Instance UID), never a half-written file under ``pending/``.
Rule 2: ids are arrival order: nanoseconds since the epoch, strictly
        increasing across restarts (never below the largest id on disk);
        each archive's queue is forwarded in id order.
Rule 3: forwarding is at-least-once: an archive's link is removed only after
        the archive answered Success (or a warning), so a crash in between
        resends an instance the archive already keeps — once.
Rule 4: the spool never grows past ``max_bytes``: ``commit`` reserves the room
        under the lock or raises ``SpoolFull`` (``admits`` is the cheap pre-check);
        pending instances and dead letters count, an instance linked for
        several archives counts once.
Rule 5: this module does file I/O and bookkeeping only; it decides nothing
        about DICOM and emits no events (the drain and handler do).
Rule 6: files are recycled, as databases recycle their log segments. When an instance's
        last link is forwarded its file moves to ``free/`` (at most ``FREE_FILES`` files
        and ``FREE_BYTES`` bytes there, none larger than ``RECYCLE_MAX``; beyond that it
        is deleted), and ``reception`` hands it out for the next instance to be received
        into, overwritten from its start and cut to the new length (``Reception``).
        Overwriting blocks the file already has costs the filesystem no inode or block
        allocation, nothing is freed (no unlink, no discard), and the fdatasync of Rule 1
        then writes the data alone. What ``free/`` holds is never pending: it does not
        count against ``max_bytes``, and a start deletes it.
"""

from __future__ import annotations

import bisect
import json
import os
import struct
import tempfile
import threading
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from pydicom.filereader import read_file_meta_info

SUFFIX = ".dcm"
FREE_FILES = 256                    # files kept in free/ at most (Rule 6) ...
FREE_BYTES = 128 << 20              # ... and bytes: a burst's worth of CT or MR images
RECYCLE_MAX = 32 << 20              # a larger file is deleted, not kept


class SpoolError(OSError):
    """The spool directory cannot be used (created, written, scanned)."""


class SpoolFull(Exception):
    """One more instance would take the spool past ``max_bytes`` (Rule 4)."""


@dataclass(frozen=True)
class InstanceMeta:
    """What forwarding needs to know about an instance, without reading its data set."""

    sop_class: str
    sop_instance: str
    transfer_syntax: str
    sending_ae: str = ""              # the calling AE title it was received from
    receiving_ae: str = ""            # the proxy's AE title (a route) it was sent to


@dataclass
class Entry:
    """One received instance and the archives it is still pending for."""

    id: str
    size: int
    meta: InstanceMeta | None = None
    pending: set[str] = field(default_factory=set)
    dead: set[str] = field(default_factory=set)

    @property
    def received_at(self) -> float:
        return int(self.id) / 1e9


@dataclass(frozen=True)
class SpoolStats:
    pending: int                      # instances still to be forwarded to at least one archive
    pending_bytes: int
    oldest_age_s: float
    dead: int                         # (instance, archive) pairs in the dead-letter folder
    used_bytes: int                   # what counts against max_bytes


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """The file's bytes and what reading them needs on disk (fdatasync: not its times)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


class Reception:
    """A file open for writing one instance into (``Spool.reception``, Rule 6): a recycled
    one is overwritten from its start and ``close`` cuts it to what was written."""

    def __init__(self, fd: int, path: Path, capacity: int = 0) -> None:
        self.fd, self.path, self.capacity = fd, path, capacity
        self.written = 0

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            self.written += n
            view = view[n:]

    def close(self) -> None:
        """Cut what an earlier instance left beyond this one's end, then close."""
        try:
            if self.written < self.capacity:
                os.ftruncate(self.fd, self.written)
        finally:
            os.close(self.fd)


class Spool:
    """The on-disk queue and its in-memory index; safe to use from many threads."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root / "store"
        self.tmp = self.root / "tmp"
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)
        self._entries: dict[str, Entry] = {}
        self._queues: dict[str, list[str]] = {}
        self._used = 0                 # bytes counted against max_bytes
        self._pending = 0              # entries with at least one pending archive
        self._pending_bytes = 0
        self._dead = 0
        self._last_id = 0
        self._dirs: set[Path] = set()
        self.free = self.root / "free"
        self._free: list[tuple[Path, int]] = []   # recycled files and their sizes (Rule 6)
        self._free_bytes = 0

    # -- start ---------------------------------------------------------------------

    def open(self) -> SpoolStats:
        """Create the layout, clear ``tmp/``, index what is pending and dead."""
        try:
            for d in (self.tmp, self.free, self.root / "pending", self.root / "dead"):
                d.mkdir(parents=True, exist_ok=True)
            for folder in (self.tmp, self.free):  # receptions never acknowledged (Rule 1)
                for leftover in folder.iterdir():  # and files kept for reuse (Rule 6)
                    leftover.unlink(missing_ok=True)
            with self._lock:
                self._scan("pending")
                self._scan("dead")
                for queue in self._queues.values():
                    queue.sort()
        except OSError as exc:
            raise SpoolError(f"cannot use spool directory {self.root}: "
                             f"{exc.strerror or exc}") from exc
        return self.stats()

    def _scan(self, kind: str) -> None:
        for archive_dir in sorted((self.root / kind).iterdir()):
            if not archive_dir.is_dir():
                continue
            archive = unquote(archive_dir.name)
            for path in archive_dir.iterdir():
                if path.suffix != SUFFIX or not path.stem.isdigit():
                    continue
                entry = self._entries.get(path.stem)
                if entry is None:
                    entry = self._entries[path.stem] = Entry(path.stem, path.stat().st_size)
                    self._used += entry.size
                    self._last_id = max(self._last_id, int(path.stem))
                if kind == "pending":
                    if not entry.pending:
                        self._pending += 1
                        self._pending_bytes += entry.size
                    entry.pending.add(archive)
                    self._queues.setdefault(archive, []).append(entry.id)
                else:
                    entry.dead.add(archive)
                    self._dead += 1

    # -- receiving -------------------------------------------------------------------

    def admits(self, size: int) -> bool:
        """Whether an instance of ``size`` bytes still fits under ``max_bytes`` (Rule 4)."""
        with self._lock:
            return self._used + size <= self.max_bytes

    def reception(self) -> Reception:
        """A file to receive an instance into: a recycled one when ``free/`` has one
        (Rule 6), else a new one in ``tmp/``. ``commit`` takes it from either."""
        while True:
            with self._lock:
                if not self._free:
                    break
                path, size = self._free.pop()
                self._free_bytes -= size
            try:
                return Reception(os.open(path, os.O_WRONLY), path, size)
            except OSError:
                continue                   # removed by hand meanwhile: the next one
        fd, name = tempfile.mkstemp(prefix="rx-", suffix=SUFFIX, dir=self.tmp)
        return Reception(fd, Path(name))

    def new_temp_path(self) -> Path:
        with self._lock:
            return self.tmp / f"in-{self._next_id()}{SUFFIX}"

    def commit(self, source: Path, archives: Sequence[str], meta: InstanceMeta) -> Entry:
        """Make the file at ``source`` (in ``tmp/``) durable and pending for ``archives``.

        When this returns, the instance survives a crash (Rule 1). ``source`` is
        moved, not copied. Raises ``SpoolFull`` (nothing moved) past ``max_bytes``:
        the room is reserved under the lock, so concurrent commits cannot overshoot.
        """
        if not archives:
            raise ValueError("an instance must be pending for at least one archive")
        size = source.stat().st_size
        with self._lock:
            if self._used + size > self.max_bytes:
                raise SpoolFull(f"{self._used} + {size} bytes > max_bytes {self.max_bytes}")
            self._used += size
            entry_id = self._next_id()
        try:
            fsync_file(source)
            first, *others = archives
            os.replace(source, self._path("pending", first, entry_id, create=True))
            for name in others:
                self._link(self._path("pending", first, entry_id),
                           self._path("pending", name, entry_id, create=True))
            for name in archives:
                fsync_dir(self._dir("pending", name))
        except BaseException:
            # Links already made stay: the modality is told it failed and resends, and
            # archives keep an instance once (Rule 1); the next start counts them again.
            with self._lock:
                self._used -= size
            raise
        entry = Entry(entry_id, size, meta, set(archives))
        with self._lock:
            self._entries[entry_id] = entry
            self._pending += 1
            self._pending_bytes += size
            for name in archives:
                bisect.insort(self._queues.setdefault(name, []), entry_id)
            self.changed.notify_all()
        return entry

    def commit_bytes(self, chunks: Iterable[bytes], archives: Sequence[str],
                     meta: InstanceMeta) -> Entry:
        """Write ``chunks`` (a Part-10 file) to ``tmp/``, then ``commit`` it."""
        path = self.new_temp_path()
        try:
            with open(path, "xb") as out:
                for chunk in chunks:
                    out.write(chunk)
            return self.commit(path, archives, meta)
        finally:
            path.unlink(missing_ok=True)   # only still there if something failed

    def _link(self, existing: Path, new: Path) -> None:
        try:
            os.link(existing, new)
        except OSError:                    # a filesystem without hard links: copy instead
            tmp = new.with_suffix(".part")
            with open(existing, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, new)

    # -- forwarding -------------------------------------------------------------------

    def head(self, archive: str, limit: int, after: str | None = None) -> list[Entry]:
        """The oldest entries pending for ``archive`` (those after id ``after``)."""
        with self._lock:
            queue = self._queues.get(archive, [])
            start = bisect.bisect_right(queue, after) if after is not None else 0
            return [self._entries[i] for i in queue[start:start + limit]]

    def meta(self, archive: str, entry: Entry) -> InstanceMeta:
        """The entry's UIDs and AE titles, read from its file meta the first time (after a
        restart); the titles are there when ``proxy.store.receive`` received it (its Rule 5)."""
        if entry.meta is None:
            fm = read_file_meta_info(self.path(archive, entry))
            entry.meta = InstanceMeta(str(fm.MediaStorageSOPClassUID),
                                      str(fm.MediaStorageSOPInstanceUID),
                                      str(fm.TransferSyntaxUID),
                                      str(fm.get("SendingApplicationEntityTitle", "")),
                                      str(fm.get("ReceivingApplicationEntityTitle", "")))
        return entry.meta

    def holding(self, archive: str, uids: Collection[str]) -> set[str]:
        """Which of ``uids`` (SOP Instance UIDs) are still pending for ``archive``: what a
        Storage Commitment request waits for (``proxy.workflow.commit_policy`` Rule 2)."""
        with self._lock:
            entries = [self._entries[i] for i in self._queues.get(archive, ())]
        held: set[str] = set()
        for entry in entries:
            try:
                uid = self.meta(archive, entry).sop_instance
            except Exception:  # forwarded meanwhile (file gone) or unreadable: not held
                continue
            if uid in uids:
                held.add(uid)
        return held

    def path(self, archive: str, entry: Entry) -> Path:
        return self._path("pending", archive, entry.id)

    def forwarded(self, archive: str, entry: Entry) -> None:
        """The archive keeps the instance: drop its link (Rule 3); the last one's file is
        kept to receive another instance into (Rule 6)."""
        link = self._path("pending", archive, entry.id)
        if not (self._keep(archive, entry) and self._recycled(link, entry)):
            link.unlink(missing_ok=True)
        self._settle(archive, entry, dead=False)

    def _keep(self, archive: str, entry: Entry) -> bool:
        """Whether ``archive``'s link is the entry's last and ``free/`` has room for its
        file (Rule 6); the room is then reserved."""
        with self._lock:
            if entry.pending != {archive} or entry.dead or entry.size > RECYCLE_MAX \
                    or len(self._free) >= FREE_FILES \
                    or self._free_bytes + entry.size > FREE_BYTES:
                return False
            self._free_bytes += entry.size
            return True

    def _recycled(self, link: Path, entry: Entry) -> bool:
        """Move the file ``_keep`` made room for into ``free/``; False if it could not."""
        kept = self.free / f"{entry.id}{SUFFIX}"
        try:
            os.replace(link, kept)
        except OSError:
            with self._lock:
                self._free_bytes -= entry.size
            return False
        with self._lock:
            self._free.append((kept, entry.size))
        return True

    def dead_letter(self, archive: str, entry: Entry, record: dict[str, Any]) -> Path:
        """Move the archive's link to ``dead/`` next to ``record`` (JSON); return its path."""
        meta = entry.meta
        body = {"archive": archive, "instance": entry.id, "dead_at": time.time(),
                **(asdict(meta) if meta else {}), **record}
        note = self._path("dead", archive, entry.id, create=True).with_suffix(".json")
        part = note.with_suffix(".json.part")
        part.write_text(json.dumps(body, indent=2, default=str))
        os.replace(part, note)
        target = self._path("dead", archive, entry.id)
        os.replace(self._path("pending", archive, entry.id), target)
        fsync_dir(self._dir("dead", archive))
        self._settle(archive, entry, dead=True)
        return target

    def _settle(self, archive: str, entry: Entry, *, dead: bool) -> None:
        with self._lock:
            if archive not in entry.pending:
                return
            entry.pending.discard(archive)
            if not entry.pending:
                self._pending -= 1
                self._pending_bytes -= entry.size
            if dead:
                entry.dead.add(archive)
                self._dead += 1
            queue = self._queues.get(archive, [])
            i = bisect.bisect_left(queue, entry.id)
            if i < len(queue) and queue[i] == entry.id:
                del queue[i]
            if not entry.pending and not entry.dead:
                self._entries.pop(entry.id, None)
                self._used -= entry.size
            self.changed.notify_all()

    def wait(self, timeout: float) -> None:
        """Block until something changes (or ``timeout``)."""
        with self._lock:
            self.changed.wait(timeout)

    # -- state ---------------------------------------------------------------------

    def stats(self) -> SpoolStats:
        with self._lock:
            heads = [int(q[0]) for q in self._queues.values() if q]
            age = max(0.0, time.time() - min(heads) / 1e9) if heads else 0.0
            return SpoolStats(self._pending, self._pending_bytes, age, self._dead, self._used)

    def archives(self) -> list[str]:
        """Every archive that has (or had, since start) a pending queue."""
        with self._lock:
            return sorted(self._queues)

    # -- names ---------------------------------------------------------------------

    def _next_id(self) -> str:
        self._last_id = max(time.time_ns(), self._last_id + 1)
        return f"{self._last_id:020d}"

    def _dir(self, kind: str, archive: str) -> Path:
        return self.root / kind / quote(archive, safe="")

    def _path(self, kind: str, archive: str, entry_id: str, create: bool = False) -> Path:
        d = self._dir(kind, archive)
        if create and d not in self._dirs:
            d.mkdir(parents=True, exist_ok=True)
            self._dirs.add(d)
        return d / f"{entry_id}{SUFFIX}"


_GROUP_LENGTH = struct.Struct("<HH2sHL")     # (0002,0000) UL, Explicit VR Little Endian


def data_offset(head: bytes) -> int:
    """Where the data set starts after a Part-10 preamble and file meta (PS3.10 7.1)."""
    if head[128:132] != b"DICM" or len(head) < 144:
        return 0
    group, element, vr, _length, value = _GROUP_LENGTH.unpack_from(head, 132)
    if (group, element, vr) != (0x0002, 0x0000, b"UL"):
        raise ValueError("file meta without (0002,0000) File Meta Information Group Length")
    return 144 + int(value)
