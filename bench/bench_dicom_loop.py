"""Which event loop carries proxy.dicom.io: asyncio, asyncio on uvloop, or a bare
``selectors`` reactor (issue 11). Each server runs in its own process and reports its
own CPU time (``time.process_time``):

  idle:  N connections open, no traffic, for S seconds -> server CPU %
  echo:  C connections ping-ponging 200-byte messages for S seconds -> round trips/s
         and server CPU microseconds per round trip

Run: python3 bench/bench_dicom_loop.py [N idle] [C busy] [S seconds]
uvloop is used when importable (e.g. PYTHONPATH=/tmp/uvl-site after
``pip install --target /tmp/uvl-site uvloop``).
"""

from __future__ import annotations

import multiprocessing as mp
import selectors
import socket
import sys
import time
from multiprocessing.connection import Connection

MSG = b"x" * 200


def asyncio_server(ready: Connection, use_uvloop: bool) -> None:
    import asyncio

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport

        def data_received(self, data: bytes) -> None:
            self.t.write(data)  # type: ignore[attr-defined]

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0, backlog=1024)
        ready.send(server.sockets[0].getsockname()[1])
        while True:
            order = await asyncio.get_running_loop().run_in_executor(None, ready.recv)
            ready.send(time.process_time())
            if order == "stop":
                return

    if use_uvloop:
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())


def selectors_server(ready: Connection) -> None:
    sel = selectors.DefaultSelector()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1024)
    lsock.setblocking(False)
    sel.register(lsock, selectors.EVENT_READ)
    sel.register(ready, selectors.EVENT_READ)
    ready.send(lsock.getsockname()[1])
    while True:
        for key, _ in sel.select():
            if key.fileobj is lsock:
                conn, _ = lsock.accept()
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ)
            elif key.fileobj is ready:
                if ready.recv() == "stop":
                    ready.send(time.process_time())
                    return
                ready.send(time.process_time())
            else:
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                data = sock.recv(65536)
                if not data:
                    sel.unregister(sock)
                    sock.close()
                else:
                    sock.sendall(data)


def run(kind: str, idle: int, busy: int, seconds: float) -> tuple[float, float, float]:
    here, there = mp.Pipe()
    target = selectors_server if kind == "selectors" else asyncio_server
    args: tuple[object, ...] = (there,) if kind == "selectors" else (there, kind == "uvloop")
    proc = mp.Process(target=target, args=args)
    proc.start()
    port = here.recv()
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(idle)]
    time.sleep(0.5)
    here.send("mark")
    t0 = here.recv()
    time.sleep(seconds)
    here.send("mark")
    t1 = here.recv()
    idle_pct = 100 * (t1 - t0) / seconds
    busy_socks = socks[:busy]
    for s in busy_socks:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    here.send("mark")
    c0 = here.recv()
    trips, end = 0, time.monotonic() + seconds
    sel = selectors.DefaultSelector()
    for s in busy_socks:
        s.sendall(MSG)
        sel.register(s, selectors.EVENT_READ)
    got = {s: 0 for s in busy_socks}
    while time.monotonic() < end:
        for key, _ in sel.select(0.5):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            got[s] += len(s.recv(65536))
            if got[s] >= len(MSG):
                got[s] -= len(MSG)
                trips += 1
                s.sendall(MSG)
    here.send("stop")
    c1 = here.recv()
    for s in socks:
        s.close()
    proc.join(5)
    elapsed = seconds
    return idle_pct, trips / elapsed, 1e6 * (c1 - c0) / max(trips, 1)


def main() -> None:
    idle, busy, seconds = (int(sys.argv[1]) if len(sys.argv) > 1 else 500,
                           int(sys.argv[2]) if len(sys.argv) > 2 else 20,
                           float(sys.argv[3]) if len(sys.argv) > 3 else 2.0)
    kinds = ["asyncio", "selectors"]
    try:
        import uvloop  # noqa: F401
        kinds.append("uvloop")
    except ImportError:
        print("uvloop not importable: skipped")
    for kind in kinds:
        idle_pct, rate, cpu_us = run(kind, idle, busy, seconds)
        print(f"{kind:10s} idle {idle} conns: {idle_pct:5.2f}% CPU | echo {busy} conns: "
              f"{rate:8.0f} round trips/s, {cpu_us:6.1f} us server CPU per trip")


if __name__ == "__main__":
    main()
