"""proxy.wire: read-ahead PDU reads and direct bulk writes give the bytes pynetdicom would."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from pydicom.data import get_testdata_file

from proxy import wire

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
