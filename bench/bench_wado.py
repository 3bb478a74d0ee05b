"""WADO-RS study retrieval through the proxy vs C-GET of the same study direct from the archive.

    python3 bench/bench_wado.py [--images 200] [--rounds 3]

One Orthanc 1.10 holding one synthetic CT study (512x512, 16-bit, ~0.5 MB per image); the
proxy serves it over DICOMweb. Rounds alternate:

  C-GET direct      DCMTK getscu ← Orthanc (writing files; TCP_NODELAY=1)
  WADO-RS           HTTP GET /dicomweb/WEB/studies/{uid} through the proxy, the multipart
                    answer read to the end (urllib, 1 MB reads; not written to disk)
  WADO-RS to files  the same, each part written to a file as it arrives

and then ``/metadata`` of the study: the first request (the proxy fetches every instance's
header from the archive) and the next ones (from its cache). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy.tools.synthetic import make_studies, write_studies  # noqa: E402
from tests.e2e.orthanc import OrthancArchive  # noqa: E402
from tests.e2e.proxy_harness import ProxyProcess, archive_entry  # noqa: E402

LOOPBACK = "127.0.0.1"


def getscu(port: int, aet: str, study: str, out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    subprocess.run(["/usr/bin/getscu", "-S", "-aet", "BENCH_WS", "-aec", aet,
                    "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                    "-od", str(out), LOOPBACK, str(port)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600,
                   env={**os.environ, "TCP_NODELAY": "1"})
    return time.perf_counter() - started


def wado(url: str, out: Path | None = None) -> tuple[float, int]:
    started = time.perf_counter()
    total = 0
    sink = open(out, "wb") if out is not None else None   # noqa: SIM115 (closed below)
    try:
        with urllib.request.urlopen(url, timeout=600) as answer:
            while chunk := answer.read(1 << 20):
                total += len(chunk)
                if sink is not None:
                    sink.write(chunk)
    finally:
        if sink is not None:
            sink.close()
    return time.perf_counter() - started, total


def metadata(url: str) -> float:
    request = urllib.request.Request(url, headers={"Accept": "application/dicom+json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as answer:
        answer.read()
    return time.perf_counter() - started


def _made(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-wado-") as tmp:
        root = Path(tmp)
        files = write_studies(root / "data", make_studies(
            1, instances_per_series=args.images, rows=512, cols=512, seed="bench-wado"))
        size = sum(p.stat().st_size for p in files)
        with OrthancArchive("PACS_WADO") as archive:
            archive.upload(files)
            study = next(iter(archive.study_uids()))
            proxy = ProxyProcess({
                "archives": {"pacs": archive_entry(archive, timeout=60)},
                "routes": [{"called_ae": "WEB", "archives": ["pacs"], "dicomweb": True}],
                "dicomweb": {"host": LOOPBACK, "port": 0},
            }, _made(root / "proxy")).start()
            base = f"http://{LOOPBACK}:{proxy.dicomweb_port}/dicomweb/WEB/studies/{study}"
            try:
                times: dict[str, list[float]] = {"C-GET direct (getscu, files)": [],
                                                 "WADO-RS through the proxy": [],
                                                 "WADO-RS through the proxy, to a file": []}
                for k in range(args.rounds):
                    times["C-GET direct (getscu, files)"].append(
                        getscu(archive.dicom_port, archive.aet, study, root / f"get{k}"))
                    seconds, received = wado(base)
                    times["WADO-RS through the proxy"].append(seconds)
                    times["WADO-RS through the proxy, to a file"].append(
                        wado(base, root / f"wado{k}.multipart")[0])
                first = metadata(f"{base}/metadata")
                cached = statistics.median(metadata(f"{base}/metadata") for _ in range(5))
            finally:
                proxy.stop()
    direct = statistics.median(times["C-GET direct (getscu, files)"])
    print(f"### One study of {args.images} CT images, {size / 1e6:.0f} MB "
          f"(median of {args.rounds}, rounds alternating)\n")
    print("| path | seconds | MB/s | throughput vs C-GET direct |")
    print("| --- | ---: | ---: | ---: |")
    for name, values in times.items():
        seconds = statistics.median(values)
        print(f"| {name} | {seconds:.2f} | {size / seconds / 1e6:.0f} "
              f"| {direct / seconds:.2f} |")
    print(f"\nmultipart answer: {received / 1e6:.0f} MB. /metadata of the study: first "
          f"{first * 1000:.0f} ms (headers fetched from the archive), then "
          f"{cached * 1000:.1f} ms (cache)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
