"""Pulling over C-GET into the buffer (getter.get + InstanceBuffer), in process.

A pynetdicom C-GET SCP plays the archive; what lands in the buffer — in memory, in
files, or spilled to a file mid-instance — must be the data sets exactly as the
archive encoded them, in their own transfer syntaxes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

from proxy.retrieve import getter, sopclasses
from proxy.retrieve.buffer import InstanceBuffer
from proxy.retrieve.reception import Buffered, file_meta
from proxy.status import Status
from proxy.upstream import ArchiveClient, Peer

FILES = ("JPEG2000.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "CT_small.dcm")


def datasets() -> list[Dataset]:
    out = []
    study = generate_uid()
    for name in FILES:
        ds = dcmread(get_testdata_file(name))
        ds.StudyInstanceUID, ds.SOPInstanceUID = study, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out.append(ds)
    return out


@pytest.fixture
def archive() -> Iterator[tuple[int, list[Dataset]]]:
    held = datasets()

    def on_get(event: evt.Event) -> Iterator[Any]:
        yield len(held) + 1
        for ds in [*held, held[0]]:          # the last one twice: a duplicate
            yield Status.PENDING, ds

    ae = AE("ARCHIVE")
    ae.add_supported_context(GET)
    for cx in StoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, [
            "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5",
            "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"],
            scu_role=True, scp_role=True)
    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_C_GET, on_get)])
    yield server.server_address[1], held
    server.shutdown()


def pull(port: int, held: list[Dataset], buffer: InstanceBuffer
         ) -> list[tuple[int, dict[str, int]]]:
    client = ArchiveClient(Peer("a", "ARCHIVE", "127.0.0.1", port, "QR_PROXY", 10.0))
    instances = [sopclasses.Instance(str(d.SOPInstanceUID), str(d.SOPClassUID),
                                     (str(d.file_meta.TransferSyntaxUID),)) for d in held]
    contexts = sopclasses.propose(instances, 127)
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = held[0].StudyInstanceUID
    return list(getter.get(client, ident, GET, contexts, sopclasses.roles(contexts), buffer,
                           "a"))


def stored(item: Buffered) -> Dataset:
    """The instance as the buffer holds it, read back as a Part-10 file."""
    if item.path is not None:
        return dcmread(item.path)
    assert item.data is not None
    meta = file_meta(item.sop_class_uid, item.sop_instance_uid, item.transfer_syntax)
    return dcmread(BytesIO(meta + bytes(item.data)))


@pytest.mark.parametrize("memory", [0, 10**8, 3000], ids=["files", "memory", "spilled"])
def test_instances_land_byte_for_byte_in_their_own_syntax(
        archive: tuple[int, list[Dataset]], tmp_path: Path, memory: int) -> None:
    port, held = archive
    buffer = InstanceBuffer(tmp_path / "buf", 10**9, memory)
    responses = pull(port, held, buffer)
    assert responses[-1][0] == Status.SUCCESS
    buffer.finish()
    got = []
    while (item := buffer.take(0.1)) is not None:
        got.append(item)
    assert buffer.duplicates == 1 and len(got) == len(held)
    in_memory = [item.path is None for item in got]
    assert all(in_memory) if memory == 10**8 else not any(in_memory)
    if memory == 3000:                           # every one of them outgrew the window
        assert buffer.spilled == len(held)
    for original, item in zip(held, got, strict=True):
        back = stored(item)
        assert item.sop_instance_uid == original.SOPInstanceUID
        assert item.transfer_syntax == original.file_meta.TransferSyntaxUID
        assert back.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert back.PixelData == original.PixelData
        buffer.done(item)
    assert buffer.memory_used == 0 and buffer.pending_bytes == 0
    buffer.close()
    assert not (tmp_path / "buf").exists()


def test_a_full_buffer_slows_the_archive_instead_of_growing(
        archive: tuple[int, list[Dataset]], tmp_path: Path) -> None:
    port, held = archive
    buffer = InstanceBuffer(tmp_path / "buf", max_bytes=1)   # room for one at a time
    taken: list[int] = []
    pulled = threading.Event()

    def consume() -> None:
        # A destination that takes each instance only once the archive is held back.
        while (item := buffer.take(5.0)) is not None:
            deadline = time.monotonic() + 5.0
            while (buffer.waited < len(taken) + 1 and not pulled.is_set()
                   and time.monotonic() < deadline):
                time.sleep(0.01)
            taken.append(len(list((tmp_path / "buf").iterdir())))
            buffer.done(item)

    worker = threading.Thread(target=consume)
    worker.start()
    pull(port, held, buffer)
    pulled.set()
    buffer.finish()
    worker.join(10)
    assert len(taken) == len(held)
    assert max(taken) == 1                       # never more than one instance on disk
    assert buffer.waited >= len(held) - 1        # every later one waited for room
    buffer.close()


def test_a_closed_buffer_refuses_and_leaves_nothing(
        archive: tuple[int, list[Dataset]], tmp_path: Path) -> None:
    port, held = archive
    buffer = InstanceBuffer(tmp_path / "buf", 10**9)
    buffer.close()
    responses = pull(port, held, buffer)
    final = responses[-1][1]
    assert final["NumberOfFailedSuboperations"] == len(held) + 1
    assert not (tmp_path / "buf").exists()


def put(buffer: InstanceBuffer, uid: str, size: int) -> tuple[Buffered | None, float]:
    """Receive one instance of ``size`` bytes; (what was queued, seconds it took)."""
    started = time.monotonic()
    reception = buffer.receive(uid, "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", "a")
    reception.write(memoryview(bytes(size)))
    assert reception.finish() == Status.SUCCESS
    return buffer._queue[-1], time.monotonic() - started


def test_a_full_window_paces_the_archive_then_spills_once_it_stays_full(
        tmp_path: Path) -> None:
    buffer = InstanceBuffer(tmp_path / "buf", 10**9, memory_bytes=100, spill_after=0.3)
    a, _ = put(buffer, "1.1", 40)
    b, _ = put(buffer, "1.2", 40)
    assert a and b and a.data is not None and b.data is not None   # both fit the window
    c, waited = put(buffer, "1.3", 40)                # no room: waits, then spills
    assert c and c.path is not None and waited >= 0.3
    d, waited = put(buffer, "1.4", 40)                # still full: spills at once
    assert d and d.path is not None and waited < 0.2
    buffer.done(buffer.take(0))                       # the destination takes one: room
    e, waited = put(buffer, "1.5", 40)
    assert e and e.data is not None and waited < 0.2
    assert buffer.spilled == 2 and buffer.memory_used == 80
    buffer.close()
    assert buffer.memory_used == 0


def test_room_freed_while_waiting_keeps_the_instance_in_memory(tmp_path: Path) -> None:
    buffer = InstanceBuffer(tmp_path / "buf", 10**9, memory_bytes=100, spill_after=30)
    put(buffer, "1.1", 60)

    def destination() -> None:                        # frees room once the archive waits
        deadline = time.monotonic() + 10
        while buffer._full_since is None and time.monotonic() < deadline:
            time.sleep(0.005)
        buffer.done(buffer.take(0))

    worker = threading.Thread(target=destination)
    worker.start()
    b, waited = put(buffer, "1.2", 60)
    worker.join(10)
    assert b and b.data is not None and buffer.spilled == 0 and waited < 10
    buffer.close()
