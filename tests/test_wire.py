"""proxy.wire: read-ahead PDU reads and direct bulk writes give the bytes pynetdicom would."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import CTImageStorage

from proxy import wire
from proxy.store import receive
from proxy.upstream import ArchiveClient, Peer

CT = Path(get_testdata_file("CT_small.dcm"))


def reader(sock: socket.socket) -> wire.ReadAheadSocket:
    s = wire.ReadAheadSocket.__new__(wire.ReadAheadSocket)
    s.socket = sock
    s._is_connected = True
    return s




def test_recv_returns_exact_sizes_across_read_ahead(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    payload = bytes(range(256)) * 64                    # 16 KB
    b.sendall(payload * 3)
    r = reader(a)
    rest = len(payload) * 3 - 6 - 16378 - 6
    got = [r.recv(6), r.recv(16378), r.recv(6), r.recv(rest)]
    assert b"".join(got) == payload * 3
    assert [len(g) for g in got] == [6, 16378, 6, rest]
    assert all(isinstance(g, bytearray) for g in got)


def test_ready_answers_from_the_buffer(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    r = reader(a)
    assert not r.ready
    b.sendall(b"0123456789")
    assert r.recv(4) == b"0123"
    assert r.ready                                   # six bytes already read ahead
    assert r.recv(6) == b"456789"
    assert not r.ready


def test_large_body_bypasses_the_buffer(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    big = bytes(range(251)) * 2000                    # ~500 KB > READ_AHEAD / 2
    sender = threading.Thread(target=b.sendall, args=(b"HEADER" + big + b"tail",))
    sender.start()
    r = reader(a)
    assert r.recv(6) == b"HEADER"
    assert r.recv(len(big)) == big
    assert r.recv(4) == b"tail"
    sender.join()


def test_closed_peer_returns_what_was_read(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    b.sendall(b"abc")
    b.close()
    assert reader(a).recv(10) == b"abc"


class Receiver:
    """A pynetdicom storage SCP advertising a small PDU (many PDUs per instance)."""

    def __init__(self, max_pdu: int) -> None:
        self.received: list[bytes] = []
        self.ae = AE("RECEIVER")
        self.ae.maximum_pdu_size = max_pdu
        self.ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
        self.server: Any = None

    def __enter__(self) -> Receiver:
        def on_store(event: evt.Event) -> int:
            self.received.append(bytes(event.request.DataSet.getvalue()))
            return 0x0000

        self.server = self.ae.start_server(("127.0.0.1", 0), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, on_store)])
        return self

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


@pytest.mark.parametrize("max_pdu", [4096, 16384, 0])
def test_direct_writes_deliver_the_same_bytes(tmp_path: Path, max_pdu: int) -> None:
    receive.install()
    expected = dcmread(CT)
    expected.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "ct.dcm"
    expected.save_as(path, enforce_file_format=True)
    with Receiver(max_pdu) as rx:
        client = ArchiveClient(Peer("rx", "RECEIVER", "127.0.0.1", rx.port, "PROXY", 10.0))
        # A plain pynetdicom requestor made a wire one, as the listener makes its own.
        read_ahead = (evt.EVT_CONN_OPEN, lambda event: wire.use_read_ahead(event.assoc))
        with client.associate([build_context(CTImageStorage, ExplicitVRLittleEndian)],
                              handlers=[read_ahead]) as assoc:
            assert isinstance(assoc.dul.socket, wire.ReadAheadSocket)
            wire.write_directly(assoc)
            statuses = []
            for msg_id in (1, 2, 3):
                with receive.sending_raw():
                    statuses.append(int(assoc.send_c_store(path, msg_id=msg_id).Status))
    assert statuses == [0, 0, 0]
    raw = path.read_bytes()
    body = raw[-len(rx.received[0]):]
    assert rx.received == [body] * 3
    assert dcmread(path).PixelData == expected.PixelData
