"""Issue 2, end to end: a workstation queries an archive through the proxy.

One strict Orthanc (it answers only the calling AE title ``PROXY_AT_A``) holds
the session's five studies; one proxy serves every route of this module. The
workstation is DCMTK (echoscu, findscu) except where a test needs to act
between two responses (pynetdicom's SCU). Scripted pynetdicom archives stand in
where timing or a fault must be controlled (cancel, streaming, silence).

Every answer through the proxy is compared with the archive's own answer to the
same query (direct, calling as ``PROXY_AT_A``); the proxy's log and metrics are
checked against what the test did.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from proxy.observe.logs import PhiFilter
from tests.e2e.data import SyntheticSet
from tests.e2e.dcmtk import SUCCESS, FindResult, echoscu, findscu
from tests.e2e.fault_peers import (
    ScriptedArchive,
    SilentServer,
    gated_stream,
    never_answers,
    study_match,
    until_cancelled,
)
from tests.e2e.orthanc import OrthancArchive
from tests.e2e.ports import LOOPBACK, free_port
from tests.e2e.proxy_harness import ProxyProcess

CANCEL, UNABLE_TO_PROCESS = 0xFE00, 0xC000          # PS3.4 C.4.1.1.4
PROXY_AT_A = "PROXY_AT_A"                          # the only calling AE the archive knows
WORKSTATION = "WS_ORIGINAL"
FAST_TIMEOUT = 2.0                                 # archives.*.timeout of the silent peers


@pytest.fixture(scope="module")
def archive(synthetic_studies: SyntheticSet) -> Iterator[OrthancArchive]:
    pacs = OrthancArchive("PACS_A", only_known_calling_aets=True,
                          known_modalities={"proxy": (PROXY_AT_A, LOOPBACK, 1)})
    with pacs:
        pacs.upload(synthetic_studies.paths)
        yield pacs


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedArchive]:
    peer = ScriptedArchive(never_answers, aet="SCRIPTED")
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def silent() -> Iterator[SilentServer]:
    peer = SilentServer()
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def proxy(archive: OrthancArchive, scripted: ScriptedArchive, silent: SilentServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    def at(peer: Any, port: int, **extra: Any) -> dict[str, Any]:
        return {"ae_title": peer.aet if hasattr(peer, "aet") else "SILENT", "host": LOOPBACK,
                "port": port, **extra}

    rules = {
        "proxy": {"network_timeout": 30},
        "archives": {
            "site_a": at(archive, archive.dicom_port, calling_ae=PROXY_AT_A, timeout=10),
            "site_wrong": at(archive, archive.dicom_port, calling_ae="NOT_KNOWN", timeout=10),
            "site_down": {"ae_title": "PACS_DOWN", "host": LOOPBACK, "port": free_port(),
                          "timeout": 5},
            "scripted": at(scripted, scripted.dicom_port, timeout=20),
            "scripted_mute": at(scripted, scripted.dicom_port, timeout=FAST_TIMEOUT),
            "silent": at(silent, silent.port, timeout=FAST_TIMEOUT),
        },
        "routes": [
            {"called_ae": "RELAY", "archives": ["site_a"]},
            {"called_ae": "GUARDED", "archives": ["site_a"], "allow": ["WS_OK"]},
            {"called_ae": "LOCAL", "archives": ["site_a"], "echo": "local"},
            {"called_ae": "WRONG", "archives": ["site_wrong"]},
            {"called_ae": "DOWN", "archives": ["site_down"]},
            {"called_ae": "SCRIPTED", "archives": ["scripted"]},
            {"called_ae": "MUTE", "archives": ["scripted_mute"]},
            {"called_ae": "SILENT", "archives": ["silent"]},
        ],
    }
    workdir = tmp_path_factory.mktemp("relay-proxy")
    running = ProxyProcess(rules, workdir).start()
    yield running
    assert running.stop() == 0, running.stderr()[-2000:]


# -- helpers ----------------------------------------------------------------------------

def via_proxy(proxy: ProxyProcess, route: str, calling: str = WORKSTATION,
              **kw: Any) -> FindResult:
    return findscu(LOOPBACK, proxy.port, route, calling, timeout=60, **kw)


def canonical(identifiers: list[Dataset]) -> list[str]:
    """Order-free, comparable form of a C-FIND answer (RetrieveAETitle is rewritten)."""
    out = []
    for ds in identifiers:
        values = {e.keyword or str(e.tag): str(e.value) for e in ds
                  if e.keyword != "RetrieveAETitle"}
        out.append(json.dumps(values, sort_keys=True))
    return sorted(out)


def last_operation(proxy: ProxyProcess, calling: str, operation: str,
                   called: str | None = None) -> dict[str, Any]:
    """The operation line of the most recent association from ``calling``."""
    def mine(e: dict[str, Any]) -> bool:
        return (e.get("calling_ae") == calling and e.get("operation") == operation
                and (called is None or e.get("called_ae") == called))
    proxy.wait_event("operation", mine)
    return [e for e in proxy.operations() if mine(e)][-1]


def upstream_of(proxy: ProxyProcess, op: dict[str, Any]) -> list[dict[str, Any]]:
    return [u for u in proxy.events("upstream") if u.get("assoc_id") == op["assoc_id"]]


def scu_find(port: int, route: str, identifier: Dataset,
             syntaxes: list[str] | None = None) -> Iterator[tuple[int, Dataset | None]]:
    """pynetdicom as the workstation: yields (status, identifier) as they arrive."""
    ae = AE(ae_title="WS_PYNET")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind,
                             syntaxes or [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate(LOOPBACK, port, ae_title=route)
    assert assoc.is_established
    try:
        for status, ds in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
            yield int(status.Status) if "Status" in status else -1, ds
    finally:
        assoc.release()


def study_query(**keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


# -- C-ECHO ------------------------------------------------------------------------------

def test_echo_is_answered_after_reaching_the_archive(proxy: ProxyProcess,
                                                     archive: OrthancArchive) -> None:
    before = archive.calling_aets().count(PROXY_AT_A)
    assert echoscu(LOOPBACK, proxy.port, "RELAY", "WS_ECHO").ok
    op = last_operation(proxy, "WS_ECHO", "C-ECHO")
    assert (op["status"], op["archives"]) == ("0x0000", ["site_a"])
    [up] = upstream_of(proxy, op)
    assert (up["archive"], up["operation"], up["status"]) == ("site_a", "C-ECHO", "0x0000")
    assert archive.calling_aets().count(PROXY_AT_A) == before + 1


def test_local_echo_does_not_call_the_archive(proxy: ProxyProcess,
                                              archive: OrthancArchive) -> None:
    before = len(archive.calling_aets())
    assert echoscu(LOOPBACK, proxy.port, "LOCAL", "WS_LOCAL").ok
    op = last_operation(proxy, "WS_LOCAL", "C-ECHO")
    assert op["status"] == "0x0000" and upstream_of(proxy, op) == []
    assert len(archive.calling_aets()) == before


def test_echo_to_a_down_archive_fails_and_names_it(proxy: ProxyProcess) -> None:
    result = echoscu(LOOPBACK, proxy.port, "DOWN", "WS_ECHO_DOWN")
    assert not result.ok and "Received Echo Response" in result.output
    op = last_operation(proxy, "WS_ECHO_DOWN", "C-ECHO")
    assert op["status"] == "0x0110" and "see the upstream lines" in op["hint"]
    [up] = upstream_of(proxy, op)
    assert up["archive"] == "site_down" and "refused" in up["error"]
    assert up["hint"].startswith("check that PACS_DOWN is running")


# -- C-FIND: the same answers as the archive's own ------------------------------------------

def _cases(data: SyntheticSet) -> list[tuple[str, str, list[str]]]:
    s = data.studies
    both = f"{s[0].study_uid}\\{s[3].study_uid}"
    return [
        ("study", "STUDY", ["StudyInstanceUID", "PatientID", "PatientName", "StudyDate",
                            "AccessionNumber", "NumberOfStudyRelatedInstances"]),
        ("study", "STUDY", ["PatientName=DOE^JANE*", "StudyInstanceUID", "PatientBirthDate"]),
        ("study", "STUDY", ["StudyDate=20200102-20200104", "StudyInstanceUID", "StudyTime"]),
        ("study", "STUDY", [f"StudyInstanceUID={both}", "PatientID", "RetrieveAETitle"]),
        ("study", "STUDY", ["PatientID=NOBODY", "StudyInstanceUID"]),
        ("study", "SERIES", [f"StudyInstanceUID={s[1].study_uid}", "SeriesInstanceUID",
                             "Modality", "SeriesNumber", "NumberOfSeriesRelatedInstances"]),
        ("study", "IMAGE", [f"StudyInstanceUID={s[2].study_uid}", "SeriesInstanceUID",
                            "SOPInstanceUID", "SOPClassUID", "InstanceNumber"]),
        ("patient", "PATIENT", ["PatientID=PAT000*", "PatientName", "PatientBirthDate",
                                "NumberOfPatientRelatedStudies"]),
        ("patient", "STUDY", [f"PatientID={s[4].patient_id}", "StudyInstanceUID",
                              "StudyDate"]),
        ("patient", "SERIES", [f"PatientID={s[0].patient_id}",
                               f"StudyInstanceUID={s[0].study_uid}", "SeriesInstanceUID"]),
        ("patient", "IMAGE", [f"PatientID={s[0].patient_id}", f"StudyInstanceUID={s[0].study_uid}",
                              "SeriesInstanceUID", "SOPInstanceUID"]),
    ]


CASE_IDS = ["study-all", "study-name-wildcard", "study-date-range", "study-uid-list",
            "study-none", "study-series", "study-image", "patient-patient", "patient-study",
            "patient-series", "patient-image"]


@pytest.mark.parametrize("case", range(len(CASE_IDS)), ids=CASE_IDS)
def test_find_answers_exactly_as_the_archive(case: int, proxy: ProxyProcess,
                                             archive: OrthancArchive,
                                             synthetic_studies: SyntheticSet) -> None:
    model, level, keys = _cases(synthetic_studies)[case]
    calling = f"WS_CASE{case}"
    direct = findscu(LOOPBACK, archive.dicom_port, archive.aet, PROXY_AT_A, model=model,
                     level=level, keys=keys)
    relayed = via_proxy(proxy, "RELAY", calling, model=model, level=level, keys=keys)
    assert direct.final_status == SUCCESS, direct.output[-1500:]
    assert relayed.final_status == SUCCESS, relayed.output[-1500:]
    assert canonical(relayed.identifiers) == canonical(direct.identifiers)
    if case != CASE_IDS.index("study-none"):
        assert relayed.identifiers
    if "RetrieveAETitle" in keys:   # retrieves must come back through the proxy
        assert relayed.values("RetrieveAETitle") == ["RELAY"] * len(relayed.identifiers)
    op = last_operation(proxy, calling, "C-FIND")
    assert (op["status"], op["matches"], op["query_level"]) == (
        "0x0000", len(relayed.identifiers), level)
    [up] = upstream_of(proxy, op)
    assert (up["archive"], up["status"], up["matches"]) == ("site_a", "0x0000",
                                                          len(direct.identifiers))


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian,
                                    ExplicitVRBigEndian], ids=["implicit", "explicit", "big"])
def test_each_transfer_syntax_the_workstation_offers(syntax: str, proxy: ProxyProcess,
                                                     synthetic_studies: SyntheticSet) -> None:
    answers = list(scu_find(proxy.port, "RELAY", study_query(StudyDate="20200101-20200103"),
                            [syntax]))
    assert answers[-1][0] == SUCCESS
    found = sorted(str(ds.StudyInstanceUID) for status, ds in answers[:-1])
    expected = synthetic_studies.studies_between("20200101", "20200103")
    assert found == sorted(s.study_uid for s in expected)


def test_identifier_reaches_the_archive_unchanged(proxy: ProxyProcess,
                                                  scripted: ScriptedArchive) -> None:
    scripted.reset(gated_stream([study_match(1)]))
    query = study_query(PatientName="DOE^J*", StudyDate="20200101-", ModalitiesInStudy="CT\\MR",
                        AccessionNumber="", PatientBirthDate="")
    query.SpecificCharacterSet = "ISO_IR 100"
    item = Dataset()
    item.ReferencedSOPClassUID = ""
    query.ReferencedStudySequence = [item]
    query.add_new(0x00091010, "LO", "kept")          # a private element
    answers = list(scu_find(proxy.port, "SCRIPTED", query))
    assert [status for status, _ in answers] == [0xFF00, SUCCESS]
    [received] = scripted.identifiers
    assert received == query
    assert scripted.calling_aets == ["QR_PROXY"]      # calling_ae defaults to proxy.ae_title


@pytest.mark.parametrize("final", [0xA700, 0xC001, 0xA900], ids=hex)
def test_the_archive_final_status_is_passed_back(final: int, proxy: ProxyProcess,
                                                 scripted: ScriptedArchive) -> None:
    def script(archive: ScriptedArchive, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        yield 0xFF00, study_match(3)
        yield final, None

    scripted.reset(script)
    before = len(proxy.operations("C-FIND"))
    answers = list(scu_find(proxy.port, "SCRIPTED", study_query()))
    assert [status for status, _ in answers] == [0xFF00, final]
    deadline = time.monotonic() + 10
    while len(proxy.operations("C-FIND")) == before:
        assert time.monotonic() < deadline, "no operation line"
        time.sleep(0.02)
    op = proxy.operations("C-FIND")[-1]
    assert (op["calling_ae"], op["status"], op["matches"]) == ("WS_PYNET", f"0x{final:04X}", 1)


# -- AE titles: the archive sees its own idea of who calls --------------------------------------

def test_archive_sees_the_calling_ae_it_knows(proxy: ProxyProcess,
                                              archive: OrthancArchive) -> None:
    result = via_proxy(proxy, "RELAY", "WS_STRANGER", keys=["StudyInstanceUID"])
    assert result.ok and len(result.identifiers) == 5
    assert "WS_STRANGER" not in archive.calling_aets() + archive.rejected_calling_aets()
    assert PROXY_AT_A in archive.calling_aets()
    assert PROXY_AT_A not in archive.rejected_calling_aets()


def test_wrong_calling_ae_is_refused_by_the_archive_and_explained(
        proxy: ProxyProcess, archive: OrthancArchive) -> None:
    result = via_proxy(proxy, "WRONG", "WS_WRONG", keys=["StudyInstanceUID"])
    assert result.final_status == UNABLE_TO_PROCESS and result.identifiers == []
    assert "NOT_KNOWN" in archive.rejected_calling_aets()
    op = last_operation(proxy, "WS_WRONG", "C-FIND")
    assert op["status"] == "0xC000" and "rejected calling AE NOT_KNOWN" in op["hint"]
    [up] = upstream_of(proxy, op)
    assert up["archive"] == "site_wrong" and up["status"] == "none"
    assert "calling AE title not recognised" in up["error"]
    assert up["hint"] == ("add NOT_KNOWN to the known AEs of PACS_A "
                          "(or set calling_ae for archives.site_wrong)")


# -- admission -------------------------------------------------------------------------------

@pytest.mark.parametrize(("called", "calling", "reason", "logged"), [
    ("NOPE", "WS_ANY", "Called AE Title Not Recognized", "called AE title 'NOPE' is not a route"),
    ("GUARDED", "WS_BAD", "Calling AE Title Not Recognized",
     "calling AE title 'WS_BAD' is not allowed on route 'GUARDED'"),
])
def test_unknown_called_or_calling_ae_is_rejected(proxy: ProxyProcess, archive: OrthancArchive,
                                                  called: str, calling: str, reason: str,
                                                  logged: str) -> None:
    before = len(archive.calling_aets())
    result = via_proxy(proxy, called, calling, keys=["StudyInstanceUID"])
    assert result.association_rejected and result.rejection_reason == reason
    rejected = proxy.wait_event("association_rejected",
                                lambda e: e["calling_ae"] == calling and e["called_ae"] == called)
    assert rejected["reason"].startswith(logged) and rejected["hint"]
    assert rejected["peer"].startswith("127.0.0.1:") and rejected["assoc_id"]
    assert len(archive.calling_aets()) == before          # nothing went upstream


def test_allowed_calling_ae_gets_in(proxy: ProxyProcess) -> None:
    assert via_proxy(proxy, "GUARDED", "WS_OK", keys=["StudyInstanceUID"]).ok


# -- archives that are down, silent, or never answer --------------------------------------------

def test_archive_down_gives_unable_to_process_and_a_hint(proxy: ProxyProcess) -> None:
    started = time.monotonic()
    result = via_proxy(proxy, "DOWN", "WS_DOWN", keys=["StudyInstanceUID"])
    assert result.final_status == UNABLE_TO_PROCESS and time.monotonic() - started < 5
    op = last_operation(proxy, "WS_DOWN", "C-FIND")
    [up] = upstream_of(proxy, op)
    assert up["archive"] == "site_down" and "TCP connection refused" in up["error"]
    assert up["hint"].startswith("check that PACS_DOWN is running and reachable")


@pytest.mark.parametrize(("route", "error"), [
    ("SILENT", "during negotiation"),                    # TCP accepted, no A-ASSOCIATE-AC
    ("MUTE", f"no C-FIND response within timeout ({FAST_TIMEOUT:g}s)"),   # C-FIND unanswered
])
def test_archive_that_never_answers_times_out(proxy: ProxyProcess, scripted: ScriptedArchive,
                                              route: str, error: str) -> None:
    scripted.reset(never_answers)
    calling = f"WS_{route}"
    started = time.monotonic()
    result = via_proxy(proxy, route, calling, keys=["StudyInstanceUID"])
    elapsed = time.monotonic() - started
    assert result.final_status == UNABLE_TO_PROCESS
    assert FAST_TIMEOUT * 0.9 < elapsed < FAST_TIMEOUT + 4
    op = last_operation(proxy, calling, "C-FIND")
    [up] = upstream_of(proxy, op)
    assert error in up["error"] and up["hint"]
    assert op["status"] == "0xC000" and error in op["hint"]


# -- streaming and C-CANCEL --------------------------------------------------------------------

def test_first_match_arrives_before_the_archive_has_finished(proxy: ProxyProcess,
                                                            scripted: ScriptedArchive) -> None:
    matches = [study_match(k) for k in range(3)]
    scripted.reset(gated_stream(matches))
    seen: list[int] = []
    for status, ds in scu_find(proxy.port, "SCRIPTED", study_query()):
        seen.append(status)
        if len(seen) == 1:
            # The archive is still holding matches 2 and 3 back, waiting for us.
            assert status == 0xFF00 and ds is not None
            assert not scripted.finished.is_set() and not scripted.gate.is_set()
            scripted.gate.set()
    assert seen == [0xFF00, 0xFF00, 0xFF00, SUCCESS]
    assert scripted.finished.is_set()


def test_cancel_reaches_the_archive_and_cancel_comes_back(proxy: ProxyProcess,
                                                         scripted: ScriptedArchive) -> None:
    scripted.reset(until_cancelled(study_match(7)))
    started = time.monotonic()
    result = via_proxy(proxy, "SCRIPTED", "WS_CANCEL", keys=["StudyInstanceUID"],
                       cancel_after=1)
    assert time.monotonic() - started < 10       # not the archive's 15 s give-up
    assert scripted.cancelled.is_set()           # the C-CANCEL reached the archive
    assert result.final_status == CANCEL and len(result.identifiers) == 1
    op = last_operation(proxy, "WS_CANCEL", "C-FIND")
    assert (op["status"], op["matches"]) == ("0xFE00", 1)
    [up] = upstream_of(proxy, op)
    assert up["status"] == "0xFE00"              # the archive's own answer to the cancel


# -- the log and the metrics agree with what happened ---------------------------------------------

def test_log_lines_follow_the_contract(proxy: ProxyProcess) -> None:
    # (runs after the tests above in this module, over everything they did)
    lines = proxy.events()
    for line in lines:
        assert list(line)[:3] == ["timestamp", "level", "event"], line
    scoped = [e for e in lines if e["event"].startswith("association_")
              or e["event"] == "operation" or (e["event"] == "upstream" and "assoc_id" in e)]
    for line in scoped:
        assert all(line.get(k) for k in ("assoc_id", "calling_ae", "called_ae", "peer")), line
    accepted = {e["assoc_id"] for e in proxy.events("association_accepted")}
    ops = proxy.events("operation")
    # each association here made exactly one request: one operation line each
    assert sorted(e["assoc_id"] for e in ops) == sorted(accepted)
    for op in ops:
        assert {"operation", "status", "duration_ms", "archives"} <= set(op)
    for assoc_id in accepted:   # and each was released (the last one may still be closing)
        proxy.wait_event("association_released", lambda e, a=assoc_id: e["assoc_id"] == a,
                         timeout=10)


def test_patient_identifiers_are_hashed_everywhere(proxy: ProxyProcess,
                                                   synthetic_studies: SyntheticSet) -> None:
    patient = synthetic_studies.studies[1].patient_id
    for _ in range(2):
        assert via_proxy(proxy, "RELAY", "WS_PHI", keys=[
            f"PatientID={patient}", "PatientName=DOE^JANE2", "StudyInstanceUID"]).ok
    assert via_proxy(proxy, "DOWN", "WS_PHI", keys=[f"PatientID={patient}"]).final_status
    assert proxy.reader is not None
    stdout = "\n".join(proxy.reader.lines)
    for secret in [s.patient_id for s in synthetic_studies.studies] + ["DOE^JANE2", "DOE^JOHN1"]:
        assert secret not in stdout
    token = PhiFilter("hash").token(patient)
    queries = [op["query"] for op in proxy.operations("C-FIND") if op["calling_ae"] == "WS_PHI"]
    assert [q["PatientID"] for q in queries] == [token] * 3


def test_metrics_match_the_log(proxy: ProxyProcess) -> None:
    proxy.wait_event("association_released", lambda e: e["calling_ae"] == "WS_PHI")
    ops = proxy.operations()

    def count(operation: str, route: str, status: str) -> int:
        category = {"0x0000": "success", "0xFE00": "cancel"}
        return sum(1 for o in ops if o["operation"] == operation and o["route"] == route
                   and category.get(o["status"], "failure") == status)

    for operation, route, status in [("C-FIND", "RELAY", "success"),
                                     ("C-FIND", "DOWN", "failure"),
                                     ("C-FIND", "SCRIPTED", "cancel"),
                                     ("C-ECHO", "LOCAL", "success"),
                                     ("C-ECHO", "DOWN", "failure")]:
        assert count(operation, route, status) > 0
        assert proxy.metric("dicom_proxy_operations_total", operation=operation,
                            called_ae=route, status=status) == count(operation, route, status)
    finds = sum(1 for o in ops if o["operation"] == "C-FIND" and o["route"] == "RELAY")
    assert proxy.metric("dicom_proxy_operation_duration_seconds_count", operation="C-FIND",
                        called_ae="RELAY") == finds
    accepted = proxy.events("association_accepted")
    assert proxy.metric("dicom_proxy_associations_total", called_ae="RELAY",
                        result="accepted") == sum(e["called_ae"] == "RELAY" for e in accepted)
    assert proxy.metric("dicom_proxy_associations_total", called_ae="unknown",
                        result="rejected") >= 1              # NOPE is not a configured route
    assert proxy.metric("dicom_proxy_associations_total", called_ae="GUARDED",
                        result="rejected") >= 1
    ups = [u for u in proxy.events("upstream") if u["archive"] == "site_a"
           and u["operation"] == "C-FIND"]
    assert proxy.metric("dicom_proxy_upstream_requests_total", archive="site_a",
                        operation="C-FIND", status="success") == len(ups)
    assert proxy.metric("dicom_proxy_find_matches_total", archive="site_a") == sum(
        u["matches"] for u in ups)
    assert proxy.metric("dicom_proxy_upstream_requests_total", archive="site_down",
                        operation="C-FIND", status="failure") >= 1
    assert proxy.metric("dicom_proxy_upstream_duration_seconds_count", archive="site_a",
                        operation="C-ECHO") >= 1
    deadline = time.monotonic() + 10
    while proxy.metric("dicom_proxy_associations_active") != 0:
        assert time.monotonic() < deadline, "associations_active never went back to 0"
        time.sleep(0.05)
