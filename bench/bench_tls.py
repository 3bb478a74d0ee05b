"""TLS benchmark (issue 12): a study C-MOVEd with DICOM over TLS on every leg, through the
proxy and directly, against the same paths in clear.

Peers: two Orthanc archives holding the same synthetic CT study (512x512, 16-bit,
~0.5 MB per image) — one clear, one with ``DicomTlsEnabled`` (asking for a client
certificate) — and two DCMTK storescp Move Destinations, one clear and one ``+tls``.
The workstation is a pynetdicom C-MOVE SCU on every row (over TLS with the
workstation certificate on the TLS rows): DCMTK 3.6.7's movescu has no TLS options.
Certificates come from tests/tls_certs.py (one test CA, RSA 2048).

  1 clear direct : SCU → Orthanc, Orthanc C-MOVEs to storescp
  2 clear proxy  : SCU → proxy port → C-GET from Orthanc → C-STORE to storescp
  3 TLS direct   : SCU +tls → TLS Orthanc, Orthanc C-MOVEs over TLS (its
                   DicomModalities entry has ``UseDicomTls``) to storescp +tls
  4 TLS proxy    : SCU +tls → proxy tls_port → C-GET over TLS from the TLS Orthanc
                   → C-STORE over TLS to storescp +tls

Reported: wall time of the whole C-MOVE (associate to release), MB/s, the proxy's
CPU time per move, and the ratios TLS proxy / clear proxy and TLS proxy / TLS direct
(throughput; issue 12's target for the latter is >= 0.8). DCMTK peers run with
TCP_NODELAY=1 (see bench_retrieve.py for why). Loopback only, free ports.

    python bench/bench_tls.py                  # 200 images (~100 MB), median of 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

from bench.bench_retrieve import build_study, cpu_seconds
from tests.e2e.dcmtk import StoreSCP
from tests.e2e.orthanc import OrthancArchive
from tests.e2e.ports import LOOPBACK, free_port
from tests.e2e.proxy_harness import ProxyProcess, archive_entry
from tests.tls_certs import make_pki

CLEAR_ROUTE = "PACS_VIA_PROXY"
TLS_ROUTE = "PACS_TLS_PROXY"


def timed_move(port: int, called: str, study: str, dest: StoreSCP, expected: int,
               tls: ssl.SSLContext | None) -> float:
    """One C-MOVE by a pynetdicom SCU (over TLS with ``tls``): seconds from associate to
    release. DCMTK 3.6.7's movescu has no TLS options, so every row uses this client."""
    for f in dest.output_dir.iterdir():
        f.unlink()
    ae = AE("BENCH")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 900
    ae.add_requested_context(MOVE)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    t0 = time.perf_counter()
    assoc = ae.associate(LOOPBACK, port, ae_title=called,
                         tls_args=(tls, "localhost") if tls else None)
    if not assoc.is_established:
        raise SystemExit(f"association to {called}:{port} failed")
    last = None
    for status, _ in assoc.send_c_move(query, dest.aet, MOVE):
        if status:
            last = status
    assoc.release()
    elapsed = time.perf_counter() - t0
    if (last is None or last.Status != 0
            or int(last.get("NumberOfCompletedSuboperations", 0)) != expected):
        raise SystemExit(f"C-MOVE via {called}:{port} failed: {last}")
    arrived = sum(1 for _ in dest.output_dir.iterdir())
    if arrived != expected:
        raise SystemExit(f"C-MOVE via {called}:{port}: {arrived} of {expected} files arrived")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="images in the study")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per path (median)")
    args = parser.parse_args()
    os.environ["TCP_NODELAY"] = "1"       # read by DCMTK in Orthanc, storescp, movescu
    work = Path(tempfile.mkdtemp(prefix="bench-tls-"))
    try:
        run(work, args.images, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, images: int, rounds: int) -> None:
    study, paths, size = build_study(work / "study", images, "bench-tls")
    pki = make_pki(work / "pki")
    pacs_cert = pki.ca.issue("pacs", "PACS archive")
    dest_cert = pki.ca.issue("dest", "Destination WS")
    ws_tls = ssl.create_default_context(cafile=str(pki.ca.path))
    ws_tls.load_cert_chain(str(pki.workstation.cert), str(pki.workstation.key))
    clear_port, tls_port = free_port(), free_port()
    orthanc_tls = {
        "DicomTlsEnabled": True, "DicomTlsCertificate": str(pacs_cert.cert),
        "DicomTlsPrivateKey": str(pacs_cert.key),
        "DicomTlsTrustedCertificates": str(pki.ca.path),
        "DicomTlsRemoteCertificateRequired": True,
        "DicomModalities": {"ws_tls": {"AET": "WS_TLS", "Host": LOOPBACK, "Port": tls_port,
                                       "UseDicomTls": True}}}
    with StoreSCP("WS1", work / "ws1", port=clear_port) as dest, \
            StoreSCP("WS_TLS", work / "ws_tls", port=tls_port,
                     extra_args=["+tls", str(dest_cert.key), str(dest_cert.cert),
                                 "+cf", str(pki.ca.path)]) as tls_dest, \
            OrthancArchive("PACS", known_modalities={"ws1": ("WS1", LOOPBACK, clear_port)}
                           ) as pacs, \
            OrthancArchive("PACS_TLS", extra_config=orthanc_tls) as tls_pacs:
        dest.start()
        tls_dest.start()
        pacs.upload(paths)
        tls_pacs.upload(paths)
        rules = {
            "proxy": {"tls_port": 0},
            "tls": {"cert": str(pki.proxy.cert), "key": str(pki.proxy.key),
                    "ca": str(pki.ca.path), "require_client_cert": True},
            "archives": {"pacs": archive_entry(pacs, retrieve="get"),
                         "pacs_tls": archive_entry(tls_pacs, retrieve="get", tls=True,
                                                   tls_server_name="localhost")},
            "destinations": {
                "ws1": {"ae_title": "WS1", "host": LOOPBACK, "port": clear_port},
                "ws_tls": {"ae_title": "WS_TLS", "host": LOOPBACK, "port": tls_port,
                           "tls": True, "tls_server_name": "localhost"}},
            "routes": [{"called_ae": CLEAR_ROUTE, "archives": ["pacs"]},
                       {"called_ae": TLS_ROUTE, "archives": ["pacs_tls"]}]}
        proxy = ProxyProcess(rules, work)
        proxy.start()
        pid: int = proxy.proc.pid       # type: ignore[union-attr]
        paths_under_test = [
            ("clear direct: SCU → Orthanc C-MOVE → storescp",
             lambda: timed_move(pacs.dicom_port, pacs.aet, study, dest, images, None), False),
            ("clear proxy: SCU → proxy → C-GET Orthanc → C-STORE storescp",
             lambda: timed_move(proxy.port, CLEAR_ROUTE, study, dest, images, None), True),
            ("TLS direct: SCU +tls → TLS Orthanc C-MOVE → storescp +tls",
             lambda: timed_move(tls_pacs.dicom_port, tls_pacs.aet, study, tls_dest, images,
                                ws_tls), False),
            ("TLS proxy: SCU +tls → proxy tls_port → C-GET TLS Orthanc → "
             "C-STORE storescp +tls",
             lambda: timed_move(proxy.tls_port, TLS_ROUTE, study, tls_dest, images, ws_tls),
             True),
        ]
        times: dict[str, list[float]] = {label: [] for label, _, _ in paths_under_test}
        cpu: dict[str, list[float]] = {label: [] for label, _, _ in paths_under_test}
        try:
            for _ in range(rounds):          # interleaved: shared-machine noise hits all rows
                for label, move, via_proxy in paths_under_test:
                    before = cpu_seconds(pid)
                    times[label].append(move())
                    if via_proxy:
                        cpu[label].append(cpu_seconds(pid) - before)
        finally:
            proxy.stop()
    report(images, size, times, cpu, rounds)


def report(images: int, size: int, times: dict[str, list[float]],
           cpu: dict[str, list[float]], rounds: int) -> None:
    mb = size / 1e6
    med = {label: statistics.median(t) for label, t in times.items()}
    print(f"\n### C-MOVE of one study, clear vs DICOM over TLS: {images} CT images 512x512, "
          f"{mb:.0f} MB (pynetdicom C-MOVE SCU; DCMTK storescp and Orthanc with "
          f"TCP_NODELAY=1; median of {rounds}, runs interleaved)\n")
    print("| path | seconds | MB/s | images/s | proxy CPU per move | all runs (s) |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for label, seconds in med.items():
        proxy_cpu = f"{statistics.median(cpu[label]):.2f} s" if cpu[label] else "—"
        runs = ", ".join(f"{t:.2f}" for t in times[label])
        print(f"| {label} | {seconds:.2f} | {mb / seconds:.1f} | {images / seconds:.0f} | "
              f"{proxy_cpu} | {runs} |")
    cd, cp, td, tp = med.values()
    print(f"\nthroughput ratios: TLS proxy / clear proxy **{cp / tp:.2f}**; "
          f"TLS proxy / TLS direct **{td / tp:.2f}** (target >= 0.8); "
          f"clear proxy / clear direct {cd / cp:.2f}; TLS direct / clear direct {cd / td:.2f}")


if __name__ == "__main__":
    main()
