"""``proxy.ul.tlssocket``: one thread reading while others write, over a real TLS connection."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest

from proxy.ul.tlssocket import wrap
from tests.tls_certs import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def server_context(pki: Pki, version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki.proxy.cert), str(pki.proxy.key))
    ctx.minimum_version = ctx.maximum_version = version
    return ctx


def client_context(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(pki.ca.path))
    return ctx


def echo_server(context: ssl.SSLContext) -> tuple[int, threading.Thread]:
    """A TLS peer that echoes every byte it gets until the client closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        listener.close()
        with context.wrap_socket(conn, server_side=True) as tls:
            while data := tls.recv(65536):
                tls.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return port, thread


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_one_reader_and_several_writers_at_once(pki: Pki, version: ssl.TLSVersion) -> None:
    port, server = echo_server(server_context(pki, version))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    tls = wrap(raw, client_context(pki), "localhost", 10)
    assert tls.getpeercert(True)                       # the verified server certificate
    writers, each, size = 4, 200, 4096
    expected = writers * each * size
    received = bytearray()
    got = bytearray(65536)
    total = 0

    def write(k: int) -> None:
        for _ in range(each):
            tls.sendall(bytes([k]) * size)       # one writer's block, whole (one sendall)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    counts = [0] * writers
    while total < expected:                          # the reader, concurrently
        n = tls.recv_into(memoryview(got))
        assert n > 0
        received += got[:n]
        total += n
    for t in threads:
        t.join()
    assert total == expected
    # Every block came back whole (sends never interleave) and none was lost or doubled.
    for start in range(0, total, size):
        block = received[start:start + size]
        assert block == bytes([block[0]]) * size, start
        counts[block[0]] += 1
    assert counts == [each] * writers
    tls.shutdown(socket.SHUT_RDWR)
    tls.close()
    server.join(5)


def test_a_handshake_with_an_untrusted_server_fails(pki: Pki, tmp_path: Path) -> None:
    rogue = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    rogue.load_cert_chain(str(pki.untrusted.cert), str(pki.untrusted.key))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            rogue.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            pass
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with pytest.raises(ssl.SSLCertVerificationError):
        wrap(raw, client_context(pki), "localhost", 10)
    raw.close()
    listener.close()


def test_the_peer_closing_reads_as_end_of_stream(pki: Pki) -> None:
    context = server_context(pki, ssl.TLSVersion.TLSv1_3)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as peer:
            peer.sendall(b"bye")
            try:
                peer.unwrap()           # close_notify out; ours never comes (Rule 4)
            except (ssl.SSLError, OSError):
                pass

    threading.Thread(target=serve, daemon=True).start()
    tls = wrap(socket.create_connection(("127.0.0.1", port), timeout=10),
               client_context(pki), "localhost", 10)
    buf = bytearray(16)
    assert tls.recv_into(memoryview(buf)) == 3 and bytes(buf[:3]) == b"bye"
    assert tls.recv_into(memoryview(buf)) == 0
    tls.close()
    listener.close()
