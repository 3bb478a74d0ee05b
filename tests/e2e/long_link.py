"""A long network link on loopback: a TCP relay that delays every byte by a one-way time.

Job: put a remote site's round trip between two real peers (the proxy and Orthanc, or
storescu and Orthanc) without touching the machine's network settings: each direction's
bytes are read as they come and written ``delay`` seconds later, in order, so every
request/response exchange across the relay takes at least one round trip (twice the delay).
Bandwidth is not limited.

Rule 1: it listens on 127.0.0.1 on a free port and relays to one target; each accepted
        connection gets its own connection to the target; either side closing closes
        the other once what was in flight is delivered.
Rule 2: it runs its own event loop on a daemon thread and stops with ``close`` (or the
        ``with`` block).
Rule 3: ``stall_up_after = n``: once ``n`` bytes have gone to the target, it stops reading
        what comes toward the target (an archive that stops reading mid-transfer); the
        sender's writes then block once the socket buffers are full.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from tests.e2e.ports import LOOPBACK


class LongLink:
    """Connections to ``port`` reach ``target_port``, each way ``delay`` seconds later."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port, self.delay = target_port, delay
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._ready = threading.Event()
        self.port = 0
        self.connections = 0              # accepted so far
        self.open = 0                     # open now
        self.most_open = 0                # the most open at once
        self.delivered_up = 0             # bytes written to the target so far
        self.stall_up_after: int | None = None    # Rule 3
        self._thread = threading.Thread(target=self._run, name="long-link", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("the long link did not start listening")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._server = self.loop.run_until_complete(
            asyncio.start_server(self._accepted, LOOPBACK, 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    async def _accepted(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.target_port)
        except OSError:
            writer.close()
            return
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await asyncio.gather(self._carry(reader, up_writer, up=True),
                                 self._carry(up_reader, writer))
        finally:
            self.open -= 1
            writer.close()
            up_writer.close()

    async def _carry(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                     up: bool = False) -> None:
        """One direction: each chunk written ``delay`` after it was read, in order (toward
        the target when ``up``: counted in ``delivered_up``)."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                wait = due - self.loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    break
                sink.write(data)
                if up:
                    self.delivered_up += len(data)
                await sink.drain()

        delivering = asyncio.ensure_future(deliver())
        try:
            while True:
                if up and self.stall_up_after is not None \
                        and self.delivered_up >= self.stall_up_after:
                    await asyncio.Event().wait()      # Rule 3: never reads again
                data = await source.read(1 << 16)
                if not data:
                    break
                queue.put_nowait((self.loop.time() + self.delay, data))
        except (ConnectionError, OSError):
            pass
        queue.put_nowait((self.loop.time() + self.delay, b""))
        with suppress(ConnectionError, OSError):
            await delivering
        with suppress(ConnectionError, OSError):
            sink.close()

    def close(self) -> None:
        """Stop listening, end every relayed connection, stop the loop."""
        if not self.loop.is_running():
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@contextmanager
def long_link(target_port: int, delay: float) -> Iterator[LongLink]:
    link = LongLink(target_port, delay)
    try:
        yield link
    finally:
        link.close()
