"""A TLS connection one thread may read while another writes: ``ssl.SSLObject`` over memory BIOs.

Job: ``proxy.ul.link`` reads on one thread while any thread may send (a C-CANCEL during
a C-FIND, a C-STORE-RSP during a C-GET). An ``ssl.SSLSocket`` must not be used that
way: OpenSSL's ``SSL`` object is not safe for concurrent use, and a TLS 1.3 read may
have to write (a KeyUpdate). Here the TLS state is touched only under a short lock that
is never held across a socket call; the ciphertext goes through the plain socket.

Rule 1: ``_tls`` guards the SSLObject and its BIOs: held only to decrypt what has arrived
        or to encrypt what is being sent, never while blocked on the network.
Rule 2: ``_write`` orders the ciphertext: whoever holds it takes everything the
        SSLObject has produced so far (its own records, and any a read produced, e.g. a
        KeyUpdate answer) and writes it, so records leave in the order they were made.
Rule 3: the plain socket carries the timeouts (``settimeout``): a read or write that does
        not complete in time raises TimeoutError, as on a plain socket.
Rule 4: the peer's close_notify or EOF reads as 0 bytes; ``close`` does not wait for the
        peer's close_notify (DICOM ends with A-RELEASE or A-ABORT before it).
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable

_READ = 64 * 1024            # ciphertext bytes taken from the socket per read


class TlsSocket:
    """The subset of ``socket.socket`` the link uses, over TLS (see the module)."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext,
                 server_hostname: str | None) -> None:
        self.raw = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing,
                                     server_hostname=server_hostname)
        self._tls = threading.Lock()        # Rule 1
        self._write = threading.Lock()      # Rule 2

    # -- the handshake ------------------------------------------------------------------

    def handshake(self) -> None:
        """Complete the TLS handshake (bounded by the socket's timeout); raises
        ssl.SSLError, OSError or TimeoutError."""
        while True:
            try:
                with self._tls:
                    self._ssl.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    raise ssl.SSLEOFError("the peer closed the connection during the "
                                          "TLS handshake") from None

    def getpeercert(self, binary_form: bool = True) -> bytes | None:
        with self._tls:
            return self._ssl.getpeercert(True) if binary_form else None

    # -- reading ------------------------------------------------------------------------

    def recv_into(self, buffer: memoryview | bytearray, nbytes: int = 0) -> int:
        """Decrypted bytes into ``buffer``; 0 at the end of the connection (Rule 4)."""
        size = nbytes or len(buffer)
        while True:
            try:
                with self._tls:
                    # With a buffer the count comes back (typeshed says bytes, and
                    # some of its releases want a bytearray).
                    read: Callable[[int, memoryview | bytearray], object] = self._ssl.read
                    got = read(size, buffer)
                    produced = self._outgoing.pending
            except ssl.SSLWantReadError:
                if not self._fill():
                    return 0
                continue
            except ssl.SSLZeroReturnError:
                return 0
            except ssl.SSLEOFError:
                return 0
            if produced:
                self._flush()
            assert isinstance(got, int)
            return got

    def _fill(self) -> bool:
        """Ciphertext from the socket into the SSLObject; False at EOF."""
        data = self.raw.recv(_READ)
        with self._tls:
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()
        return bool(data)

    # -- writing ------------------------------------------------------------------------

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        with self._write:
            with self._tls:
                self._ssl.write(data)
                out = self._outgoing.read()
            self.raw.sendall(out)

    def _flush(self) -> None:
        with self._write:
            with self._tls:
                out = self._outgoing.read()
            if out:
                self.raw.sendall(out)

    # -- the socket's own ---------------------------------------------------------------

    def settimeout(self, timeout: float | None) -> None:
        self.raw.settimeout(timeout)

    def fileno(self) -> int:
        return self.raw.fileno()

    def shutdown(self, how: int) -> None:
        self.raw.shutdown(how)

    def close(self) -> None:
        self.raw.close()


def wrap(sock: socket.socket, context: ssl.SSLContext, server_hostname: str | None,
         timeout: float) -> TlsSocket:
    """``sock`` after a completed handshake (bounded by ``timeout``)."""
    sock.settimeout(timeout)
    tls = TlsSocket(sock, context, server_hostname)
    tls.handshake()
    return tls
