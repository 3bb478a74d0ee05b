"""Instances pulled from an archive, waiting for their C-STORE onward: a memory window, then files.

Rule 1 (bounded memory): an instance received from an archive is kept as received (the
        data set in its negotiated transfer syntax, never decoded) in memory while the
        instances held there stay within ``memory_bytes`` (``[spool]
        retrieve_memory_bytes``). When the window is full the next instance waits
        for room — the archive is paced by the destination, as a direct C-MOVE is —
        but once the window has been full for ``spill_after`` seconds (``[spool]
        retrieve_spill_after``: the destination has fallen behind, or stalled) the
        instances go to files under ``[spool] dir``/retrieve/<retrieve>/ until room
        comes back, so the archive is never held hostage; an instance larger than
        the window goes to a file mid-instance. (Spilling when the destination is
        merely a little slower would cost a write and a read of every byte and
        slow the destination leg itself: measured, 0.60 of direct instead of 1.1.)
        The proxy's resident memory does not depend on the study size. Each
        reception reserves the whole free window and gives back what it did not
        use, so the bound holds with a receiving and a sending thread.
Rule 2 (bounded disk, back-pressure): when the files waiting exceed ``max_bytes``
        (``[spool] retrieve_max_bytes``) the receiving thread waits — the archive's
        next C-STORE is answered late — until the destination catches up.
Rule 3: an instance already received in this retrieve (a second archive holding
        it too) is answered Success and dropped, so no destination gets it twice.
Rule 4: a file leaves the buffer by ``done`` (forwarded: deleted) or ``close``
        (everything left deleted, the directory removed); after ``close`` new
        instances are refused with 0xA700 (Refused: Out of Resources, PS3.4 B.2.3).
        pynetdicom's chunked-receive temp files are moved in with ``os.replace``
        before the handler returns (so no temp file outlives it).
"""

from __future__ import annotations

import os
import shutil
import struct
import threading
import time
from collections import deque
from pathlib import Path

from pydicom.filereader import _read_file_meta_info, read_preamble

from proxy.part10 import file_meta
from proxy.retrieve.reception import Buffered, Reception
from proxy.session import Request
from proxy.status import Status


class InstanceBuffer:
    """A FIFO of received instances backed by files; one producer side, one consumer."""

    def __init__(self, directory: Path, max_bytes: int, memory_bytes: int = 0,
                 spill_after: float = 1.0) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.memory_bytes = memory_bytes       # Rule 1: the in-memory window ...
        self.spill_after = spill_after         # ... full for this long: spill to files
        self._full_since: float | None = None
        self.memory_used = 0                   # reserved by receptions and queued items
        self.peak_memory = 0
        self.spilled = 0                       # instances that went to a file (Rule 1)
        self.last_size = 0                     # of the last instance held in memory
        directory.mkdir(parents=True, exist_ok=True)
        self._cond = threading.Condition()
        self._queue: deque[Buffered] = deque()
        self._seen: set[str] = set()
        self._seq = 0
        self._closed = False
        self._finished = False
        self.pending_bytes = 0
        self.peak_bytes = 0
        self.peak_items = 0
        self.received = 0
        self.duplicates = 0
        self.waited = 0           # instances that had to wait for room (Rule 2)

    # -- producer side ---------------------------------------------------------------

    def accept(self, event: Request, archive: str) -> int:
        """The body of the C-STORE handler for instances an archive sends."""
        uid = event.sop_instance
        received = event.dataset_path
        try:
            slot = self._reserve(uid)
            if isinstance(slot, int):
                return slot
            size = _store(event, received, slot, uid)
            meta = _meta_length(slot)
            return self._commit(Buffered(slot, uid, event.sop_class, event.transfer_syntax,
                                         size, archive, meta))
        except OSError:
            self._forget(uid)
            return Status.REFUSED_OUT_OF_RESOURCES
        finally:
            if received is not None:
                received.unlink(missing_ok=True)   # not moved in: never leave it behind

    def receive(self, uid: str, sop_class: str, transfer_syntax: str,
                archive: str) -> Reception:
        """Where the fragments of one incoming C-STORE go (the lean C-GET path, Rule 1).

        May wait for room (Rule 2); the caller writes every fragment to the reception,
        then takes its ``finish()`` status for the C-STORE response.
        """
        slot = self._reserve(uid)
        if isinstance(slot, int):
            return Reception(self, None, uid, sop_class, transfer_syntax, archive, slot)
        with self._cond:
            self._wait_for_memory()
            share = max(0, self.memory_bytes - self.memory_used)
            self.memory_used += share
        return Reception(self, slot, uid, sop_class, transfer_syntax, archive, memory=share)

    def _wait_for_memory(self) -> None:
        """Rule 1: wait for room in the window while it has been full < ``spill_after``."""
        need = max(self.last_size, 1)
        while (self.memory_bytes and self.memory_bytes - self.memory_used < need
               and not self._closed):
            now = time.monotonic()
            if self._full_since is None:
                self._full_since = now
            left = self._full_since + self.spill_after - now
            if left <= 0:
                return                   # fallen behind for long enough: spill
            self._cond.wait(left)
        self._full_since = None

    def refuse(self, uid: str, sop_class: str, status: int) -> Reception:
        """A reception that drops the data and answers ``status``."""
        return Reception(self, None, uid, sop_class, "", "", status)

    def _reserve(self, uid: str) -> Path | int:
        """A file path for a new instance, or the status that answers it without one."""
        with self._cond:
            if self._closed:
                return Status.REFUSED_OUT_OF_RESOURCES
            if uid in self._seen:
                self.duplicates += 1
                return Status.SUCCESS
            if self.pending_bytes > self.max_bytes:
                self.waited += 1
            while self.pending_bytes > self.max_bytes and not self._closed:
                self._cond.wait(0.2)
            if self._closed:
                return Status.REFUSED_OUT_OF_RESOURCES
            self._seen.add(uid)
            self._seq += 1
            return self.directory / f"{self._seq:07d}.dcm"

    def _release_memory(self, share: int) -> None:
        with self._cond:
            self.memory_used -= share
            self._cond.notify_all()

    def _commit(self, item: Buffered, share: int = 0) -> int:
        """Queue ``item``; an in-memory one keeps its size of the reception's ``share``."""
        with self._cond:
            self.memory_used -= share - (item.size if item.data is not None else 0)
            self.peak_memory = max(self.peak_memory, self.memory_used)
            if self._closed:
                self._drop(item)
                return Status.REFUSED_OUT_OF_RESOURCES
            self._queue.append(item)
            self.received += 1
            self.pending_bytes += item.size
            self.peak_bytes = max(self.peak_bytes, self.pending_bytes)
            self.peak_items = max(self.peak_items, len(self._queue))
            self._cond.notify_all()
        return Status.SUCCESS

    def _forget(self, uid: str) -> None:
        with self._cond:
            self._seen.discard(uid)

    def finish(self) -> None:
        """The producers are done: ``take`` returns None once the queue is empty."""
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    def has(self, uid: str) -> bool:
        with self._cond:
            return uid in self._seen

    # -- consumer side -----------------------------------------------------------------

    def take(self, timeout: float) -> Buffered | None:
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._finished, timeout)
            return self._queue.popleft() if self._queue else None

    @property
    def drained(self) -> bool:
        with self._cond:
            return self._finished and not self._queue

    def done(self, item: Buffered) -> None:
        with self._cond:
            self._drop(item)
            self.pending_bytes -= item.size
            self._cond.notify_all()

    def _drop(self, item: Buffered) -> None:
        if item.path is not None:
            item.path.unlink(missing_ok=True)
        else:
            self.memory_used -= item.size

    def close(self) -> None:
        with self._cond:
            self._closed = True
            left, self._queue = list(self._queue), deque()
            self._cond.notify_all()
        with self._cond:
            for item in left:
                self._drop(item)
        shutil.rmtree(self.directory, ignore_errors=True)

    def stats(self) -> dict[str, int]:
        return {"received": self.received, "duplicates": self.duplicates,
                "buffer_peak_bytes": self.peak_bytes, "buffer_peak_instances": self.peak_items,
                "buffer_peak_memory_bytes": self.peak_memory, "buffer_spilled": self.spilled,
                "buffer_waits": self.waited}


def _meta_length(path: Path) -> int:
    """Bytes before the data set in a Part-10 file whose meta group has a group length."""
    with open(path, "rb") as f:
        head = f.read(144)
    if len(head) == 144 and head[128:132] == b"DICM" and head[132:136] == b"\x02\x00\x00\x00":
        length: int = struct.unpack_from("<I", head, 140)[0]
        return 144 + length
    with open(path, "rb") as f:               # no group length: let pydicom walk the meta
        read_preamble(f, False)
        _read_file_meta_info(f)
        return f.tell()


def _store(event: Request, received: Path | None, path: Path, uid: str) -> int:
    if received is not None:
        try:
            os.replace(received, path)
        except OSError:             # another filesystem: copy, then the caller unlinks
            shutil.copyfile(received, path)
        return path.stat().st_size
    # In memory: write preamble, file meta and the data set exactly as received.
    meta = file_meta(event.sop_class, uid, event.transfer_syntax)
    data = event.data or b""
    with open(path, "wb") as out:
        out.write(meta)
        out.write(data)
    return len(meta) + len(data)
