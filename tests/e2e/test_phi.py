"""``[log] phi`` for real: patient identifiers sent through the proxy never leak.

A workstation queries by patient name, ID and birth date through three routes:
to a live Orthanc, to an archive that is down (errors and hints), and to a
federation of both (partial failure). Whatever the proxy writes — stdout and
stderr, every event — must not contain those values in clear with
``phi = "hash"`` or ``"drop"``; with ``"clear"`` they must be there (so this
test can see a leak when there is one). The same run checks that the
``operation`` line carries what a support engineer needs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.observe.logs import PhiFilter
from proxy.tools.synthetic import make_instance
from tests.e2e.conftest import OrthancFactory
from tests.e2e.dcmtk import findscu
from tests.e2e.ports import LOOPBACK, free_port
from tests.e2e.proxy_harness import ProxyProcess, archive_entry

ProxyFactory = Callable[..., ProxyProcess]
NAME, PATIENT_ID, BIRTH = "ZEBRAFISH^QUENTIN", "MRN8675309", "19450517"
SECRETS = (NAME, "ZEBRAFISH", "QUENTIN", PATIENT_ID, BIRTH)
WORKSTATION = "VIEWER1"
STUDY_UID = "1.2.826.0.1.3680043.8.498.77001"


def _patient_study() -> object:
    return make_instance(patient_id=PATIENT_ID, patient_name=NAME, birth_date=BIRTH,
                         study_uid=STUDY_UID, series_uid=STUDY_UID + ".1",
                         sop_uid=STUDY_UID + ".1.1", study_date="20240102", study_time="101500",
                         modality="CT", accession="ACC77001", study_description="PHI test",
                         series_number=1, instance_number=1, rows=8, cols=8)


def _query(proxy: ProxyProcess, route: str, *keys: str) -> list[str]:
    given = {k.split("=")[0] for k in keys}   # a later bare key would blank a matching key
    wanted = [k for k in ("StudyInstanceUID", "PatientName", "PatientID") if k not in given]
    result = findscu(LOOPBACK, proxy.port, route, WORKSTATION, keys=[*keys, *wanted], timeout=30)
    return result.values("StudyInstanceUID")


@pytest.mark.parametrize("mode", ["hash", "drop", "clear"])
def test_patient_identifiers_never_leak(mode: str, tmp_path: Path,
                                        orthanc_factory: OrthancFactory,
                                        proxy_factory: ProxyFactory) -> None:
    live = orthanc_factory("PACS_LIVE")
    live.upload([_patient_study()])  # type: ignore[list-item]
    proxy = proxy_factory({
        "log": {"phi": mode},
        "health": {"enabled": True, "interval": 0.5, "timeout": 2},
        "archives": {"live": archive_entry(live),
                     "down": {"ae_title": "PACS_DOWN", "host": LOOPBACK, "port": free_port(),
                              "timeout": 5}},
        "routes": [{"called_ae": "LIVE", "archives": ["live"]},
                   {"called_ae": "DOWN", "archives": ["down"]},
                   {"called_ae": "FED", "archives": ["live", "down"]}],
    })
    exact = (f"PatientName={NAME}", f"PatientID={PATIENT_ID}", f"PatientBirthDate={BIRTH}")
    assert _query(proxy, "LIVE", *exact) == [STUDY_UID]
    assert _query(proxy, "DOWN", *exact) == []
    assert _query(proxy, "FED", "PatientName=ZEBRA*") == [STUDY_UID]
    proxy.wait_event("archive_down", lambda e: e.get("archive") == "down")
    assert proxy.stop() == 0
    stdout = "\n".join(proxy.reader.lines) if proxy.reader else ""
    stderr = proxy.stderr()

    if mode == "clear":           # the test sees PHI when it is there
        assert PATIENT_ID in stdout and NAME in stdout
        return
    for secret in SECRETS:
        assert secret not in stdout, f"{secret!r} in clear on stdout (phi={mode})"
        assert secret not in stderr, f"{secret!r} in clear on stderr (phi={mode})"
    if mode == "hash":            # still followable: one stable token per value
        token = PhiFilter("hash").token(PATIENT_ID)
        assert stdout.count(token) >= 2
    else:
        assert "[dropped]" in stdout

    finds = {op["called_ae"]: op for op in proxy.operations("C-FIND")}
    ok, failed, partial = finds["LIVE"], finds["DOWN"], finds["FED"]
    for op in (ok, failed, partial):
        for key in ("assoc_id", "route", "calling_ae", "called_ae", "archives", "query_level",
                    "status", "matches", "duration_ms", "peer"):
            assert key in op, f"operation line lacks {key}: {op}"
        assert op["calling_ae"] == WORKSTATION and op["query_level"] == "STUDY"
        assert op["level"] == "STUDY"                   # the contract's Q/R ``level``
        assert op["severity"] in ("info", "warning")
    assert (ok["route"], ok["archives"], ok["status"], ok["matches"]) == (
        "LIVE", ["live"], "0x0000", 1)
    assert (failed["archives"], failed["matches"]) == (["down"], 0)
    assert failed["status"] != "0x0000" and "TCP connection refused" in failed["hint"]
    assert partial["archives"] == ["live", "down"] and partial["matches"] == 1
    assert "down" in partial["hint"]
    # upstream lines tie back to the request through assoc_id
    for op in (ok, failed):
        upstream = [u for u in proxy.events("upstream") if u.get("assoc_id") == op["assoc_id"]]
        assert [u["archive"] for u in upstream] == op["archives"]
    [refused] = [u for u in proxy.events("upstream") if u.get("assoc_id") == failed["assoc_id"]]
    assert refused["hint"].startswith("check that PACS_DOWN is running")
