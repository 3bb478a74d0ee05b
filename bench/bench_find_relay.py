"""Benchmark: one C-FIND of 500 study matches, direct to Orthanc vs relayed by the proxy.

Run: ``python bench/bench_find_relay.py [--rounds N] [--matches M]`` (about 1 minute).
Prints a markdown table.

The archive is one real Orthanc 1.10.1 holding ``--matches`` studies; the proxy is
``dicom-proxy run`` in a subprocess with one relay route to it. Two workstations,
each run the same way with and without the proxy:

- DCMTK ``/usr/bin/findscu`` (a new process and association per query, as a user
  would run it): wall time per query, median of ``--rounds``, direct and proxied
  rounds alternating;
- pynetdicom's SCU in this process: time to the first match and to the final
  status, so the per-match relay cost and the streaming latency show separately.

Ratios are relayed / direct. "Proxy CPU per match" is the proxy process's user+system
CPU time (``/proc/<pid>/stat``, Linux) over the relayed queries, divided by the matches
relayed: what one match costs the proxy, whatever else shares the machine. pynetdicom's
SCU proposes Implicit VR first, DCMTK's findscu Explicit VR: both paths are covered.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydicom import Dataset  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND  # noqa: E402

from proxy.tools.synthetic import make_studies  # noqa: E402
from tests.e2e.dcmtk import findscu  # noqa: E402
from tests.e2e.orthanc import OrthancArchive  # noqa: E402
from tests.e2e.proxy_harness import ProxyProcess, archive_entry  # noqa: E402

LOOPBACK = "127.0.0.1"
KEYS = ["StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "AccessionNumber",
        "StudyDescription", "ModalitiesInStudy"]


def findscu_once(port: int, called: str) -> float:
    args = ["/usr/bin/findscu", "-S", "-aet", "BENCH_WS", "-aec", called,
            "-k", "QueryRetrieveLevel=STUDY", *[a for k in KEYS for a in ("-k", k)],
            LOOPBACK, str(port)]
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-500:])
    return elapsed


def findscu_matches(port: int, called: str) -> int:
    return len(findscu(LOOPBACK, port, called, "BENCH_WS", keys=["StudyInstanceUID"]).identifiers)


def pynetdicom_once(port: int, called: str) -> tuple[float, float, int]:
    ae = AE(ae_title="BENCH_WS")
    ae.add_requested_context(FIND)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    for keyword in KEYS:
        setattr(query, keyword, "")
    started = time.perf_counter()
    assoc = ae.associate(LOOPBACK, port, ae_title=called)
    if not assoc.is_established:
        raise RuntimeError("association failed")
    first = 0.0
    count = 0
    for status, ds in assoc.send_c_find(query, FIND):
        if ds is not None and status.Status in (0xFF00, 0xFF01):
            count += 1
            if count == 1:
                first = time.perf_counter() - started
    assoc.release()
    return first, time.perf_counter() - started, count


def proxy_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--matches", type=int, default=500)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp, \
            OrthancArchive("PACS_BENCH") as archive:
        archive.upload(list(make_studies(args.matches, seed="bench-relay")))
        proxy = ProxyProcess({
            "proxy": {"ae_title": "QR_PROXY"},
            "archives": {"pacs": archive_entry(archive, timeout=60)},
            "routes": [{"called_ae": "RELAY", "archives": ["pacs"]}],
        }, Path(tmp)).start()
        try:
            targets = {"direct": (archive.dicom_port, archive.aet), "proxy": (proxy.port, "RELAY")}
            counts = {name: findscu_matches(*t) for name, t in targets.items()}
            if counts["direct"] != args.matches or counts["proxy"] != args.matches:
                raise RuntimeError(f"expected {args.matches} matches each, got {counts}")
            rows: dict[str, dict[str, list[float]]] = {
                name: {"findscu": [], "first": [], "total": []} for name in targets}
            pid = proxy.proc.pid if proxy.proc is not None else 0
            for port, called in targets.values():
                findscu_once(port, called)                 # warm-up (caches, imports)
                pynetdicom_once(port, called)
            cpu_findscu = cpu_pynetdicom = 0.0
            # Rounds alternate direct and proxied, so drift on a shared machine (other
            # load, CPU frequency) touches both paths alike.
            for _ in range(args.rounds):
                for name, (port, called) in targets.items():
                    cpu = proxy_cpu(pid)
                    rows[name]["findscu"].append(findscu_once(port, called))
                    middle = proxy_cpu(pid)
                    first, total, _count = pynetdicom_once(port, called)
                    rows[name]["first"].append(first)
                    rows[name]["total"].append(total)
                    if name == "proxy":
                        cpu_findscu += middle - cpu
                        cpu_pynetdicom += proxy_cpu(pid) - middle
            per_match = 1e6 / (args.rounds * args.matches)
        finally:
            code = proxy.stop()
        if code != 0:
            raise RuntimeError(f"proxy exited {code}: {proxy.stderr()[-1000:]}")

    d = {key: median(values) for key, values in rows["direct"].items()}
    p = {key: median(values) for key, values in rows["proxy"].items()}
    p["cpu_findscu"] = cpu_findscu * per_match
    p["cpu_pynetdicom"] = cpu_pynetdicom * per_match
    print(f"### C-FIND, {args.matches} study matches, Orthanc 1.10.1, loopback "
          f"(median of {args.rounds})\n")
    print("| workstation / measure | direct | through the proxy | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for label, key in (("findscu (DCMTK), wall time per query", "findscu"),
                       ("pynetdicom SCU, time to first match", "first"),
                       ("pynetdicom SCU, time to final status", "total")):
        print(f"| {label} | {d[key] * 1000:.0f} ms | {p[key] * 1000:.0f} ms "
              f"| {p[key] / d[key]:.2f}x |")
    per_match = (p["total"] - d["total"]) / args.matches * 1e6
    print(f"\nRelay cost per match (pynetdicom SCU): {per_match:.0f} µs of wall time.")
    print(f"Proxy CPU per match: {p['cpu_findscu']:.0f} µs (findscu, Explicit VR), "
          f"{p['cpu_pynetdicom']:.0f} µs (pynetdicom SCU, Implicit VR).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
