"""Loopback ports and readiness waits for the end-to-end peers.

Rule 1: everything listens on 127.0.0.1 on a port the kernel handed out.
Rule 2: nothing sleeps for a fixed time: waits poll in short steps up to a
        deadline and raise ``TimeoutError`` saying what they waited for.
Rule 3: reading a subprocess's output never blocks the test: a daemon thread
        pumps lines into a queue, and the waiter reads the queue with a timeout.
"""

from __future__ import annotations

import queue
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Callable
from typing import IO

LOOPBACK = "127.0.0.1"
POLL_INTERVAL = 0.02


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, then release).

    Another process may grab it before it is used; peers that fail to bind
    should be retried with a fresh port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_open(port: int, host: str = LOOPBACK) -> bool:
    """Whether something accepts TCP connections on host:port right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(
    port: int,
    timeout: float = 30.0,
    host: str = LOOPBACK,
    *,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll until host:port accepts a TCP connection.

    ``alive`` (e.g. ``lambda: proc.poll() is None``) stops the wait early with
    ``RuntimeError`` when the process meant to listen has died.
    """
    deadline = time.monotonic() + timeout
    while True:
        if port_is_open(port, host):
            return
        if alive is not None and not alive():
            raise RuntimeError(f"process exited before listening on {host}:{port}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.1f}s")
        time.sleep(POLL_INTERVAL)


def wait_for_port_closed(port: int, timeout: float = 30.0, host: str = LOOPBACK) -> None:
    """Poll until host:port refuses TCP connections."""
    deadline = time.monotonic() + timeout
    while port_is_open(port, host):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} still accepting after {timeout:.1f}s")
        time.sleep(POLL_INTERVAL)


class LineReader:
    """Pumps a text stream's lines into a queue from a daemon thread, keeping them all.

    One reader per stream: create it once (``LineReader.of`` does that) and call
    ``wait_for`` as often as needed; lines already consumed by an earlier wait
    are not seen again, but stay in ``lines``.
    """

    _by_stream: weakref.WeakKeyDictionary[IO[str], LineReader] = weakref.WeakKeyDictionary()
    _registry_lock = threading.Lock()

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._eof = False
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    @classmethod
    def of(cls, stream: IO[str]) -> LineReader:
        """The reader attached to ``stream``, created on first use."""
        with cls._registry_lock:
            reader = cls._by_stream.get(stream)
            if reader is None:
                reader = cls._by_stream[stream] = cls(stream)
            return reader

    def _pump(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                line = line.rstrip("\r\n")
                self.lines.append(line)
                self._queue.put(line)
        except (OSError, ValueError):  # stream closed under us
            pass
        finally:
            self._queue.put(None)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float) -> str:
        """The first not-yet-consumed line satisfying ``predicate``.

        Raises ``TimeoutError`` after ``timeout`` seconds and ``EOFError`` if the
        stream ends first; both messages quote the last lines seen.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self._eof:
                raise EOFError(f"stream ended without a matching line; last: {self.lines[-5:]}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                last = self.lines[-5:]
                raise TimeoutError(f"no matching line after {timeout:.1f}s; last: {last}")
            try:
                line = self._queue.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                self._eof = True
            elif predicate(line):
                return line


def wait_for_line(
    stream_or_proc: IO[str] | subprocess.Popen[str],
    predicate: Callable[[str], bool],
    timeout: float = 30.0,
) -> str:
    """Wait for an output line of a text-mode stream or a ``Popen``'s stdout.

    The ``Popen`` must have been started with ``stdout=PIPE`` and ``text=True``
    (use ``stderr=STDOUT`` to watch both).
    """
    if isinstance(stream_or_proc, subprocess.Popen):
        if stream_or_proc.stdout is None:
            raise ValueError("process was not started with stdout=PIPE")
        stream: IO[str] = stream_or_proc.stdout
    else:
        stream = stream_or_proc
    return LineReader.of(stream).wait_for(predicate, timeout)
