"""Benchmark: N silent, established workstation associations, held against the proxy vs Orthanc.

Run: ``python bench/bench_idle.py [--steps 0,10,100,500] [--window 10] [--echoes 7]``
(about 3-5 minutes with the defaults). Prints a markdown table.

What a viewer does all day: associate, then say nothing. For each step N, N TCP
connections each send a real A-ASSOCIATE-RQ (one Verification presentation context,
hand-made bytes on a raw socket, so the benchmark itself holds thousands of them
without a thread each), read the A-ASSOCIATE-AC and then stay silent. Two servers:

  proxy  : ``dicom-proxy run`` in a subprocess, route RELAY to the Orthanc below
           (``max_associations``/``max_connections`` raised to allow N, and its
           ``acse_timeout``/``dimse_timeout``/``network_timeout`` long enough to keep them);
  direct : the Orthanc 1.10.1 the proxy relays to ("DicomScpTimeout" raised likewise).
           Orthanc has no association cap, but its "DicomThreadsCount" worker threads (default
           4) take turns at every open association, waiting up to 1 s on each silent one: with
           the default, a new association beside N idle ones waits about N/4 seconds (measured
           2.0 s beside 5, 9.0 s beside 20). The benchmark gives it ``--orthanc-threads``
           (default: the largest N + 8), so every association has a worker of its own;
           ``--orthanc-threads 4`` shows the stock behaviour.

Measured per server and step, after the N associations are established and 2 s settled:

- CPU of the server process over ``--window`` seconds (``/proc/<pid>/stat`` utime+stime
  of every thread), as % of one core: what holding N idle associations costs;
- its resident memory (VmRSS) and thread count (``/proc/<pid>/status``);
- one new association + C-ECHO + release beside the N idle ones (median of ``--echoes``,
  raw socket from connect to A-RELEASE-RP, status checked), and that median / the same
  at N=0: the "beside N vs alone" ratio. Through the proxy twice: to a route answering
  C-ECHO itself (``echo = "local"``: the proxy's own cost) and to RELAY, which C-ECHOes
  Orthanc (``echo = "upstream"``, the default);
- how many of the N associations were still open at the end of the step ("held").

Issue #11 targets: 500 idle <= 5% of one core in total; a new association beside them
<= 1.3x its time alone. The machine's load average is printed: other processes share it.
"""

from __future__ import annotations

import argparse
import os
import resource
import select
import socket
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.orthanc import OrthancArchive  # noqa: E402
from tests.e2e.proxy_harness import ProxyProcess, archive_entry  # noqa: E402

LOOPBACK = "127.0.0.1"
HOLD_SECONDS = 3600                    # server timeouts: idle associations must survive the run
APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
VERIFICATION = b"1.2.840.10008.1.1"
IMPLICIT_VR_LE = b"1.2.840.10008.1.2"
IMPLEMENTATION_UID = b"1.2.826.0.1.3680043.9.3811.1"
ESTABLISH_BATCH = 25                   # A-ASSOCIATE-RQs in flight at once while opening


# -- PDUs by hand (PS3.8 section 9.3), just enough for A-ASSOCIATE, C-ECHO and release ------

def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def associate_rq(called: str, calling: str) -> bytes:
    """A-ASSOCIATE-RQ proposing Verification in Implicit VR Little Endian (context ID 1)."""
    context = (struct.pack(">BBBB", 1, 0, 0, 0) + _item(0x30, VERIFICATION)
               + _item(0x40, IMPLICIT_VR_LE))
    user = _item(0x51, struct.pack(">I", 16384)) + _item(0x52, IMPLEMENTATION_UID)
    body = (struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode()
            + bytes(32) + _item(0x10, APPLICATION_CONTEXT) + _item(0x20, context)
            + _item(0x50, user))
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def _element(group: int, elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, elem, len(value)) + value


def echo_rq(message_id: int) -> bytes:
    """P-DATA-TF carrying a C-ECHO-RQ command set (Implicit VR LE, PS3.7 9.3.5)."""
    rest = (_element(0, 0x0002, VERIFICATION + b"\0")
            + _element(0, 0x0100, struct.pack("<H", 0x0030))
            + _element(0, 0x0110, struct.pack("<H", message_id))
            + _element(0, 0x0800, struct.pack("<H", 0x0101)))
    command = _element(0, 0x0000, struct.pack("<I", len(rest))) + rest
    pdv = struct.pack(">IBB", len(command) + 2, 1, 0x03) + command   # command, last fragment
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


RELEASE_RQ = struct.pack(">BBI", 0x05, 0, 4) + bytes(4)


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    header = _read_exactly(sock, 6)
    kind, _, length = struct.unpack(">BBI", header)
    return kind, _read_exactly(sock, length)


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("peer closed the connection")
        data += chunk
    return bytes(data)


def check_accepted(kind: int, body: bytes) -> None:
    """Raise unless the PDU is an A-ASSOCIATE-AC accepting presentation context 1."""
    if kind != 0x02:
        raise ConnectionError(f"association not accepted: PDU type 0x{kind:02x} {body[:16].hex()}")
    offset = 68                                           # fixed fields of the AC
    while offset + 4 <= len(body):
        item, _, length = struct.unpack(">BBH", body[offset:offset + 4])
        if item == 0x21:
            if body[offset + 6] != 0:
                raise ConnectionError(f"Verification context refused (result {body[offset + 6]})")
            return
        offset += 4 + length
    raise ConnectionError("A-ASSOCIATE-AC without a presentation context")


def command_status(body: bytes) -> int:
    """The Status (0000,0900) of the single-PDV command set in a P-DATA-TF body."""
    offset = 6                                            # PDV length, context ID, header
    while offset + 8 <= len(body):
        group, elem, length = struct.unpack("<HHI", body[offset:offset + 8])
        if (group, elem) == (0, 0x0900):
            return int(struct.unpack("<H", body[offset + 8:offset + 10])[0])
        offset += 8 + length
    raise ValueError("no Status in the response command set")


def echo_once(port: int, called: str) -> float:
    """Associate, C-ECHO, release on a fresh connection: seconds, connect to A-RELEASE-RP."""
    started = time.perf_counter()
    with socket.create_connection((LOOPBACK, port), timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(associate_rq(called, "BENCH_ECHO"))
        check_accepted(*read_pdu(sock))
        sock.sendall(echo_rq(1))
        kind, body = read_pdu(sock)
        if kind != 0x04 or (status := command_status(body)) != 0:
            raise RuntimeError(f"C-ECHO via {called} failed: PDU 0x{kind:02x} {body[:40].hex()}")
        sock.sendall(RELEASE_RQ)
        kind, _ = read_pdu(sock)
        if kind != 0x06:
            raise RuntimeError(f"release via {called} answered PDU 0x{kind:02x}")
        elapsed = time.perf_counter() - started
    assert status == 0
    return elapsed


# -- the silent workstations -----------------------------------------------------------------

class IdleAssociations:
    """Raw sockets each holding an established association, saying nothing."""

    def __init__(self, port: int, called: str) -> None:
        self.port = port
        self.called = called
        self.sockets: list[socket.socket] = []

    def grow_to(self, count: int) -> None:
        while len(self.sockets) < count:
            batch = []
            for k in range(min(ESTABLISH_BATCH, count - len(self.sockets))):
                sock = socket.create_connection((LOOPBACK, self.port), timeout=120)
                sock.sendall(associate_rq(self.called, f"IDLE{len(self.sockets) + k:05d}"))
                batch.append(sock)
            for sock in batch:
                check_accepted(*read_pdu(sock))
                self.sockets.append(sock)

    def still_open(self) -> int:
        """Sockets on which the server has sent nothing (no release, abort or close)."""
        readable, _, _ = select.select(self.sockets, [], [], 0) if self.sockets else ([], [], [])
        return len(self.sockets) - len(readable)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()


# -- the server process, from /proc ------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, all threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def alive(pid: int) -> None:
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    if state in ("Z", "X"):
        raise RuntimeError(f"server process {pid} died (state {state})")


@dataclass
class Step:
    idle: int
    held: int
    cpu_percent: float
    rss_mb: float
    threads: int
    echo: dict[str, float]                # called AE -> median seconds of a new association


def timed_echoes(port: int, called: str, echoes: int) -> float:
    """Median seconds of ``echoes`` new associations (after a warm-up); NaN if one failed."""
    try:
        echo_once(port, called)
        return statistics.median(echo_once(port, called) for _ in range(echoes))
    except (OSError, RuntimeError) as exc:       # refused, reset, timed out, wrong answer
        print(f"  new association to {called} on port {port} failed: {exc!r}",
              file=sys.stderr, flush=True)
        return float("nan")


def measure(pid: int, idle: IdleAssociations, n: int, window: float, echoes: int,
            echo_targets: dict[str, tuple[int, str]]) -> Step:
    idle.grow_to(n)
    alive(pid)
    time.sleep(2.0)                       # let association set-up work finish before the window
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(window)                    # the measurement itself: nothing happens on purpose
    cpu_percent = 100 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
    rss_mb = status_field(pid, "VmRSS") / 1024
    threads = status_field(pid, "Threads")
    alive(pid)
    medians = {label: timed_echoes(port, called, echoes)
               for label, (port, called) in echo_targets.items()}
    return Step(n, idle.still_open(), cpu_percent, rss_mb, threads, medians)


def run_server(name: str, pid: int, port: int, called: str, steps: list[int], window: float,
               echoes: int, echo_targets: dict[str, tuple[int, str]]) -> list[Step]:
    idle = IdleAssociations(port, called)
    results = []
    try:
        for n in steps:
            step = measure(pid, idle, n, window, echoes, echo_targets)
            print(f"  {name}: N={n} held={step.held} cpu={step.cpu_percent:.1f}% "
                  f"rss={step.rss_mb:.0f} MB threads={step.threads} "
                  + " ".join(f"{k}={v * 1000:.1f} ms" for k, v in step.echo.items()),
                  file=sys.stderr, flush=True)
            results.append(step)
    finally:
        idle.close()
    return results


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="0,10,100,500",
                        help="numbers of idle associations, comma-separated, ascending")
    parser.add_argument("--window", type=float, default=10.0, help="CPU window per step, seconds")
    parser.add_argument("--echoes", type=int, default=7, help="new associations timed per step")
    parser.add_argument("--orthanc-threads", type=int, default=0,
                        help='Orthanc "DicomThreadsCount" (default: largest N + 8)')
    parser.add_argument("--servers", default="proxy,direct",
                        help="which to measure: proxy, direct or both (comma-separated)")
    args = parser.parse_args()
    steps = sorted({int(s) for s in args.steps.split(",")} | {0})
    top = steps[-1]
    orthanc_threads = args.orthanc_threads or top + 8
    raise_fd_limit(3 * top + 256)         # the proxy and Orthanc inherit the limit
    load_before = load_average()

    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp, OrthancArchive(
            "PACS_BENCH", extra_config={"DicomScpTimeout": HOLD_SECONDS,
                                        "DicomThreadsCount": orthanc_threads}) as archive:
        proxy = ProxyProcess({
            "proxy": {"ae_title": "QR_PROXY", "max_associations": top + 16,
                      "max_connections": top + 32, "acse_timeout": HOLD_SECONDS,
                      "dimse_timeout": HOLD_SECONDS, "network_timeout": HOLD_SECONDS},
            "metrics": {"enabled": False},
            "archives": {"pacs": archive_entry(archive, timeout=60)},
            "routes": [{"called_ae": "RELAY", "archives": ["pacs"]},
                       {"called_ae": "ECHO_LOCAL", "archives": ["pacs"], "echo": "local"}],
        }, Path(tmp)).start()
        results: dict[str, list[Step]] = {}
        try:
            assert proxy.proc is not None and archive._proc is not None
            if "proxy" in args.servers:
                print("measuring the proxy ...", file=sys.stderr, flush=True)
                results["proxy"] = run_server(
                    "proxy", proxy.proc.pid, proxy.port, "RELAY", steps, args.window,
                    args.echoes, {"local": (proxy.port, "ECHO_LOCAL"),
                                  "upstream": (proxy.port, "RELAY")})
            if "direct" in args.servers:
                print("measuring Orthanc directly ...", file=sys.stderr, flush=True)
                results["Orthanc direct"] = run_server(
                    "direct", archive._proc.pid, archive.dicom_port, archive.aet, steps,
                    args.window, args.echoes, {"direct": (archive.dicom_port, archive.aet)})
        except BaseException:
            print(f"Orthanc log tail:\n{archive.log_tail(20)}", file=sys.stderr)
            raise
        finally:
            code = proxy.stop()
        if code != 0:
            raise RuntimeError(f"proxy exited {code}: {proxy.stderr()[-1000:]}")

    print(f"### Up to {top} silent associations, loopback; CPU over {args.window:g} s; "
          f"new association + C-ECHO + release: median of {args.echoes}\n")
    print(f"Load average before: {load_before}; after: {load_average()} (2 cores, shared). "
          f"Orthanc DicomThreadsCount = {orthanc_threads}.\n")
    print("| idle N | server | held | CPU, % of one core | per idle assoc. | RSS | threads "
          "| new assoc. + C-ECHO | vs alone | same, C-ECHO relayed upstream | vs alone |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for index, n in enumerate(steps):
        for label, measured in results.items():
            keys = ("local", "upstream") if label == "proxy" else ("direct",)
            step, alone = measured[index], measured[0]
            per = f"{(step.cpu_percent - alone.cpu_percent) / n:.2f}%" if n else ""
            cells = [f"{step.echo[k] * 1000:.1f} ms | {step.echo[k] / alone.echo[k]:.2f}x"
                     for k in keys] + ["- | -"] * (2 - len(keys))
            print(f"| {n} | {label} | {step.held}/{n} | {step.cpu_percent:.1f}% | {per} "
                  f"| {step.rss_mb:.0f} MB | {step.threads} | {' | '.join(cells)} |")
    if "proxy" in results:
        last, first = results["proxy"][-1], results["proxy"][0]
        print(f"\nProxy beside {top} idle: {last.cpu_percent:.1f}% of one core (target <= 5%);"
              f" a new association {last.echo['local'] / first.echo['local']:.2f}x its time "
              "alone (target <= 1.3x).")
    print("'vs alone' divides by the same server's N=0 row; 'per idle assoc.' is (CPU - CPU "
          "at N=0) / N; the proxy's C-ECHO is answered by the proxy (route echo = \"local\") "
          "or relayed to Orthanc (echo = \"upstream\").")
    return 0


if __name__ == "__main__":
    sys.exit(main())
