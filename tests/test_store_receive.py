"""pynetdicom pass-through switches, in-process on loopback: only where the proxy wants them."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

from proxy.store import receive

CT = Path(get_testdata_file("CT_small.dcm"))


def body(data: bytes) -> bytes:
    """A Part-10 file without preamble and file meta: the data set as encoded."""
    f = io.BytesIO(data)
    read_preamble(f, False)
    _read_file_meta_info(f)
    return data[f.tell():]


class Receiver:
    """A pynetdicom storage SCP on a free port that records what its handler saw."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.ae = AE("RECEIVER")
        self.ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian,
                                                       ImplicitVRLittleEndian])
        self.closed = threading.Event()
        handlers = [(evt.EVT_C_STORE, self._store), (evt.EVT_CONN_CLOSE, self._closed)]
        self.server = self.ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.port = self.server.server_address[1]
        self.keep: Callable[[Path], None] | None = None

    def _store(self, event: evt.Event) -> int:
        path = getattr(event.request, "_dataset_path", None)
        record: dict[str, Any] = {"path": path}
        if path is not None:
            record["file"] = Path(path).read_bytes()
            if self.keep:
                self.keep(Path(path))
        else:
            record["encoded"] = event.encoded_dataset(include_meta=False)
        self.seen.append(record)
        return 0x0000

    def _closed(self, event: evt.Event) -> None:
        receive.forget(event.assoc)
        self.closed.set()

    def stop(self) -> None:
        receive.stop_receiving(self.ae)
        self.server.shutdown()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def send(port: int, path: Path, *, syntax: str = ExplicitVRLittleEndian,
         raw: bool = False) -> int | None:
    ae = AE("SENDER")
    ae.add_requested_context(CTImageStorage, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="RECEIVER")
    assert assoc.is_established
    try:
        with receive.sending_raw(raw):
            rsp = assoc.send_c_store(path)
        return int(rsp.Status) if "Status" in rsp else None
    finally:
        assoc.release()


def test_registered_listener_receives_into_the_spool_temp_dir(
        receiver: Receiver, tmp_path: Path) -> None:
    receive.receive_into(receiver.ae, tmp_path, lambda assoc: True)
    assert send(receiver.port, CT) == 0
    [seen] = receiver.seen
    assert Path(seen["path"]).parent == tmp_path
    assert body(seen["file"]) == body(CT.read_bytes())    # the data set exactly as sent
    assert dcmread(io.BytesIO(seen["file"])).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert receiver.closed.wait(5)
    assert list(tmp_path.iterdir()) == []                 # nothing left behind


def test_a_file_the_handler_moved_away_survives_and_nothing_leaks(
        receiver: Receiver, tmp_path: Path) -> None:
    (tmp_path / "rx").mkdir()
    kept = tmp_path / "kept.dcm"
    receive.receive_into(receiver.ae, tmp_path / "rx", lambda assoc: True)
    receiver.keep = lambda path: path.replace(kept)
    assert send(receiver.port, CT) == 0
    assert receiver.closed.wait(5)
    assert body(kept.read_bytes()) == body(CT.read_bytes())
    assert list((tmp_path / "rx").iterdir()) == []


def test_unregistered_or_unwanted_associations_keep_pynetdicom_defaults(
        receiver: Receiver, tmp_path: Path) -> None:
    assert send(receiver.port, CT) == 0                   # not registered
    receive.receive_into(receiver.ae, tmp_path, lambda assoc: False)  # e.g. inbound retrieve
    assert send(receiver.port, CT) == 0
    assert [s["path"] for s in receiver.seen] == [None, None]
    assert all(body(CT.read_bytes()) == s["encoded"] for s in receiver.seen)
    assert list(tmp_path.iterdir()) == []


def test_sending_raw_sends_the_file_bytes_and_needs_the_exact_syntax(
        receiver: Receiver) -> None:
    assert send(receiver.port, CT, raw=True) == 0
    assert receiver.seen[-1]["encoded"] == body(CT.read_bytes())
    with pytest.raises(ValueError):                       # raw: no conversion possible
        send(receiver.port, CT, syntax=ImplicitVRLittleEndian, raw=True)
    assert send(receiver.port, CT, syntax=ImplicitVRLittleEndian) == 0  # decoded: converted
