"""Benchmark: federated C-FIND through the proxy vs the archives queried directly.

Run: ``python bench/bench_federation.py [--rounds N]`` (about 1-2 minutes). Prints markdown.

1. Three archives answering in parallel, each queried directly (the slowest sets the bar),
   then all three through one federated AE title: total time and time to first match,
   ratio federated / slowest direct (target <= 1.25x). Two set-ups:
   a. "PACS-like": pynetdicom archives (one process each) that take 0.5 / 1.0 / 1.5 s to
      search before streaming 100 study matches each (disjoint studies);
   b. "Orthanc": three real Orthanc 1.10.1 archives, 200 studies each (disjoint), which
      answer in a few hundred milliseconds, so per-match relay cost shows.
2. A silently capped Orthanc (700 studies, LimitFindResults 500): direct gets 500, through
   the proxy all 700 (cap recovery), with the time it costs.
   Proxy CPU per relayed match (from /proc) shows where the time goes when archives are fast.
3. Merging 3 x 5,000 study matches (one third shared by two archives) in process: the
   streaming de-duplicator and the "complete" merge, in matches per second.

The workstation is a pynetdicom SCU in this process for every measurement (same client,
same archives, with and without the proxy); the proxy is ``dicom-proxy run`` in a subprocess.
Times are medians (after a warm-up run) over ``--rounds`` runs (half as many for set-up b
and the cap), measured with time.perf_counter; the machine's load average is printed.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydicom import Dataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402
from pynetdicom.dsutils import decode, encode  # noqa: E402
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND  # noqa: E402

from proxy.query.merging import Deduplicator, merge_all  # noqa: E402
from proxy.tools.synthetic import make_studies, synthetic_uid  # noqa: E402
from tests.e2e.orthanc import OrthancArchive  # noqa: E402
from tests.e2e.proxy_harness import ProxyProcess, archive_entry  # noqa: E402

LOOPBACK = "127.0.0.1"
MATCHES = 100                                   # per PACS-like archive
ORTHANC_STUDIES = 200                           # per Orthanc archive


# -- a PACS-like archive: search latency, then a stream of matches (own process) ---------

def _study(seed: str, k: int) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyInstanceUID = synthetic_uid(seed, "study", k)
    ds.PatientID = f"PAT{k:05d}"
    ds.PatientName = f"DOE^JOHN{k}"
    ds.StudyDate = f"2020{1 + k % 12:02d}{1 + k % 28:02d}"
    ds.StudyDescription = f"Synthetic study {k}"
    ds.ModalitiesInStudy = "CT"
    ds.NumberOfStudyRelatedInstances = "1"
    ds.RetrieveAETitle = "PACS"
    return ds


def serve_archive(aet: str, delay: float, count: int, seed: str) -> None:
    """Child process: a Q/R SCP that searches for ``delay`` s, then sends ``count`` matches."""
    matches = [_study(seed, k) for k in range(count)]

    def on_find(event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        time.sleep(delay)                       # the archive's database search
        for ds in matches:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, ds

    ae = AE(aet)
    ae.add_supported_context(FIND, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    server = ae.start_server((LOOPBACK, 0), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)])
    print(server.server_address[1], flush=True)
    sys.stdin.read()                            # until the parent closes our stdin
    server.shutdown()


class LatencyArchive:
    def __init__(self, aet: str, delay: float, count: int, seed: str) -> None:
        self.aet = aet
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", aet, str(delay), str(count), seed],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.dicom_port = int(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


# -- the workstation ---------------------------------------------------------------------

def query(port: int, called: str) -> tuple[float, float, int, int]:
    """One STUDY-level C-FIND: (seconds to first match, total seconds, matches, final status)."""
    ae = AE("BENCH_WS")
    ae.add_requested_context(FIND, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])  # as findscu
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate",
                    "StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedInstances",
                    "RetrieveAETitle"):
        setattr(identifier, keyword, "")
    started = time.perf_counter()
    assoc = ae.associate(LOOPBACK, port, ae_title=called)
    assert assoc.is_established, f"cannot associate with {called} on {port}"
    first, count, final = 0.0, 0, -1
    for status, ds in assoc.send_c_find(identifier, FIND):
        if status and status.Status in (0xFF00, 0xFF01) and ds is not None:
            count += 1
            if count == 1:
                first = time.perf_counter() - started
        elif status:
            final = int(status.Status)
    assoc.release()
    return first, time.perf_counter() - started, count, final


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def medians(rounds: int, run: Callable[[], tuple[float, float, int, int]],
            ) -> tuple[float, float, int, int]:
    """Median first-match and total times of ``rounds`` runs (after one warm-up run)."""
    run()
    runs = [run() for _ in range(rounds)]
    return (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs),
            runs[-1][2], runs[-1][3])


def federation_table(title: str, archives: dict[str, object], rounds: int,
                     workdir: Path) -> list[str]:
    rules = {"archives": {n: archive_entry(a) for n, a in archives.items()},
             "routes": [{"called_ae": "FEDERATION", "archives": list(archives)}],
             "log": {"phi": "hash"}}
    proxy = ProxyProcess(rules, workdir).start()
    rows = []
    try:
        direct = {}
        for name, archive in archives.items():
            port, aet = archive.dicom_port, archive.aet  # type: ignore[attr-defined]
            direct[name] = medians(rounds, lambda p=port, t=aet: query(p, t))
        assert proxy.proc is not None
        cpu_before = _cpu_seconds(proxy.proc.pid)
        federated = medians(rounds, lambda: query(proxy.port, "FEDERATION"))
        cpu = (_cpu_seconds(proxy.proc.pid) - cpu_before) / (rounds + 1)
    finally:
        proxy.stop()
    slowest_name = max(direct, key=lambda n: direct[n][1])
    slowest = direct[slowest_name]
    rows.append(f"\n### {title}\n")
    rows.append("| query | matches | first match (s) | total (s) |")
    rows.append("| --- | ---: | ---: | ---: |")
    for name, (first, total, count, _) in direct.items():
        rows.append(f"| direct {name} | {count} | {first:.3f} | {total:.3f} |")
    rows.append(f"| sum of the three direct | | | {sum(d[1] for d in direct.values()):.3f} |")
    first, total, count, final = federated
    rows.append(f"| **federated, through the proxy** | {count} | {first:.3f} | {total:.3f} |")
    rows.append("")
    rows.append(f"- federated / slowest direct ({slowest_name}): **{total / slowest[1]:.2f}x** "
                f"total (target <= 1.25x); final status 0x{final:04X}")
    rows.append(f"- time to first match: proxy {first * 1000:.0f} ms vs fastest direct "
                f"{min(d[0] for d in direct.values()) * 1000:.0f} ms")
    rows.append(f"- proxy CPU per federated query {cpu:.2f} s, {cpu / max(count, 1) * 1000:.1f} "
                "ms per relayed match")
    return rows


def capped_table(rounds: int, workdir: Path) -> list[str]:
    archive = OrthancArchive("CAPPED", limit_find_results=500).start()
    try:
        archive.upload(make_studies(700, seed="bench-capped", rows=8, cols=8))
        rules = {"archives": {"capped": archive_entry(archive, max_results=500)},
                 "routes": [{"called_ae": "CAPPED_VIA_PROXY", "archives": ["capped"]}]}
        proxy = ProxyProcess(rules, workdir).start()
        try:
            direct = medians(rounds, lambda: query(archive.dicom_port, archive.aet))
            proxied = medians(rounds, lambda: query(proxy.port, "CAPPED_VIA_PROXY"))
        finally:
            proxy.stop()
    finally:
        archive.close()
    return ["\n### Silent cap: Orthanc holding 700 studies, LimitFindResults = 500\n",
            "| query | matches | final status | first match (s) | total (s) |",
            "| --- | ---: | --- | ---: | ---: |",
            f"| direct | {direct[2]} | 0x{direct[3]:04X} | {direct[0]:.3f} | {direct[1]:.3f} |",
            f"| through the proxy (recovered) | {proxied[2]} | 0x{proxied[3]:04X} | "
            f"{proxied[0]:.3f} | {proxied[1]:.3f} |"]


def merge_table(per_archive: int = 5000) -> list[str]:
    """3 archives x ``per_archive`` matches; archive i+1 repeats a third of archive i's."""
    share = per_archive // 3
    answers: list[Dataset] = []
    for i in range(3):
        ks = range(i * (per_archive - share), i * (per_archive - share) + per_archive)
        answers += [_wire(_study("bench-merge", k)) for k in ks]
    unique = len({str(ds.StudyInstanceUID) for ds in answers})
    rows = ["\n### Merging 3 x 5,000 study matches (in process)\n",
            "| path | matches in | matches out | seconds | matches/s |",
            "| --- | ---: | ---: | ---: | ---: |"]
    paths: list[tuple[str, Callable[[list[Dataset]], int]]] = [
        ("stream: Deduplicator.offer (route default)", _stream),
        ("complete: merge_all(consume=True) (find.py)", _complete)]
    for label, run in paths:
        times, out = [], 0
        for _ in range(3):
            batch = copy.deepcopy(answers)          # consume=True may change its input
            started = time.perf_counter()
            out = run(batch)
            times.append(time.perf_counter() - started)
        best = min(times)
        rows.append(f"| {label} | {len(answers)} | {out} | {best:.3f} | "
                    f"{len(answers) / best:,.0f} |")
    rows.append(f"\n({unique} distinct studies, decoded from the wire as the proxy gets them; "
                "best of 3 runs.)")
    return rows


def _wire(ds: Dataset) -> Dataset:
    """The dataset as the proxy gets it from an archive: decoded from bytes, elements raw."""
    decoded = decode(BytesIO(encode(ds, False, True)), False, True)
    assert decoded is not None
    return decoded


def _stream(answers: list[Dataset]) -> int:
    dedupe = Deduplicator("STUDY")
    return sum(1 for ds in answers if dedupe.offer(ds))


def _complete(answers: list[Dataset]) -> int:
    return len(merge_all("STUDY", answers, consume=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        aet, delay, count, seed = args.serve
        serve_archive(aet, float(delay), int(count), seed)
        return
    started = time.perf_counter()
    out = ["## bench_federation", ""]
    with tempfile.TemporaryDirectory(prefix="bench-federation-") as tmp:
        work = Path(tmp)
        latency = {f"pacs_{i}": LatencyArchive(f"PACS_{i}", 0.5 * i, MATCHES, f"bench-{i}")
                   for i in (1, 2, 3)}
        try:
            (work / "a").mkdir()
            out += federation_table(f"PACS-like archives: 0.5 / 1.0 / 1.5 s search, {MATCHES} "
                                    "matches each", dict(latency), args.rounds, work / "a")
        finally:
            for archive in latency.values():
                archive.close()
        orthancs = {f"orthanc_{i}": OrthancArchive(f"ORTHANC_{i}").start() for i in (1, 2, 3)}
        try:
            for i, archive in enumerate(orthancs.values(), 1):
                archive.upload(make_studies(ORTHANC_STUDIES, seed=f"bench-orthanc-{i}", rows=8,
                                            cols=8))
            (work / "b").mkdir()
            out += federation_table(f"Three Orthanc archives, {ORTHANC_STUDIES} studies each",
                                    dict(orthancs), max(1, args.rounds // 2), work / "b")
        finally:
            for archive in orthancs.values():
                archive.close()
        (work / "c").mkdir()
        out += capped_table(max(1, args.rounds // 2), work / "c")
    out += merge_table()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    out.append(f"\n(bench ran {time.perf_counter() - started:.0f} s; {os.cpu_count()} CPUs, "
               f"load average at the end {load})")
    print("\n".join(out))


if __name__ == "__main__":
    main()
