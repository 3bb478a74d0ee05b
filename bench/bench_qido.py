"""QIDO-RS through the proxy vs C-FIND through the proxy, and vs C-FIND direct to the archive.

    python3 bench/bench_qido.py [--studies 500] [--rounds 7]

One Orthanc 1.10 holding ``--studies`` synthetic studies; the proxy (``dicom-proxy run``)
serves one route over DIMSE and DICOMweb. Three ways to ask for every study (the same
return keys, PS3.18 Table 10.6.3-3's defaults), rounds alternating:

  C-FIND direct      pynetdicom SCU → Orthanc
  C-FIND via proxy   pynetdicom SCU → proxy → Orthanc
  QIDO-RS via proxy  HTTP GET /dicomweb/WEB/studies (urllib, Accept application/dicom+json,
                     no gzip) → proxy → C-FIND to Orthanc → DICOM JSON

Reported: the median wall time of each, the ratios, and the proxy's CPU per study
answered for each protocol. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydicom import Dataset  # noqa: E402
from pydicom.datadict import dictionary_VR  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND  # noqa: E402

from proxy.tools.synthetic import make_studies  # noqa: E402
from tests.e2e.orthanc import OrthancArchive  # noqa: E402
from tests.e2e.proxy_harness import ProxyProcess, archive_entry  # noqa: E402

LOOPBACK = "127.0.0.1"
KEYS = ["StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
        "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate",
        "PatientSex", "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances"]


def c_find(port: int, called: str) -> tuple[float, int]:
    ae = AE(ae_title="BENCH_WS")
    ae.add_requested_context(FIND)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    for keyword in KEYS:
        query.add_new(keyword, dictionary_VR(keyword), None)
    started = time.perf_counter()
    assoc = ae.associate(LOOPBACK, port, ae_title=called)
    if not assoc.is_established:
        raise RuntimeError("association failed")
    count = sum(1 for status, ds in assoc.send_c_find(query, FIND)
                if status and status.Status in (0xFF00, 0xFF01) and ds is not None)
    assoc.release()
    return time.perf_counter() - started, count


def qido(url: str) -> tuple[float, int]:
    request = urllib.request.Request(url, headers={"Accept": "application/dicom+json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as answer:
        studies = json.loads(answer.read())
    return time.perf_counter() - started, len(studies)


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-qido-") as tmp, \
            OrthancArchive("PACS_QIDO") as archive:
        archive.upload(list(make_studies(args.studies, seed="bench-qido")))
        proxy = ProxyProcess({
            "archives": {"pacs": archive_entry(archive, timeout=60)},
            "routes": [{"called_ae": "WEB", "archives": ["pacs"], "dicomweb": True}],
            "dicomweb": {"host": LOOPBACK, "port": 0},
        }, Path(tmp)).start()
        try:
            pid = proxy.proc.pid if proxy.proc is not None else 0
            url = f"http://{LOOPBACK}:{proxy.dicomweb_port}/dicomweb/WEB/studies"
            ways: dict[str, Callable[[], tuple[float, int]]] = {
                "C-FIND direct": functools.partial(c_find, archive.dicom_port, archive.aet),
                "C-FIND via proxy": functools.partial(c_find, proxy.port, "WEB"),
                "QIDO-RS via proxy": functools.partial(qido, url)}
            for way in ways.values():          # warm-up; every way sees every study
                _, found = way()
                if found != args.studies:
                    raise RuntimeError(f"expected {args.studies} studies, got {found}")
            times: dict[str, list[float]] = {name: [] for name in ways}
            spent: dict[str, float] = {name: 0.0 for name in ways}
            for _ in range(args.rounds):
                for name, way in ways.items():
                    before = cpu(pid)
                    times[name].append(way()[0])
                    spent[name] += cpu(pid) - before
        finally:
            proxy.stop()
    median = {name: statistics.median(values) for name, values in times.items()}
    base = median["C-FIND direct"]
    print(f"### {args.studies} studies, every one asked for (median of {args.rounds}, "
          "rounds alternating)\n")
    print("| way | seconds | vs C-FIND direct | proxy CPU per study |")
    print("| --- | ---: | ---: | ---: |")
    for name in ways:
        per = spent[name] / (args.rounds * args.studies) * 1e6
        print(f"| {name} | {median[name]:.3f} | {median[name] / base:.2f}x "
              f"| {'' if name == 'C-FIND direct' else f'{per:.0f} µs'} |")
    print(f"\nQIDO-RS / C-FIND through the proxy: "
          f"**{median['QIDO-RS via proxy'] / median['C-FIND via proxy']:.2f}x**")
    return 0


if __name__ == "__main__":
    sys.exit(main())
