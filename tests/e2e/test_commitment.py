"""Storage Commitment through the proxy (issue #14): a pynetdicom modality → the proxy →
Orthanc (a Storage Commitment SCP that reports on a new association to the requesting AE
as its DicomModalities place it: the modality directly, the proxy's AE title through it).

- the report the modality gets through the proxy equals the one it gets directly from
  Orthanc for the same instances: event type, committed and failed lists (an instance the
  archive never got is in the failure list both ways);
- a commitment asked while its instances wait in the spool (archive down) reaches the
  archive only after they were delivered, and reports success;
- SIGKILL between the N-ACTION and the report: after a restart the report still arrives;
- a modality not listening at first gets its report once it listens (retries);
- an unknown Transaction UID from an archive: 0x0115; a modality not in [destinations]:
  dead letter naming the AE to add; operation/upstream lines and metrics.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role
from pynetdicom.sop_class import StorageCommitmentPushModel as COMMITMENT

from tests.e2e.commitment_peers import (
    WELL_KNOWN,
    CommitModality,
    Report,
    SameAssociationArchive,
    instances,
)
from tests.e2e.conftest import StoreSCPFactory
from tests.e2e.orthanc import OrthancArchive
from tests.e2e.ports import LOOPBACK, free_port
from tests.e2e.proxy_harness import ProxyProcess, archive_entry, to_toml

ProxyFactory = Callable[..., ProxyProcess]
ROUTE, PROXY_AE, MODALITY = "COMMIT_PROXY", "QR_PROXY", "MODALITY"


@pytest.fixture(scope="module")
def proxy_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def modality_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def pacs(proxy_port: int, modality_port: int) -> Iterator[OrthancArchive]:
    """Orthanc knowing the modality (direct) and the proxy's AE title (through it)."""
    with OrthancArchive("COMMITPACS", known_modalities={
            "proxy": (PROXY_AE, LOOPBACK, proxy_port),
            "modality": (MODALITY, LOOPBACK, modality_port)}) as archive:
        yield archive


@pytest.fixture
def modality(modality_port: int) -> Iterator[CommitModality]:
    peer = CommitModality(MODALITY, modality_port)
    yield peer
    peer.stop()


def rules(pacs: OrthancArchive, proxy_port: int, modality_port: int,
          spool: Path) -> dict[str, Any]:
    return {"archives": {"pacs": archive_entry(pacs, timeout=5)},
            "destinations": {"modality": {"ae_title": MODALITY, "host": LOOPBACK,
                                          "port": modality_port}},
            "routes": [{"called_ae": ROUTE, "archives": ["pacs"], "store_to": ["pacs"]}],
            "proxy": {"port": proxy_port},
            "spool": {"dir": str(spool), "retry_initial": 0.2, "retry_max": 0.5}}


def delivered(proxy: ProxyProcess, datasets: list[Dataset]) -> None:
    """Wait until the proxy's spool has forwarded ``datasets`` to the archive."""
    wanted = {str(ds.SOPInstanceUID) for ds in datasets}
    for uid in wanted:
        proxy.wait_event("upstream", lambda e, u=uid: e.get("operation") == "C-STORE"
                         and e.get("status") == "0x0000" and e.get("sop_instance_uid") == u)


def settled(spool: Path, timeout: float = 30) -> None:
    """Wait until no commitment is pending in the journal (delivered reports are removed
    just after their upstream line)."""
    deadline = time.monotonic() + timeout
    while list((spool / "commitment").glob("*.json")):
        assert time.monotonic() < deadline, "commitments still pending"
        time.sleep(0.02)


def same_report(through: Report, direct: Report) -> None:
    assert through.event_type == direct.event_type
    assert through.lists() == direct.lists()
    assert through.transfer_syntax == direct.transfer_syntax
    # Byte-faithful: Orthanc's own Event Information, its Transaction UID (same length)
    # aside.
    assert len(through.transaction_uid) == len(direct.transaction_uid)
    assert through.raw.replace(through.transaction_uid.encode(), b"") == \
        direct.raw.replace(direct.transaction_uid.encode(), b"")


def transaction_uids() -> tuple[str, str]:
    """Two fresh Transaction UIDs of one length (their reports compare byte for byte)."""
    base = f"1.2.826.0.1.3680043.10.543.{random.randint(10**8, 10**9 - 1)}."
    return base + "1", base + "2"


def test_the_report_through_the_proxy_is_the_archives_own(
        pacs: OrthancArchive, proxy_port: int, modality_port: int,
        modality: CommitModality, proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    """(1) all committed, (3) one never stored, (6) operation/upstream lines, metrics."""
    modality.listen()
    stored, missing = instances(3), instances(1)
    proxy = proxy_factory(rules(pacs, proxy_port, modality_port, tmp_path / "spool"))
    assert modality.store(proxy.port, ROUTE, stored) == [0, 0, 0]
    delivered(proxy, stored)

    for refs in (stored, stored + missing):
        direct_uid, through_uid = transaction_uids()
        status, _ = modality.commit(pacs.dicom_port, pacs.aet, direct_uid, refs)
        assert status == 0x0000
        direct = modality.report_for(direct_uid)
        assert direct.calling_ae == pacs.aet
        status, rsp = modality.commit(proxy.port, ROUTE, through_uid, refs)
        assert status == 0x0000 and rsp.ActionTypeID == 1
        through = modality.report_for(through_uid)
        assert through.calling_ae == PROXY_AE
        same_report(through, direct)
    assert direct.event_type == 2 and len(direct.lists()[1]) == 1       # (3) failure list
    assert {u for _, u, _ in direct.lists()[1]} == {str(missing[0].SOPInstanceUID)}

    # (6) one operation line per N-ACTION and N-EVENT-REPORT answered, upstream lines.
    proxy.wait_event("upstream", lambda e: e.get("operation") == "N-EVENT-REPORT"
                     and e.get("transaction_uid") == through_uid)
    actions, reports = proxy.operations("N-ACTION"), proxy.operations("N-EVENT-REPORT")
    assert [(e["status"], e["archives"], e["commitment"]) for e in actions] == \
        [("0x0000", ["pacs"], "journaled")] * 2
    assert [(e["status"], e["calling_ae"], e.get("event_type")) for e in reports] == \
        [("0x0000", pacs.aet, 1), ("0x0000", pacs.aet, 2)], reports
    ups = [(e["archive"], e["operation"], e["status"]) for e in proxy.events("upstream")
           if e.get("operation") in ("N-ACTION", "N-EVENT-REPORT")]
    assert sorted(ups) == sorted([("pacs", "N-ACTION", "0x0000"),
                                  ("modality", "N-EVENT-REPORT", "0x0000")] * 2)
    settled(tmp_path / "spool")
    m = proxy.metric
    assert m("dicom_proxy_operations_total", operation="N-ACTION", status="success") == 2
    assert m("dicom_proxy_operations_total", operation="N-EVENT-REPORT", status="success") == 2
    assert m("dicom_proxy_upstream_requests_total", archive="pacs", operation="N-ACTION") == 2
    deadline = time.monotonic() + 10        # the gauge follows the journal's last change
    while m("dicom_proxy_commitments_pending", archive="pacs") != 0:
        assert time.monotonic() < deadline, "dicom_proxy_commitments_pending stays above 0"
        time.sleep(0.05)


def test_a_commitment_waits_for_the_spool_to_deliver_its_instances(
        pacs: OrthancArchive, proxy_port: int, modality_port: int,
        modality: CommitModality, proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    """(2) archive down while the modality stores and asks: the N-ACTION goes after the
    instances, and the report says all committed."""
    modality.listen()
    stored = instances(4, "COMMIT2")
    proxy = proxy_factory(rules(pacs, proxy_port, modality_port, tmp_path / "spool"))
    pacs.stop()
    try:
        assert modality.store(proxy.port, ROUTE, stored) == [0] * 4          # spooled
        uid = generate_uid()
        assert modality.commit(proxy.port, ROUTE, uid, stored)[0] == 0x0000   # journaled
        proxy.wait_event("upstream", lambda e: e.get("operation") == "C-STORE"
                         and e.get("error"))                                 # archive down
        assert not [e for e in proxy.events("upstream") if e.get("operation") == "N-ACTION"]
    finally:
        pacs.start()
    report = modality.report_for(uid)
    assert report.event_type == 1 and report.calling_ae == PROXY_AE
    assert sorted(u for _, u in report.lists()[0]) == sorted(str(d.SOPInstanceUID)
                                                              for d in stored)
    events = proxy.events("upstream")
    stores = [i for i, e in enumerate(events) if e.get("operation") == "C-STORE"
              and e.get("status") == "0x0000"]
    [action] = [i for i, e in enumerate(events) if e.get("operation") == "N-ACTION"]
    assert len(stores) == 4 and max(stores) < action


def test_a_sigkilled_proxy_still_delivers_the_report_after_restart(
        pacs: OrthancArchive, proxy_port: int, modality_port: int,
        modality: CommitModality, proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    """(4) SIGKILL between the N-ACTION and the report (the archive down meanwhile)."""
    modality.listen()
    stored = instances(2, "COMMIT4")
    spool = tmp_path / "spool"
    first = proxy_factory(rules(pacs, proxy_port, modality_port, spool), check_exit=False)
    pacs.stop()
    try:
        assert modality.store(first.port, ROUTE, stored) == [0, 0]
        uid = generate_uid()
        assert modality.commit(first.port, ROUTE, uid, stored)[0] == 0x0000
        first.kill()                                       # no chance to tidy up
        assert list((spool / "commitment").glob("*.json"))
    finally:
        pacs.start()
    second = proxy_factory(rules(pacs, proxy_port, modality_port, spool))
    report = modality.report_for(uid)
    assert report.event_type == 1 and len(report.lists()[0]) == 2
    second.wait_event("upstream", lambda e: e.get("operation") == "N-EVENT-REPORT"
                      and e.get("status") == "0x0000")
    settled(spool)


def test_an_unreachable_modality_gets_its_report_once_it_listens(
        pacs: OrthancArchive, proxy_port: int, modality_port: int,
        modality: CommitModality, proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    """(5) nothing listens on the modality's port when the report comes: retried."""
    stored = instances(1, "COMMIT5")
    proxy = proxy_factory(rules(pacs, proxy_port, modality_port, tmp_path / "spool"))
    assert modality.store(proxy.port, ROUTE, stored) == [0]
    delivered(proxy, stored)
    uid = generate_uid()
    assert modality.commit(proxy.port, ROUTE, uid, stored)[0] == 0x0000
    for _attempt in range(2):                             # two failed attempts at least
        proxy.wait_event("upstream", lambda e: e.get("operation") == "N-EVENT-REPORT"
                         and e.get("error"))
    modality.listen()
    report = modality.report_for(uid)
    assert report.event_type == 1
    failed = [e for e in proxy.events("upstream")
              if e.get("operation") == "N-EVENT-REPORT" and e.get("error")]
    assert failed and all(e["archive"] == "modality" for e in failed)


def test_unknown_transactions_and_unknown_modalities(
        pacs: OrthancArchive, proxy_port: int, modality_port: int,
        proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    """An archive's report for a Transaction UID the proxy never asked about: 0x0115 and
    an operation line; a modality not in [destinations]: dead letter naming the AE."""
    proxy = proxy_factory(rules(pacs, proxy_port, modality_port, tmp_path / "spool"))
    ae = AE(ae_title=pacs.aet)                         # the archive's title: admitted
    ae.add_requested_context(COMMITMENT)
    assoc = ae.associate(LOOPBACK, proxy.port, ae_title=PROXY_AE,
                         ext_neg=[build_role(COMMITMENT, scu_role=False, scp_role=True)])
    assert assoc.is_established
    info = Dataset()
    info.TransactionUID = generate_uid()
    try:
        status, _ = assoc.send_n_event_report(info, 1, COMMITMENT, WELL_KNOWN)
    finally:
        assoc.release()
    assert int(status.Status) == 0x0115
    line = proxy.wait_event("operation", lambda e: e.get("operation") == "N-EVENT-REPORT")
    assert line["status"] == "0x0115" and "Transaction UID" in line["hint"]

    stranger = CommitModality("STRANGER", free_port())
    stored = instances(1, "COMMIT6")
    assert stranger.store(proxy.port, ROUTE, stored) == [0]
    delivered(proxy, stored)
    assert stranger.commit(proxy.port, ROUTE, generate_uid(), stored)[0] == 0x0000
    dead = proxy.wait_event("commitment_dead_lettered")
    assert dead["modality"] == "STRANGER" and "ae_title = 'STRANGER'" in dead["hint"]
    assert proxy.metric("dicom_proxy_commitment_dead_letters") == 1


def test_doctor_checks_the_commitment_path(
        pacs: OrthancArchive, proxy_port: int, store_scp_factory: StoreSCPFactory,
        tmp_path: Path) -> None:
    """Orthanc accepts Storage Commitment: the line says it must know the proxy's AE title
    and address; a storescp as commit_to does not: FAIL with the fix."""
    scp = store_scp_factory("PLAINSCP")
    rules = {"proxy": {"ae_title": PROXY_AE, "host": LOOPBACK, "port": proxy_port},
             "archives": {"pacs": archive_entry(pacs),
                          "plain": {"ae_title": scp.aet, "host": LOOPBACK, "port": scp.port}},
             "routes": [{"called_ae": ROUTE, "archives": ["pacs"], "store_to": ["pacs"]},
                        {"called_ae": "PLAIN", "archives": ["pacs"], "commit_to": "plain"}]}
    path = tmp_path / "rules.toml"
    path.write_text(to_toml(rules))
    proc = subprocess.run([sys.executable, "-m", "proxy.cli", "doctor", "--rules", str(path),
                           "--timeout", "5"], capture_output=True, text=True, timeout=90,
                          stdin=subprocess.DEVNULL)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    told = [line for line in lines if "accepts Storage Commitment" in line]
    assert len(told) == 1 and "archive pacs" in told[0], lines
    assert f"{PROXY_AE} at {LOOPBACK}, port {proxy_port}" in told[0]
    assert "must know" in told[0]
    refused = [line for line in lines if "did not accept Storage Commitment" in line]
    assert len(refused) == 1 and "archive plain" in refused[0], lines


def test_a_report_on_the_forwarding_association_is_taken_and_delivered(
        modality_port: int, modality: CommitModality, proxy_factory: ProxyFactory,
        tmp_path: Path) -> None:
    """An archive that reports on the N-ACTION's own association (J.3.3): the proxy
    answers it there and the modality gets the archive's Event Information as sent."""
    modality.listen()
    archive = SameAssociationArchive().start()
    try:
        proxy = proxy_factory({
            "archives": {"same": {"ae_title": archive.aet, "host": LOOPBACK,
                                  "port": archive.port, "timeout": 5}},
            "destinations": {"modality": {"ae_title": MODALITY, "host": LOOPBACK,
                                          "port": modality_port}},
            "routes": [{"called_ae": ROUTE, "archives": ["same"], "commit_to": "same"}],
            "spool": {"dir": str(tmp_path / "spool"), "retry_initial": 0.2,
                      "retry_max": 0.5}})
        uid = generate_uid()
        assert modality.commit(proxy.port, ROUTE, uid, instances(2, "COMMIT7"))[0] == 0
        report = modality.report_for(uid)
        assert archive.done.wait(30) and archive.answers == [0x0000]
        assert report.calling_ae == PROXY_AE and report.event_type == 1
        assert report.raw == archive.sent[0]
        line = proxy.wait_event("operation", lambda e: e.get("operation") == "N-EVENT-REPORT")
        assert (line["status"], line["association"], line["modality"]) == \
            ("0x0000", "forwarding", MODALITY)
    finally:
        archive.stop()


def test_an_archive_that_never_reports_is_said_overdue(
        modality_port: int, modality: CommitModality, proxy_factory: ProxyFactory,
        tmp_path: Path) -> None:
    """The archive takes the N-ACTION and never reports: after [spool] commitment_overdue
    the operator is told which commitment waits and what to check."""
    modality.listen()
    archive = SameAssociationArchive("SILENT", reports=False).start()
    try:
        proxy = proxy_factory({
            "archives": {"silent": {"ae_title": archive.aet, "host": LOOPBACK,
                                    "port": archive.port, "timeout": 5}},
            "destinations": {"modality": {"ae_title": MODALITY, "host": LOOPBACK,
                                          "port": modality_port}},
            "routes": [{"called_ae": ROUTE, "archives": ["silent"], "commit_to": "silent"}],
            "spool": {"dir": str(tmp_path / "spool"), "commitment_overdue": 1}})
        uid = generate_uid()
        assert modality.commit(proxy.port, ROUTE, uid, instances(1, "COMMIT9"))[0] == 0
        assert archive.done.wait(30)                          # it has the N-ACTION
        line = proxy.wait_event("commitment_overdue")
        assert (line["archive"], line["transaction_uid"], line["modality"]) == \
            ("silent", uid, MODALITY)
        assert line["level"] == "warning" and "QR_PROXY" in line["hint"]
        assert line["waiting_s"] >= 1
        assert proxy.metric("dicom_proxy_commitments_pending", archive="silent") == 1
    finally:
        archive.stop()


def test_a_report_kept_for_an_unreachable_modality_survives_sigkill(
        pacs: OrthancArchive, proxy_port: int, modality_port: int,
        modality: CommitModality, proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    """(4) the other window: the report is journaled, the modality not listening; SIGKILL;
    after a restart (the modality back) it is delivered, once."""
    stored = instances(1, "COMMIT8")
    spool = tmp_path / "spool"
    first = proxy_factory(rules(pacs, proxy_port, modality_port, spool), check_exit=False)
    assert modality.store(first.port, ROUTE, stored) == [0]
    delivered(first, stored)
    uid = generate_uid()
    assert modality.commit(first.port, ROUTE, uid, stored)[0] == 0x0000
    first.wait_event("operation", lambda e: e.get("operation") == "N-EVENT-REPORT"
                     and e.get("status") == "0x0000")                  # journaled
    first.wait_event("upstream", lambda e: e.get("operation") == "N-EVENT-REPORT"
                     and e.get("error"))                               # not delivered
    first.kill()
    assert list((spool / "commitment").glob("*.report"))
    modality.listen()
    second = proxy_factory(rules(pacs, proxy_port, modality_port, spool))
    report = modality.report_for(uid)
    assert report.event_type == 1 and report.calling_ae == PROXY_AE
    second.wait_event("upstream", lambda e: e.get("operation") == "N-EVENT-REPORT"
                      and e.get("status") == "0x0000")
    assert len(modality.reports) == 1
    assert not [e for e in second.events("upstream") if e.get("operation") == "N-ACTION"]


def test_an_empty_reference_list_is_the_archives_to_judge(
        pacs: OrthancArchive, proxy_port: int, modality_port: int,
        modality: CommitModality, proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    """An empty Referenced SOP Sequence: Orthanc reports it (all committed, empty list),
    and so does the modality through the proxy. No sequence at all: 0x0120 from the proxy,
    never journaled (Orthanc itself gives no N-ACTION response to that)."""
    modality.listen()
    proxy = proxy_factory(rules(pacs, proxy_port, modality_port, tmp_path / "spool"))
    direct_uid, through_uid = transaction_uids()
    assert modality.commit(pacs.dicom_port, pacs.aet, direct_uid, [])[0] == 0x0000
    assert modality.commit(proxy.port, ROUTE, through_uid, [])[0] == 0x0000
    same_report(modality.report_for(through_uid), modality.report_for(direct_uid))
    status, rsp = modality.commit(proxy.port, ROUTE, generate_uid(), None)
    assert status == 0x0120 and rsp.ErrorComment == "no Referenced SOP Sequence"
    line = proxy.wait_event("operation", lambda e: e.get("operation") == "N-ACTION"
                            and e.get("status") == "0x0120")
    assert line["hint"] == "no Referenced SOP Sequence"
    proxy.wait_event("upstream", lambda e: e.get("operation") == "N-EVENT-REPORT"
                     and e.get("transaction_uid") == through_uid and e.get("status"))
    settled(tmp_path / "spool")
