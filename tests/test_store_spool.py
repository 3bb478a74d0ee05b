"""The durable queue on a real filesystem: order, fan-out, dead letters, bounds, crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from proxy.store.spool import InstanceMeta, Spool, SpoolFull

CT = get_testdata_file("CT_small.dcm")
META = InstanceMeta("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.840.10008.1.2.1")


def received(spool: Spool, payload: bytes = b"x" * 100) -> Path:
    """A file in the spool's temp dir, as pynetdicom leaves it there."""
    path = spool.new_temp_path()
    path.write_bytes(payload)
    return path


def opened(root: Path, max_bytes: int = 10**9) -> Spool:
    spool = Spool(root, max_bytes)
    spool.open()
    return spool


def test_commit_moves_the_file_and_queues_it_for_every_archive(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    source = received(spool, b"abc")
    entry = spool.commit(source, ["a", "b"], META)
    assert not source.exists()
    assert [e.id for e in spool.head("a", 10)] == [entry.id]
    assert [e.id for e in spool.head("b", 10)] == [entry.id]
    a, b = spool.path("a", entry), spool.path("b", entry)
    assert a.read_bytes() == b.read_bytes() == b"abc"
    assert os.stat(a).st_ino == os.stat(b).st_ino        # one copy on disk
    stats = spool.stats()
    assert (stats.pending, stats.pending_bytes, stats.used_bytes) == (1, 3, 3)


def test_queue_is_in_arrival_order_and_drains(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    entries = [spool.commit(received(spool), ["a"], META) for _ in range(5)]
    ids = [e.id for e in entries]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert [e.id for e in spool.head("a", 3)] == ids[:3]
    spool.forwarded("a", entries[0])
    spool.forwarded("a", entries[2])
    assert [e.id for e in spool.head("a", 10)] == [ids[1], ids[3], ids[4]]
    for e in entries:
        spool.forwarded("a", e)
    assert spool.stats().pending == 0 and spool.stats().used_bytes == 0
    assert list((spool.root / "pending" / "a").iterdir()) == []


def test_an_instance_stays_until_every_archive_has_it(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    entry = spool.commit(received(spool, b"12345"), ["a", "b"], META)
    spool.forwarded("a", entry)
    assert spool.stats().pending == 1 and spool.path("b", entry).exists()
    spool.forwarded("b", entry)
    assert spool.stats().pending == 0 and spool.stats().used_bytes == 0


def test_restart_resumes_pending_in_order_and_ids_keep_increasing(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    entries = [spool.commit(received(spool, bytes(CT_BYTES)), ["a", "b"], META)
               for _ in range(3)]
    spool.forwarded("a", entries[0])
    (spool.tmp / "in-leftover.dcm").write_bytes(b"half a reception")

    again = opened(tmp_path)
    assert [e.id for e in again.head("a", 10)] == [e.id for e in entries[1:]]
    assert [e.id for e in again.head("b", 10)] == [e.id for e in entries]
    assert list(again.tmp.iterdir()) == []                 # never acknowledged: dropped
    first = again.head("a", 1)[0]
    assert first.meta is None
    meta = again.meta("a", first)                          # read back from the file meta
    assert meta.sop_instance == str(dcmread(CT).SOPInstanceUID)
    newer = again.commit(received(again), ["a"], META)
    assert newer.id > entries[-1].id
    assert again.stats().pending == 4


CT_BYTES = Path(CT).read_bytes()


def test_sender_titles_in_the_file_meta_survive_a_restart(tmp_path: Path) -> None:
    # proxy.store.receive writes Sending/Receiving AE Title (0002,0017/0018) into what it receives
    ds = dcmread(CT)
    ds.file_meta.SendingApplicationEntityTitle = "CT_SCANNER"
    ds.file_meta.ReceivingApplicationEntityTitle = "RELAY"
    titled, plain = tmp_path / "titled.dcm", tmp_path / "plain.dcm"
    ds.save_as(titled, enforce_file_format=True)
    plain.write_bytes(CT_BYTES)
    spool = opened(tmp_path / "spool")
    for source in (titled, plain):
        temp = received(spool, source.read_bytes())
        spool.commit(temp, ["a"], META)
    again = opened(tmp_path / "spool")
    first, second = (again.meta("a", e) for e in again.head("a", 2))
    assert (first.sending_ae, first.receiving_ae) == ("CT_SCANNER", "RELAY")
    assert (second.sending_ae, second.receiving_ae) == ("", "")


def test_dead_letter_keeps_the_instance_and_the_reason(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    entry = spool.commit(received(spool, b"data"), ["a"], META)
    path = spool.dead_letter("a", entry, {"status": "0x0122", "reason": "not supported"})
    assert path.read_bytes() == b"data"
    note = json.loads(path.with_suffix(".json").read_text())
    assert note["reason"] == "not supported" and note["status"] == "0x0122"
    assert note["sop_instance"] == "1.2.3" and note["archive"] == "a"
    assert spool.head("a", 10) == []
    stats = spool.stats()
    assert (stats.pending, stats.dead, stats.used_bytes) == (0, 1, 4)  # still on disk
    again = opened(tmp_path)
    assert again.stats().dead == 1 and again.head("a", 10) == []


def test_admits_only_what_fits_under_max_bytes(tmp_path: Path) -> None:
    spool = opened(tmp_path, max_bytes=250)
    assert spool.admits(250) and not spool.admits(251)
    spool.commit(received(spool, b"x" * 100), ["a", "b"], META)  # counted once
    assert spool.admits(150) and not spool.admits(151)
    spool.commit(received(spool, b"x" * 100), ["a"], META)
    late = received(spool, b"x" * 51)
    with pytest.raises(SpoolFull):                     # checked again, under the lock
        spool.commit(late, ["a"], META)
    assert late.exists() and spool.stats().used_bytes == 200


def test_archive_names_are_safe_directory_names(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    entry = spool.commit(received(spool), ["../evil/x"], META)
    assert spool.path("../evil/x", entry).parent.parent == spool.root / "pending"
    assert opened(tmp_path).archives() == ["../evil/x"]


def test_oldest_age_grows_with_the_oldest_pending_instance(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    assert spool.stats().oldest_age_s == 0.0
    spool.commit(received(spool), ["a"], META)
    time.sleep(0.05)
    assert 0.04 < spool.stats().oldest_age_s < 5


_WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from proxy.store.spool import InstanceMeta, Spool, SpoolFull
    spool = Spool(Path(sys.argv[1]), 10**12)
    spool.open()
    payload = Path(sys.argv[2]).read_bytes()
    meta = InstanceMeta("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.840.10008.1.2.1")
    while True:
        source = spool.new_temp_path()
        source.write_bytes(payload)
        entry = spool.commit(source, ["a", "b"], meta)
        print(entry.id, flush=True)         # "Success" goes out only after commit
""")


@pytest.mark.parametrize("after_lines", [5, 40])
def test_kill_9_never_loses_an_acknowledged_instance_nor_leaves_a_torn_one(
        tmp_path: Path, after_lines: int) -> None:
    root = tmp_path / "spool"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(root), CT],
                            stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout is not None
    acknowledged = [proc.stdout.readline().strip() for _ in range(after_lines)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    acknowledged += [line.strip() for line in proc.stdout if line.strip()]

    spool = opened(root)
    for archive in ("a", "b"):
        ids = [e.id for e in spool.head(archive, 10**6)]
        assert set(acknowledged) <= set(ids)
        for entry in spool.head(archive, 10**6):     # acknowledged or not: never torn
            assert spool.path(archive, entry).read_bytes() == CT_BYTES
    assert list(spool.tmp.iterdir()) == []


def test_holding_names_the_instances_still_pending_for_an_archive(tmp_path: Path) -> None:
    """What a Storage Commitment request waits for; after a restart, read from file meta."""
    spool = opened(tmp_path / "spool")
    uid = str(dcmread(CT).SOPInstanceUID)
    ct = spool.commit(received(spool, CT_BYTES), ["a", "b"], InstanceMeta(
        "1.2.840.10008.5.1.4.1.1.2", uid, "1.2.840.10008.1.2.1"))
    spool.commit(received(spool), ["a"], META)
    assert spool.holding("a", {uid, "1.2.3", "9.9"}) == {uid, "1.2.3"}
    spool.forwarded("a", ct)
    assert spool.holding("a", {uid, "1.2.3"}) == {"1.2.3"}
    assert opened(tmp_path / "spool").holding("b", {uid, "1.2.3"}) == {uid}


# -- recycling (Rule 6) ----------------------------------------------------------------------


def receive(spool: Spool, payload: bytes) -> Path:
    """What the listener does: write an instance into ``reception()``, close it."""
    file = spool.reception()
    half = len(payload) // 2
    file.write(payload[:half])
    file.write(memoryview(payload)[half:])
    file.close()
    return file.path


def test_a_delivered_file_receives_the_next_instance_cut_to_its_length(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    first = spool.commit(receive(spool, b"A" * 5000), ["a"], META)
    inode = os.stat(spool.path("a", first)).st_ino
    spool.forwarded("a", first)
    assert [p.name for p in spool.free.iterdir()] == [f"{first.id}.dcm"]
    assert list((spool.root / "pending" / "a").iterdir()) == []
    stats = spool.stats()
    assert (stats.pending, stats.used_bytes) == (0, 0)      # free/ is not pending
    path = receive(spool, b"B" * 1200)                      # shorter: the rest is cut
    assert path.parent == spool.free and os.stat(path).st_ino == inode
    second = spool.commit(path, ["a"], META)
    assert spool.path("a", second).read_bytes() == b"B" * 1200
    assert list(spool.free.iterdir()) == [] and spool.stats().used_bytes == 1200
    spool.forwarded("a", second)
    third = spool.commit(receive(spool, b"C" * 9000), ["a"], META)   # longer: it grows
    assert spool.path("a", third).read_bytes() == b"C" * 9000


def test_with_no_file_to_reuse_a_reception_is_a_new_file_in_tmp(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    path = receive(spool, b"new")
    assert path.parent == spool.tmp and path.read_bytes() == b"new"


def test_only_the_last_link_of_an_instance_is_kept_for_reuse(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    entry = spool.commit(receive(spool, b"both"), ["a", "b"], META)
    spool.forwarded("a", entry)
    assert list(spool.free.iterdir()) == [] and spool.path("b", entry).read_bytes() == b"both"
    spool.forwarded("b", entry)
    assert len(list(spool.free.iterdir())) == 1


def test_a_dead_lettered_instance_is_never_reused(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    entry = spool.commit(receive(spool, b"refused"), ["a", "b"], META)
    spool.dead_letter("a", entry, {"reason": "refused"})
    spool.forwarded("b", entry)
    assert list(spool.free.iterdir()) == []
    assert (spool.root / "dead" / "a" / f"{entry.id}.dcm").read_bytes() == b"refused"


def test_free_holds_at_most_so_many_files_and_bytes_and_no_large_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import proxy.store.spool as spool_module
    monkeypatch.setattr(spool_module, "FREE_FILES", 3)
    monkeypatch.setattr(spool_module, "FREE_BYTES", 250)
    monkeypatch.setattr(spool_module, "RECYCLE_MAX", 100)
    spool = opened(tmp_path)
    sizes = [101, 60, 60, 60, 60, 10, 10]
    entries = [spool.commit(receive(spool, b"x" * n), ["a"], META) for n in sizes]
    for entry in entries:
        spool.forwarded("a", entry)
    kept = sorted(p.stat().st_size for p in spool.free.iterdir())
    assert kept == [60, 60, 60]     # 101 too large; a fourth 60 past 3 files; 10s past 3 files
    assert list((spool.root / "pending" / "a").iterdir()) == []


def test_a_start_deletes_what_free_held(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    entry = spool.commit(receive(spool, b"phi"), ["a"], META)
    spool.forwarded("a", entry)
    assert len(list(spool.free.iterdir())) == 1
    again = opened(tmp_path)
    assert list(again.free.iterdir()) == [] and again.stats().pending == 0
    assert receive(again, b"n").parent == again.tmp
