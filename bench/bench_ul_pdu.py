"""Per-PDU cost of the archive-side requestor link (``proxy.ul.link``) receiving a data set.

A socket pair; the peer is a forked process writing one C-STORE-RQ command PDU and then
N P-DATA-TF PDUs of one data set (pre-built bytes, batched into large ``sendall``s so
the peer is never the bottleneck); the link reads them with ``read_message`` into a
``DataTarget`` that only counts (no copy). Reported per PDU: wall time and the reading
thread's CPU time (``time.thread_time``), best of R runs. The "send" rows are the other
direction: ``send_message`` of a data set of N fragments from memory (the ``sendmsg``
path), the peer reading and discarding.

``--baseline REV`` also loads ``proxy/ul/link.py`` as it is at git revision REV (e.g.
``main``) and runs the same workload through it, alternating runs, so the ratio new/old
comes from one run on one machine state.

Run: python3 bench/bench_ul_pdu.py [--baseline main] [--runs 5] [--n16k 20000] [--n1m 200]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from proxy.dicom import commands, items, pdu

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
STORE_RQ = commands.c_store_rq(5, CT, "1.2.826.0.1.3680043.8.498.1", "MOVER", 3)


def pdata(cx: int, control: int, fragment: bytes) -> bytes:
    return (struct.pack(">BxL", 0x04, len(fragment) + 6)
            + struct.pack(">LBB", len(fragment) + 2, cx, control) + fragment)


class Count:
    """A DataTarget that keeps nothing: what is measured is the link."""

    def __init__(self) -> None:
        self.bytes = self.fragments = 0

    def write(self, fragment: memoryview) -> int:
        self.bytes += len(fragment)
        self.fragments += 1
        return len(fragment)


def peer(sock: socket.socket, pdu_body: int, n: int) -> None:
    """The child: the command, then ``n`` data PDUs of ``pdu_body`` bytes each."""
    fragment = b"\xa5" * (pdu_body - 6)
    middle, last = pdata(1, 0, fragment), pdata(1, pdu.LAST, fragment)
    per_batch = max(1, (1 << 20) // len(middle))
    sock.sendall(pdata(1, pdu.COMMAND | pdu.LAST, STORE_RQ))
    left = n - 1
    batch = middle * per_batch
    while left >= per_batch:
        sock.sendall(batch)
        left -= per_batch
    sock.sendall(middle * left + last)


def sink(sock: socket.socket, total: int) -> None:
    """The child of a send run: read and discard ``total`` bytes."""
    buffer = memoryview(bytearray(1 << 20))
    while total > 0:
        got = sock.recv_into(buffer)
        if not got:
            return
        total -= got


def make_link(module: ModuleType, sock: socket.socket, max_pdu: int) -> Any:
    """An established link on context 1 (CT, Explicit VR), both sides at ``max_pdu``."""
    if not hasattr(module, "new_association"):           # the link before proxy.dicom drove it
        negotiated = module.Negotiated(max_pdu_length=max_pdu, accepted={1: EXPLICIT})
        link = module.Link(sock, negotiated, max_pdu)
        link.abstract = {1: CT}
        return link
    association = module.new_association()
    association.send(pdu.AssociateRQ("ARCHIVE", "BENCH", (
        items.PresentationContextRQ(1, CT, (EXPLICIT,)),), items.UserInformation(max_pdu)))
    ac = pdu.AssociateAC("ARCHIVE", "BENCH", (items.PresentationContextAC(1, 0, EXPLICIT),),
                         items.UserInformation(max_pdu))
    raw = pdu.encode(ac)
    association.get_buffer()[:len(raw)] = raw
    association.buffer_updated(len(raw))
    assert type(association.next_event()).__name__ == "AssociateAccepted"
    return module.Link(sock, association, module.Negotiated.of(ac))


def one_run(module: ModuleType, pdu_body: int, n: int, data: bytes | None
            ) -> tuple[float, float]:
    """One read (``data`` None) or send run; (wall, CPU) microseconds per PDU."""
    send = data is not None
    ours, theirs = socket.socketpair()
    for s in (ours, theirs):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
    ours.settimeout(30)
    child = os.fork()
    if child == 0:                                   # the peer
        ours.close()
        try:
            if data is not None:
                sink(theirs, 12 + len(STORE_RQ) + n * (pdu_body + 6))
            else:
                peer(theirs, pdu_body, n)
        finally:
            os._exit(0)
    theirs.close()
    try:
        link = make_link(module, ours, max(pdu_body, 16384))
        target = Count()
        wall, cpu = time.perf_counter(), time.thread_time()
        if data is not None:
            link.send_message(1, STORE_RQ, data)
        else:
            message = link.read_message(lambda _cx, _command: target)
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        if not send:
            assert message.command[commands.COMMAND_FIELD] == commands.C_STORE_RQ
            assert target.fragments == n and target.bytes == n * (pdu_body - 6), \
                (target.fragments, target.bytes)
    finally:
        if send:
            ours.shutdown(socket.SHUT_WR)
        os.waitpid(child, 0)
        ours.close()
    return wall / n * 1e6, cpu / n * 1e6


def load_baseline(rev: str) -> ModuleType:
    source = subprocess.run(["git", "show", f"{rev}:proxy/ul/link.py"], check=True,
                            capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent).stdout
    path = Path(tempfile.mkdtemp()) / "baseline_ul_link.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_ul_link", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_ul_link"] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", help="git revision of proxy/ul/link.py to compare with")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--n16k", type=int, default=20000)
    parser.add_argument("--n1m", type=int, default=200)
    args = parser.parse_args()
    from proxy.ul import link as current
    modules: dict[str, ModuleType] = {"new": current}
    if args.baseline:
        modules = {"old": load_baseline(args.baseline), "new": current}
    print(f"{'':>5} {'PDU':>6} {'N':>6} " + " ".join(
        f"{name + ' wall':>10} {name + ' cpu':>10}" for name in modules) + "   (us per PDU, best)")
    for way, label, body, n in (("read", "16 KB", 16384, args.n16k),
                                ("read", "1 MB", 1 << 20, args.n1m),
                                ("send", "16 KB", 16384, args.n16k),
                                ("send", "1 MB", 1 << 20, args.n1m)):
        best = {name: (float("inf"), float("inf")) for name in modules}
        data = b"\xa5" * (n * (body - 6)) if way == "send" else None   # pages touched once
        for _ in range(args.runs):
            for name, module in modules.items():
                wall, cpu = one_run(module, body, n, data)
                best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
        row = f"{way:>5} {label:>6} {n:>6} " + " ".join(f"{w:>10.2f} {c:>10.2f}"
                                                        for w, c in best.values())
        if "old" in best:
            row += (f"   new/old wall {best['new'][0] / best['old'][0]:.2f}"
                    f" cpu {best['new'][1] / best['old'][1]:.2f}")
        print(row, flush=True)


if __name__ == "__main__":
    main()
