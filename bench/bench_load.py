"""Benchmark: W workstations at once, each looping C-FIND and C-GET, through the proxy vs direct.

Run: ``python bench/bench_load.py [--workstations 64] [--duration 60]`` (about 2 x duration
plus a minute of set-up). Prints a markdown table.

The archive is one real Orthanc 1.10.1 (stock DICOM settings: "DicomThreadsCount" 4)
holding ``--studies`` small CT studies (2 images of 64x64 each) spread over
``--patients`` patients; the proxy is ``dicom-proxy run`` in a subprocess with one relay
route to it and its default limits (``max_associations`` 64; ``--max-associations`` to
change it). Each workstation is a thread of this process that runs DCMTK tools, as a
viewer's user would, one after the other until ``--duration`` seconds have passed (or
``--max-loops`` loops, whichever comes first), each loop:

  1. ``/usr/bin/findscu``: study-level C-FIND by PatientID (a few matches each),
  2. ``/usr/bin/getscu``: C-GET of one of those studies (2 instances),

each a new process and association. DCMTK tools block on their sockets; a pynetdicom SCU
per workstation would poll (a thread busy per association), and 64 of them would take
the 2 cores from the servers being measured. The same load then runs directly against
the same Orthanc. Counted per operation type: operations completed, failures (a final
status other than Success, fewer or more matches/instances than the archive holds, a
rejected, aborted or refused association, a tool timing out) and latency p50/p99 (the
tool's wall time: process start, association, operation, release). Ratios are
proxy / direct. CPU of the proxy, Orthanc and the DCMTK tools over each phase (from
/proc and getrusage) and the machine's load average are printed: it is shared.
Proxy log lines of severity warning or error during the load are counted by event, with
the first of each kind quoted, so a failure can be traced.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydicom import Dataset  # noqa: E402

from proxy.tools.synthetic import make_studies  # noqa: E402
from tests.e2e.dcmtk import DcmtkResult, findscu, getscu  # noqa: E402
from tests.e2e.orthanc import OrthancArchive  # noqa: E402
from tests.e2e.proxy_harness import ProxyProcess, archive_entry  # noqa: E402

LOOPBACK = "127.0.0.1"
INSTANCES_PER_STUDY = 2
TOOL_TIMEOUT = 60.0                    # seconds a findscu/getscu may take before it counts failed
OPERATIONS = ("C-FIND", "C-GET")


@dataclass(frozen=True)
class Catalogue:
    """What the archive holds: studies per patient, instances per study."""

    studies_by_patient: dict[str, list[str]]
    instances_by_study: dict[str, int]

    @classmethod
    def of(cls, datasets: list[Dataset]) -> Catalogue:
        studies: dict[str, set[str]] = {}
        instances: Counter[str] = Counter()
        for ds in datasets:
            studies.setdefault(str(ds.PatientID), set()).add(str(ds.StudyInstanceUID))
            instances[str(ds.StudyInstanceUID)] += 1
        return cls({p: sorted(s) for p, s in sorted(studies.items())}, dict(instances))


@dataclass
class Tally:
    """Latencies of successful operations and failure reasons, per operation type."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {o: [] for o in OPERATIONS})
    failures: dict[str, Counter[str]] = field(
        default_factory=lambda: {o: Counter() for o in OPERATIONS})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, operation: str, seconds: float, failure: str | None) -> None:
        with self.lock:
            if failure is None:
                self.latencies[operation].append(seconds)
            else:
                self.failures[operation][failure] += 1


def why_failed(result: DcmtkResult, expected: int, found: int, what: str) -> str | None:
    """None for a complete Success; otherwise a short reason naming the status or the fault."""
    if result.association_rejected:
        return f"association rejected ({result.rejection_reason})"
    if result.connection_failed:
        return "connection failed"
    if result.association_aborted:
        return "association aborted by the peer"
    if result.final_status is None:
        return f"no final response (exit {result.returncode})"
    if result.final_status != 0:
        return f"final status 0x{result.final_status:04X}"
    if found != expected:
        return f"{found} {what} instead of {expected}"
    if result.returncode != 0:
        return f"exit status {result.returncode}"
    return None


def timed(tally: Tally, operation: str, run: Callable[[], str | None]) -> None:
    started = time.perf_counter()
    try:
        failure = run()
    except subprocess.TimeoutExpired:
        failure = f"no answer within {TOOL_TIMEOUT:g} s"
    tally.record(operation, time.perf_counter() - started, failure)


def workstation(index: int, port: int, called: str, catalogue: Catalogue, deadline: float,
                max_loops: int, tally: Tally) -> None:
    """One workstation: C-FIND a patient's studies, C-GET one of them; again until the deadline."""
    patients = list(catalogue.studies_by_patient)
    calling = f"WS{index:03d}"
    for loop in range(max_loops):
        if time.monotonic() >= deadline:
            return
        patient = patients[(index + loop) % len(patients)]
        studies = catalogue.studies_by_patient[patient]
        study = studies[(index + loop) % len(studies)]

        def find(patient: str = patient, studies: list[str] = studies) -> str | None:
            result = findscu(LOOPBACK, port, called, calling, timeout=TOOL_TIMEOUT,
                             keys=[f"PatientID={patient}", "StudyInstanceUID", "StudyDate"])
            return why_failed(result, len(studies), len(result.identifiers), "matches")

        def get(study: str = study) -> str | None:
            result = getscu(LOOPBACK, port, called, calling, timeout=TOOL_TIMEOUT,
                            keys=[f"StudyInstanceUID={study}"])
            return why_failed(result, catalogue.instances_by_study[study],
                              len(result.datasets), "instances")

        timed(tally, "C-FIND", find)
        timed(tally, "C-GET", get)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, all threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rusage_cpu(who: int) -> float:
    """CPU seconds of this process (RUSAGE_SELF) or of its waited-for children (the tools)."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Phase:
    tally: Tally
    seconds: float
    cpu: dict[str, float]                # % of one core over the phase, per process group


def run_load(port: int, called: str, catalogue: Catalogue, args: argparse.Namespace,
             servers: dict[str, int]) -> Phase:
    tally = Tally()
    deadline = time.monotonic() + args.duration
    before = {name: cpu_seconds(pid) for name, pid in servers.items()}
    tools_before = rusage_cpu(resource.RUSAGE_CHILDREN)
    self_before = rusage_cpu(resource.RUSAGE_SELF)
    started = time.monotonic()
    threads = [threading.Thread(target=workstation, daemon=True,
                                args=(k, port, called, catalogue, deadline, args.max_loops, tally))
               for k in range(args.workstations)]
    for thread in threads:
        thread.start()
    for thread in threads:                # each stops by itself: deadline, loop bound, timeouts
        thread.join(args.duration + 4 * TOOL_TIMEOUT)
    seconds = time.monotonic() - started
    cpu = {name: 100 * (cpu_seconds(pid) - before[name]) / seconds
           for name, pid in servers.items()}
    cpu["DCMTK tools"] = 100 * (rusage_cpu(resource.RUSAGE_CHILDREN) - tools_before) / seconds
    cpu["benchmark threads"] = 100 * (rusage_cpu(resource.RUSAGE_SELF) - self_before) / seconds
    return Phase(tally, seconds, cpu)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1]


def proxy_complaints(records: list[dict[str, Any]]) -> list[str]:
    """Warning/error log lines of the proxy, counted by event, the first of each quoted."""
    kinds: Counter[str] = Counter()
    first: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.get("severity") in ("warning", "error", "critical"):
            name = str(record.get("event"))
            kinds[name] += 1
            first.setdefault(name, record)
    return [f"{count} x {name}, first: {first[name]}" for name, count in kinds.most_common()]


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def print_table(args: argparse.Namespace, phases: dict[str, Phase]) -> None:
    d, p = phases["direct"], phases["proxy"]
    print(f"### {args.workstations} workstations at once, each looping findscu (study level, "
          f"~{args.studies // args.patients} matches) + getscu (one study, "
          f"{INSTANCES_PER_STUDY} instances) for {args.duration:g} s; Orthanc 1.10.1, loopback\n")
    print("| operation | path | completed | failed | per second | p50 | p99 |  p50 ratio "
          "| p99 ratio |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for op in OPERATIONS:
        for name, phase in (("direct", d), ("proxy", p)):
            lat = phase.tally.latencies[op]
            failed = sum(phase.tally.failures[op].values())
            p50, p99 = percentile(lat, 0.50), percentile(lat, 0.99)
            ratios = "| |"
            if name == "proxy":
                base = d.tally.latencies[op]
                ratios = (f"| {p50 / percentile(base, 0.50):.2f}x "
                          f"| {p99 / percentile(base, 0.99):.2f}x |")
            print(f"| {op} | {name} | {len(lat)} | {failed} | {len(lat) / phase.seconds:.1f} "
                  f"| {p50 * 1000:.0f} ms | {p99 * 1000:.0f} ms {ratios}")
    print()
    for name, phase in (("direct", d), ("proxy", p)):
        cpu = ", ".join(f"{k} {v:.0f}%" for k, v in phase.cpu.items())
        print(f"CPU during the {name} load ({phase.seconds:.0f} s), % of one core: {cpu}.")
        for op in OPERATIONS:
            for reason, count in phase.tally.failures[op].most_common():
                print(f"- {name} {op} failed {count} x: {reason}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workstations", type=int, default=64)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per path")
    parser.add_argument("--max-loops", type=int, default=10_000,
                        help="bound on find+get loops per workstation")
    parser.add_argument("--studies", type=int, default=32)
    parser.add_argument("--patients", type=int, default=8)
    parser.add_argument("--max-associations", type=int, default=0,
                        help="the proxy's max_associations (default: the proxy's default)")
    args = parser.parse_args()
    os.environ.setdefault("TCP_NODELAY", "1")   # DCMTK peers: no delayed-ACK stalls on loopback
    load_before = load_average()

    datasets = list(make_studies(args.studies, instances_per_series=INSTANCES_PER_STUDY,
                                 patients=args.patients, seed="bench-load"))
    catalogue = Catalogue.of(datasets)
    settings = {"max_associations": args.max_associations} if args.max_associations else {}
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp, \
            OrthancArchive("PACS_BENCH") as archive:
        archive.upload(datasets)
        proxy = ProxyProcess({
            "proxy": {"ae_title": "QR_PROXY", **settings},
            "archives": {"pacs": archive_entry(archive, timeout=60)},
            "routes": [{"called_ae": "RELAY", "archives": ["pacs"]}],
        }, Path(tmp)).start()
        try:
            assert proxy.proc is not None and archive._proc is not None
            servers = {"proxy": proxy.proc.pid, "Orthanc": archive._proc.pid}
            phases: dict[str, Phase] = {}
            for name, (port, called) in (("proxy", (proxy.port, "RELAY")),
                                         ("direct", (archive.dicom_port, archive.aet))):
                warm = argparse.Namespace(**{**vars(args), "workstations": 1, "max_loops": 1,
                                             "duration": TOOL_TIMEOUT})
                run_load(port, called, catalogue, warm, servers)   # warm-up, not counted
                print(f"load {name} ...", file=sys.stderr, flush=True)
                logged = len(proxy.events())
                phases[name] = run_load(port, called, catalogue, args, servers)
                if name == "proxy":
                    complaints = proxy_complaints(proxy.events()[logged:])
        finally:
            code = proxy.stop()
        if code != 0:
            raise RuntimeError(f"proxy exited {code}: {proxy.stderr()[-1000:]}")

    print_table(args, phases)
    print(f"\nLoad average before: {load_before}; after: {load_average()} (2 cores, shared). "
          "Latencies are of successful operations; ratios are proxy / direct.")
    if complaints:
        print("\nProxy log, warnings and errors during the proxy load:")
        for line in complaints:
            print(f"- {line[:600]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
