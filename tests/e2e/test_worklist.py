"""Modality Worklist through the proxy: REAL DCMTK ``wlmscpfs`` as two worklist providers
(worklists written with ``dump2dcm``), REAL DCMTK ``findscu -W`` as the modality.

Relayed, the modality gets what the provider answers; federated over both providers it
gets the union of their direct answers, a Scheduled Procedure Step both hold (same
Accession Number and SPS ID) once; a provider that is down makes an honest partial answer.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.dcmtk import FindResult, findscu, tool
from tests.e2e.ports import LOOPBACK, free_port, wait_for_port
from tests.e2e.processes import spawn, stop_process
from tests.e2e.proxy_harness import ProxyProcess

ProxyFactory = Callable[..., ProxyProcess]
SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700
# Worklist items: (file, accession, SPS ID, patient name, patient ID, modality)
ITEMS_A = [("a1", "ACC100", "SPS1", "DOE^JANE", "P100", "CT"),
           ("a2", "ACC101", "SPS1", "ROE^RICHARD", "P101", "MR"),
           ("shared", "ACC200", "SPS7", "MÜLLER^JÖRG", "P200", "CT")]
ITEMS_B = [("b1", "ACC300", "SPS1", "POE^EDGAR", "P300", "US"),
           ("b2", "ACC300", "SPS2", "POE^EDGAR", "P300", "US"),   # a second step, same order
           ("shared", "ACC200", "SPS7", "MÜLLER^JÖRG", "P200", "CT")]
KEYS = ["AccessionNumber", "PatientName", "PatientID",
        "ScheduledProcedureStepSequence[0].Modality",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
        "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate"]


def _dump(accession: str, step: str, name: str, patient_id: str, modality: str) -> str:
    return f"""\
(0008,0005) CS [ISO_IR 100]
(0008,0050) SH [{accession}]
(0010,0010) PN [{name}]
(0010,0020) LO [{patient_id}]
(0010,0030) DA [19700101]
(0010,0040) CS [O]
(0020,000d) UI [1.2.826.0.1.3680043.9.7433.{abs(hash(accession)) % 10**9}]
(0032,1060) LO [Requested {accession}]
(0040,0100) SQ
(fffe,e000) -
(0008,0060) CS [{modality}]
(0040,0001) AE [MODALITY1]
(0040,0002) DA [20261204]
(0040,0003) TM [0800]
(0040,0007) LO [Step {step}]
(0040,0009) SH [{step}]
(fffe,e00d) -
(fffe,e0dd) -
(0040,1001) SH [RP{accession}]
"""


class WorklistProvider:
    """``/usr/bin/wlmscpfs`` answering AE title ``aet`` from worklist files in a temp dir."""

    def __init__(self, aet: str, items: list[tuple[str, str, str, str, str, str]]) -> None:
        self.aet, self.port = aet, free_port()
        self.root = Path(tempfile.mkdtemp(prefix=f"wlm-{aet.lower()}-"))
        folder = self.root / aet
        folder.mkdir()
        (folder / "lockfile").touch()
        for stem, *fields in items:
            dump = self.root / f"{stem}.dump"
            dump.write_text(_dump(*fields), encoding="latin-1")
            subprocess.run([tool("dump2dcm"), "-q", str(dump), str(folder / f"{stem}.wl")],
                           check=True, timeout=30)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorklistProvider:
        proc = self.proc = spawn([tool("wlmscpfs"), "-dfp", str(self.root), str(self.port)],
                                 log_path=self.root / "wlmscpfs.log")
        wait_for_port(self.port, alive=lambda: proc.poll() is None)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def providers() -> Iterator[tuple[WorklistProvider, WorklistProvider]]:
    a = WorklistProvider("RIS_A", ITEMS_A).start()
    b = WorklistProvider("RIS_B", ITEMS_B).start()
    yield a, b
    a.remove()
    b.remove()


def entry(provider: WorklistProvider) -> dict[str, object]:
    return {"ae_title": provider.aet, "host": LOOPBACK, "port": provider.port, "timeout": 10}


def worklist(port: int, called: str) -> FindResult:
    return findscu(LOOPBACK, port, called, "MODALITY1", model="worklist", level=None,
                   keys=KEYS)


def steps(result: FindResult) -> list[tuple[str, str, str]]:
    out = []
    for ds in result.identifiers:
        sps = ds.ScheduledProcedureStepSequence[0]
        out.append((str(ds.AccessionNumber), str(sps.ScheduledProcedureStepID),
                    str(ds.PatientName)))
    return sorted(out)


def test_a_relayed_worklist_is_the_providers_answer(
        providers: tuple[WorklistProvider, WorklistProvider],
        proxy_factory: ProxyFactory) -> None:
    a, _ = providers
    proxy = proxy_factory({"archives": {"ris_a": entry(a)},
                           "routes": [{"called_ae": "WORKLIST", "archives": ["ris_a"]}]})
    direct = worklist(a.port, a.aet)
    through = worklist(proxy.port, "WORKLIST")
    assert direct.final_status == through.final_status == SUCCESS, through.output[-2000:]
    assert len(direct.identifiers) == len(ITEMS_A)
    # Item by item, every element as the provider answered it (the transfer syntax of the
    # responses is each acceptor's choice among what findscu proposed).
    assert through.identifiers == direct.identifiers
    line = proxy.wait_event("operation", lambda e: e["operation"] == "C-FIND")
    assert line["matches"] == len(ITEMS_A) and line["status"] == "0x0000"


def test_a_federated_worklist_is_the_union_with_shared_steps_once(
        providers: tuple[WorklistProvider, WorklistProvider],
        proxy_factory: ProxyFactory) -> None:
    a, b = providers
    proxy = proxy_factory({"archives": {"ris_a": entry(a), "ris_b": entry(b)},
                           "routes": [{"called_ae": "WORKLIST",
                                       "archives": ["ris_a", "ris_b"]}]})
    direct_a, direct_b = worklist(a.port, a.aet), worklist(b.port, b.aet)
    through = worklist(proxy.port, "WORKLIST")
    assert through.final_status == SUCCESS, through.output[-2000:]
    union = sorted(set(steps(direct_a)) | set(steps(direct_b)))
    assert steps(through) == union                       # each step once
    assert len(union) == len(ITEMS_A) + len(ITEMS_B) - 1  # the shared one
    line = proxy.wait_event("operation", lambda e: e["operation"] == "C-FIND")
    assert line["duplicates"] == 1 and sorted(line["archives"]) == ["ris_a", "ris_b"]
    # Filtering is the providers' (matching keys pass upstream unchanged).
    only_us = findscu(LOOPBACK, proxy.port, "WORKLIST", "MODALITY1", model="worklist",
                      level=None, keys=[*KEYS[:3], "ScheduledProcedureStepSequence[0]"
                                        ".Modality=US", *KEYS[4:]])
    assert [s[:2] for s in steps(only_us)] == [("ACC300", "SPS1"), ("ACC300", "SPS2")]


def test_a_provider_down_gives_an_honest_partial_worklist(
        providers: tuple[WorklistProvider, WorklistProvider],
        proxy_factory: ProxyFactory) -> None:
    a, _ = providers
    down = {"ae_title": "RIS_DOWN", "host": LOOPBACK, "port": free_port(), "timeout": 5}
    proxy = proxy_factory({"archives": {"ris_a": entry(a), "ris_down": down},
                           "routes": [{"called_ae": "WORKLIST",
                                       "archives": ["ris_a", "ris_down"]}]})
    through = worklist(proxy.port, "WORKLIST")
    assert steps(through) == steps(worklist(a.port, a.aet))      # what there is, all of it
    assert through.final_status == OUT_OF_RESOURCES              # but not "complete"
    line = proxy.wait_event("operation", lambda e: e["operation"] == "C-FIND")
    assert line["archives_failed"] == ["ris_down"]


def test_a_provider_at_its_cap_is_not_passed_off_as_complete(
        providers: tuple[WorklistProvider, WorklistProvider],
        proxy_factory: ProxyFactory) -> None:
    a, _ = providers
    capped = {**entry(a), "max_results": len(ITEMS_A)}     # it answered exactly its cap
    proxy = proxy_factory({"archives": {"ris_a": capped},
                           "routes": [{"called_ae": "WORKLIST", "archives": ["ris_a"]}]})
    through = worklist(proxy.port, "WORKLIST")
    assert steps(through) == steps(worklist(a.port, a.aet))     # every item it gave
    assert through.final_status == OUT_OF_RESOURCES
    line = proxy.wait_event("find_incomplete")
    assert line["archive"] == "ris_a" and "nothing to split on" in line["reasons"][0]
    assert proxy.metric("dicom_proxy_find_truncated_total", archive="ris_a") == 1
