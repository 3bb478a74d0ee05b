"""One instance arriving from an archive, and the form it waits in: memory or a Part-10 file.

Rule 1: a ``Reception`` takes the data set fragment by fragment into memory while it
        fits the share of the window the buffer gave it, then (or from the start,
        when there is no share) into a file of its own: file meta information
        written by ``file_meta``, then the data set exactly as received.
Rule 2: an instance that fails half-way (disk full, the association gone) leaves
        nothing behind: its file is deleted, its UID forgotten by the buffer so
        another archive may still deliver it, and its answer is 0xA700 (Refused:
        Out of Resources, PS3.4 B.2.3).
Rule 3: ``Buffered`` is what the sinks send from; ``proxy.part10.file_meta`` is the
        Part-10 header the proxy writes itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from pydicom import Dataset, dcmread

from proxy.part10 import file_meta
from proxy.status import Status

if TYPE_CHECKING:
    from proxy.retrieve.buffer import InstanceBuffer

T = TypeVar("T")


@dataclass(frozen=True)
class Buffered:
    path: Path | None          # the Part-10 file, or None while the instance is in memory
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    size: int                  # bytes held: the file's, or the in-memory data set's
    archive: str
    data_offset: int = 0       # where the data set starts in the file (after the file meta)
    data: bytearray | None = None   # the data set as received, when held in memory

    def dataset(self) -> Dataset:
        """The instance decoded — only where the proxy must re-encode or convert it."""
        if self.path is not None:
            return dcmread(self.path)
        meta = file_meta(self.sop_class_uid, self.sop_instance_uid, self.transfer_syntax)
        return dcmread(BytesIO(meta + bytes(self.data or b"")))

    def write_data(self, write: Callable[..., T]) -> T:
        """Hand the data set as received to ``write``: ``data=`` from memory, or
        ``source=``/``length=`` from its file, positioned after the file meta."""
        if self.data is not None:
            return write(data=memoryview(self.data))
        assert self.path is not None
        with open(self.path, "rb") as source:
            source.seek(self.data_offset)
            return write(source=source, length=self.size - self.data_offset)


class Reception:
    """One C-STORE arriving fragment by fragment (``InstanceBuffer.receive``, Rule 1)."""

    def __init__(self, buffer: InstanceBuffer, path: Path | None, uid: str, sop_class: str,
                 transfer_syntax: str, archive: str, status: int = Status.SUCCESS,
                 memory: int = 0) -> None:
        self.buffer, self.path, self.uid = buffer, path, uid
        self.sop_class, self.transfer_syntax, self.archive = sop_class, transfer_syntax, archive
        self.status = status
        self.size = 0
        self._file: BinaryIO | None = None
        self._meta = 0
        self._memory = memory                  # bytes it may hold in memory
        self._data: bytearray | None = None
        self._used = 0
        if memory and path is not None:
            # Sized like the previous instance (a series' images are alike): fragments are
            # copied into place, not appended through repeated reallocations.
            self._data = bytearray(min(buffer.last_size, memory))
        elif path is not None:
            self._to_file(b"")
            buffer.spilled += 1

    def write(self, fragment: memoryview) -> None:
        data = self._data
        if data is not None:
            end = self._used + len(fragment)
            if end <= len(data):
                data[self._used:end] = fragment
                self._used = end
                return
            if end <= self._memory:
                del data[self._used:]
                data += fragment
                self._used = end
                return
            self._data = None                      # over its share: spill (Rule 1)
            self._to_file(memoryview(data)[:self._used])
            self.buffer.spilled += 1
        if self._file is None:
            return                                 # answered without a file: dropped
        try:
            self.size += self._file.write(fragment) or 0
        except OSError:
            self._failed()

    def _to_file(self, data: bytes | memoryview) -> None:
        assert self.path is not None
        try:
            meta = file_meta(self.sop_class, self.uid, self.transfer_syntax)
            self._file = open(self.path, "wb", buffering=0)  # noqa: SIM115 - closed in finish
            self._file.write(meta)
            self._file.write(data)
            self._meta = len(meta)
            self.size = len(meta) + len(data)
        except OSError:
            self._failed()

    def finish(self) -> int:
        """All fragments are in: queue the instance; the C-STORE status to answer."""
        if self._data is not None:
            del self._data[self._used:]
            self.buffer.last_size = self._used
            return self.buffer._commit(Buffered(None, self.uid, self.sop_class,
                                                self.transfer_syntax, self._used,
                                                self.archive, 0, self._data), self._memory)
        self.buffer._release_memory(self._memory)
        if self._file is None:
            return self.status
        self._file.close()
        self._file = None
        assert self.path is not None
        return self.buffer._commit(Buffered(self.path, self.uid, self.sop_class,
                                            self.transfer_syntax, self.size, self.archive,
                                            self._meta))

    def abandon(self) -> None:
        """The association ended mid-instance: nothing of it stays."""
        if self._data is not None or self._file is not None:
            self._data = None
            self._failed()
        self.buffer._release_memory(self._memory)
        self._memory = 0

    def _failed(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.buffer._forget(self.uid)
        self.status = Status.REFUSED_OUT_OF_RESOURCES
