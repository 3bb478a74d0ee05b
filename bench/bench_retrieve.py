"""Retrieve benchmark: a study C-MOVEd through the proxy vs directly, and the proxy's memory.

Same peers both ways: one Orthanc archive holding a synthetic CT study (512x512,
16-bit, ~0.5 MB per image) and one DCMTK storescp as the Move Destination.

  direct : movescu → Orthanc, C-MOVE to storescp (Orthanc knows storescp)
  proxy  : movescu → proxy → Orthanc C-GET over the proxy's association → proxy C-STOREs
           to storescp as instances arrive (Orthanc knows nobody)

and a C-GET by DCMTK getscu, from Orthanc directly and relayed through the proxy.

Reported: wall time of the whole C-MOVE (movescu start to final response), MB/s,
the ratio proxy/direct throughput, the time until the first instance file
appears at the destination, and the proxy's CPU time per move. Then the proxy's
resident memory (peak of /proc/<pid>/status VmRSS, sampled every 20 ms) while
moving a small study and a study 10x larger than that — both many times the
proxy's memory window (``[spool] retrieve_memory_bytes``, set to 32 MiB here) —
to a destination that receives without writing (``--ignore``) and to one that
writes every file: flat memory means the study is streamed, never held.

DCMTK's own peers (Orthanc, storescp, movescu) leave Nagle's algorithm on unless
TCP_NODELAY=1 is in their environment; on loopback that costs ~40 ms of
delayed-ACK stall per C-STORE and hides every other cost, so the peers run with
TCP_NODELAY=1 (``--dcmtk-defaults`` to see the stock behaviour).

    python bench/bench_retrieve.py                 # 200 images (~100 MB), ~2 min
    python bench/bench_retrieve.py --full          # 1,000 images (~500 MB), as issue 4 asks
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_store import cpu_seconds, settle_disk

from proxy.tools.synthetic import make_studies, write_studies
from tests.e2e.dcmtk import StoreSCP, movescu
from tests.e2e.orthanc import OrthancArchive
from tests.e2e.ports import LOOPBACK, free_port
from tests.e2e.proxy_harness import ProxyProcess, archive_entry

ROUTE = "PACS_VIA_PROXY"
MEMORY_WINDOW = 32 * 1024 * 1024     # [spool] retrieve_memory_bytes for the benchmark's proxy


def build_study(directory: Path, images: int, seed: str) -> tuple[str, list[Path], int]:
    datasets = make_studies(1, instances_per_series=images, seed=seed, rows=512, cols=512)
    paths = write_studies(directory, datasets)
    from pydicom import dcmread
    study = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    return study, paths, sum(p.stat().st_size for p in paths)


class FirstFile:
    """Time from start() until the first file appears in a directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.seconds: float | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        started = time.perf_counter()

        def watch() -> None:
            while not self._stop.is_set():
                if any(self.directory.iterdir()):
                    self.seconds = time.perf_counter() - started
                    return
                time.sleep(0.002)

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


class PeakRSS:
    """Peak resident set size of a process, sampled from /proc every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kb = 0
        self.baseline_kb = self.sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, self.sample())
            time.sleep(0.02)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self.peak_kb = max(self.peak_kb, self.sample())


def alternate(k: int, first: Callable[[], None], second: Callable[[], None]
              ) -> tuple[Callable[[], None], Callable[[], None]]:
    """Round ``k``'s order: direct first in even rounds, last in odd ones."""
    return (first, second) if k % 2 == 0 else (second, first)


def paired(direct: list[float], proxied: list[float]) -> str:
    """The median of each round's direct time / proxied time, and their range."""
    ratios = sorted(d / p for d, p in zip(direct, proxied, strict=True))
    return f"{statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})"


def timed_move(port: int, called: str, study: str, dest: StoreSCP) -> tuple[float, float | None]:
    for f in dest.output_dir.iterdir():
        f.unlink()
    first = FirstFile(dest.output_dir)
    first.start()
    t0 = time.perf_counter()
    result = movescu(LOOPBACK, port, called, "BENCH", move_destination=dest.aet,
                     keys=[f"StudyInstanceUID={study}"], timeout=900)
    elapsed = time.perf_counter() - t0
    first.stop()
    if result.final_status != 0 or (result.completed or 0) == 0:
        raise SystemExit(f"C-MOVE via {called} failed: {result.output[-2000:]}")
    return elapsed, first.seconds


def timed_get(port: int, called: str, study: str, out: Path) -> float:
    """DCMTK getscu of the study into ``out``: seconds from start to exit."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    args = ["/usr/bin/getscu", "-aet", "BENCH", "-aec", called, "-S",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
            "-od", str(out), LOOPBACK, str(port)]
    t0 = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, timeout=900)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0 or not any(out.iterdir()):
        raise SystemExit(f"C-GET via {called} failed: {done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="images in the timed study")
    parser.add_argument("--full", action="store_true", help="1,000 images (~500 MB)")
    parser.add_argument("--rounds", type=int, default=5, help="paired rounds per path (median)")
    parser.add_argument("--memory-small", type=int, default=140,
                        help="images in the small memory run (0: skip the memory runs)")
    parser.add_argument("--dest-pdu", type=int, default=0,
                        help="storescp's maximum PDU (default: DCMTK's 16384)")
    parser.add_argument("--memory-window", type=int, default=MEMORY_WINDOW // 2**20,
                        help="the proxy's [spool] retrieve_memory_bytes, in MiB")
    parser.add_argument("--dcmtk-defaults", action="store_true",
                        help="leave Nagle on in the DCMTK peers (their stock behaviour)")
    args = parser.parse_args()
    images = 1000 if args.full else args.images
    globals()["MEMORY_WINDOW"] = args.memory_window * 2**20
    if not args.dcmtk_defaults:
        os.environ["TCP_NODELAY"] = "1"       # read by DCMTK in Orthanc, storescp, movescu
    work = Path(tempfile.mkdtemp(prefix="bench-retrieve-"))
    try:
        run(work, images, args.rounds, args.memory_small, args.dcmtk_defaults, args.dest_pdu)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, images: int, rounds: int, small: int, stock: bool, pdu: int) -> None:
    study, paths, size = build_study(work / "timed", images, "bench")
    big = []
    if small:
        big = [build_study(work / f"mem{n}", n, f"mem{n}") for n in (small, small * 10)]
    dest_port = free_port()
    pdu_args = ["--max-pdu", str(pdu)] if pdu else []
    with StoreSCP("WS1", work / "ws1", port=dest_port, extra_args=pdu_args) as dest, \
            StoreSCP("SINK", work / "sink", extra_args=["--ignore"]) as sink, \
            OrthancArchive("PACS", known_modalities={"ws1": ("WS1", LOOPBACK, dest_port)}) as pacs:
        pacs.upload(paths)
        for _, p, _ in big:
            pacs.upload(p)
            for f in p:
                f.unlink()
        rules = {
            "archives": {"pacs": archive_entry(pacs)},
            "destinations": {"ws1": {"ae_title": "WS1", "host": LOOPBACK, "port": dest.port},
                             "sink": {"ae_title": "SINK", "host": LOOPBACK, "port": sink.port}},
            "routes": [{"called_ae": ROUTE, "archives": ["pacs"]}]}
        (work / "spiller").mkdir()
        proxy = ProxyProcess({**rules, "spool": {"retrieve_memory_bytes": MEMORY_WINDOW,
                                                 "dir": str(work / "spool")}}, work)
        proxy.start()
        pid: int = proxy.proc.pid       # type: ignore[union-attr]
        try:
            direct: list[tuple[float, float | None]] = []
            proxied: list[tuple[float, float | None]] = []
            cpu = []

            def move_proxied() -> None:
                before = cpu_seconds(pid)
                proxied.append(timed_move(proxy.port, ROUTE, study, dest))
                cpu.append(cpu_seconds(pid) - before)

            get_direct: list[float] = []
            get_proxied: list[float] = []
            for k in range(rounds):            # paired rounds, the order alternating
                for run in alternate(k, lambda: direct.append(
                        timed_move(pacs.dicom_port, pacs.aet, study, dest)), move_proxied):
                    settle_disk()
                    run()
            for k in range(rounds):
                for run in alternate(k, lambda: get_direct.append(
                        timed_get(pacs.dicom_port, pacs.aet, study, work / "got")),
                        lambda: get_proxied.append(
                            timed_get(proxy.port, ROUTE, study, work / "got"))):
                    settle_disk()
                    run()
            memory = []
            spiller = ProxyProcess({**rules, "spool": {
                "retrieve_memory_bytes": MEMORY_WINDOW, "retrieve_spill_after": 0,
                "dir": str(work / "spill-spool")}}, work / "spiller")
            spiller.start()
            try:
                for mem_study, _, mem_size in big:
                    for target, via in (("SINK", proxy), (dest.aet, proxy), (dest.aet, spiller)):
                        memory.append(memory_run(via, target, mem_study, mem_size, dest))
            finally:
                spiller.stop()
        finally:
            proxy.stop()
    report(images, size, direct, proxied, cpu, memory, stock, pdu)
    gd, gp = statistics.median(get_direct), statistics.median(get_proxied)
    print(f"\n### C-GET of the same study by DCMTK getscu (writing files; median of "
          f"{len(get_direct)})\n")
    print("| path | seconds | MB/s |")
    print("| --- | ---: | ---: |")
    print(f"| direct: getscu ← Orthanc | {gd:.2f} | {size / 1e6 / gd:.1f} |")
    print(f"| proxy: getscu ← proxy ← Orthanc (C-GET relayed) | {gp:.2f} | "
          f"{size / 1e6 / gp:.1f} |")
    print(f"\nthroughput ratio proxy/direct: **{gd / gp:.2f}** (median times); median of "
          f"the rounds' own ratios {paired(get_direct, get_proxied)}")


def memory_run(proxy: ProxyProcess, target: str, study: str, size: int,
               dest: StoreSCP) -> tuple[str, int, int, int, int, float, int, int]:
    """One C-MOVE through ``proxy`` to ``target`` with the proxy's peak RSS sampled."""
    for f in dest.output_dir.iterdir():
        f.unlink()
    pid: int = proxy.proc.pid       # type: ignore[union-attr]
    with PeakRSS(pid) as rss:
        t0 = time.perf_counter()
        result = movescu(LOOPBACK, proxy.port, ROUTE, "BENCH", move_destination=target,
                         keys=[f"StudyInstanceUID={study}"], timeout=900)
        took = time.perf_counter() - t0
    if result.final_status != 0:
        raise SystemExit(f"memory run failed: {result.output[-2000:]}")
    op = proxy.operations("C-MOVE")[-1]
    spill_at_once = proxy.rules["spool"].get("retrieve_spill_after") == 0
    label = ("storescp --ignore" if target == "SINK" else "storescp writing files"
             + (", spill_after = 0" if spill_at_once else ""))
    return (label, result.completed or 0, size, rss.baseline_kb, rss.peak_kb, took,
            int(op.get("buffer_peak_memory_bytes", 0)), int(op.get("buffer_spilled", 0)))


def report(images: int, size: int, direct: list[tuple[float, float | None]],
           proxied: list[tuple[float, float | None]], cpu: list[float],
           memory: list[tuple[str, int, int, int, int, float, int, int]], stock: bool,
           pdu: int) -> None:
    mb = size / 1e6
    d = statistics.median(t for t, _ in direct)
    p = statistics.median(t for t, _ in proxied)
    fd = statistics.median(f for _, f in direct if f is not None)
    fp = statistics.median(f for _, f in proxied if f is not None)
    peers = "DCMTK defaults (Nagle on)" if stock else "DCMTK peers with TCP_NODELAY=1"
    peers += f", destination max PDU {pdu or 16384}"
    print(f"\n### C-MOVE of one study: {images} CT images 512x512, {mb:.0f} MB ({peers}; "
          f"median of {len(direct)})\n")
    print("| path | seconds | MB/s | images/s | first instance at destination |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| direct: Orthanc C-MOVE → storescp | {d:.2f} | {mb / d:.1f} | {images / d:.0f} "
          f"| {fd * 1000:.0f} ms |")
    print(f"| proxy: C-MOVE → C-GET + C-STORE → storescp | {p:.2f} | {mb / p:.1f} | "
          f"{images / p:.0f} | {fp * 1000:.0f} ms |")
    ratios = paired([t for t, _ in direct], [t for t, _ in proxied])
    print(f"\nthroughput ratio proxy/direct: **{d / p:.2f}** (median times; median of the "
          f"rounds' own ratios {ratios}); first instance: proxy "
          f"{fp * 1000:.0f} ms vs direct {fd * 1000:.0f} ms; proxy CPU per move "
          f"{statistics.median(cpu):.2f} s ({statistics.median(cpu) / images * 1000:.2f} ms "
          "per image)")
    if memory:
        print(f"\n### Proxy resident memory while moving a study (retrieve_memory_bytes = "
              f"{MEMORY_WINDOW / 2**20:.0f} MiB)\n")
        print("| study | MB | destination | proxy RSS before | proxy peak RSS | "
              "peak held in memory | instances spilled to files | seconds |")
        print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
        for kind, n, mem_size, base, peak, took, held, spilled in memory:
            print(f"| {n} images | {mem_size / 1e6:.0f} | {kind} | {base / 1024:.0f} MB | "
                  f"{peak / 1024:.0f} MB | {held / 2**20:.1f} MiB | {spilled} | {took:.1f} |")
        growth = {size: max(m[4] - m[3] for m in memory if m[2] == size)
                  for size in dict.fromkeys(m[2] for m in memory)}
        print("\npeak RSS above the proxy's idle RSS: " + ", ".join(
            f"{g / 1024:.0f} MB for a {size / 1e6:.0f} MB study" for size, g in growth.items())
            + f" — bounded by the {MEMORY_WINDOW / 2**20:.0f} MiB window, whatever the study "
            f"size (the largest is {max(growth) / MEMORY_WINDOW:.0f}x the window)")


if __name__ == "__main__":
    main()
