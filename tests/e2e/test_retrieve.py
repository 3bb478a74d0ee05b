"""C-MOVE and C-GET through the proxy, against real peers.

Archives: Orthanc with no modality entry for anybody (only C-GET can work — so any
instance that arrives proves the proxy pulled it over its own association), and
an Orthanc that knows the proxy as a modality for ``retrieve = "move"``. The
workstation is DCMTK movescu/getscu; destinations are DCMTK storescp or a
pynetdicom SCP that records what it received. Every delivery is checked instance
for instance: SOP Instance UIDs, transfer syntax and pixel data bytes.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

from tests.e2e.conftest import StoreSCPFactory
from tests.e2e.data import SyntheticSet, build_synthetic_set
from tests.e2e.dcmtk import StoreSCP, getscu, movescu
from tests.e2e.orthanc import OrthancArchive
from tests.e2e.ports import LOOPBACK, free_port
from tests.e2e.proxy_harness import ProxyProcess, archive_entry
from tests.e2e.retrieve_peers import (
    DEFLATED_FILE,
    ENCODED_FILES,
    AbortingArchive,
    CancellableMoveArchive,
    RecordingSCP,
    encoded_study,
)

SUCCESS, PENDING, CANCEL = 0x0000, 0xFF00, 0xFE00
WARNING = 0xB000                 # sub-operations complete, one or more failures
UNABLE_SUBOPS = 0xA702           # refused: out of resources, unable to perform sub-operations
DESTINATION_UNKNOWN = 0xA801
ROUTE = "PACS_VIA_PROXY"
WORKSTATION = "VIEWER"
ProxyFactory = Callable[..., ProxyProcess]


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSet:
    """3 CT studies x 2 series x 3 instances."""
    return build_synthetic_set(tmp_path_factory.mktemp("retrieve-ct"), 3, series_per_study=2,
                               instances_per_series=3, seed="retrieve")


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Dataset]]:
    """One study holding every bundled encoding: (study UID, SOP UID → original)."""
    study, paths = encoded_study(tmp_path_factory.mktemp("encoded"),
                                 [*ENCODED_FILES, DEFLATED_FILE])
    return study, {str(ds.SOPInstanceUID): ds for ds in map(dcmread, paths)}


@pytest.fixture(scope="module")
def pacs(studies: SyntheticSet, encoded: tuple[str, dict[str, Dataset]]
         ) -> Iterator[OrthancArchive]:
    """Orthanc with no modalities: nobody can be C-MOVEd to, only C-GET works."""
    with OrthancArchive("PACS") as archive:
        archive.upload(studies.paths)
        archive.upload(list(encoded[1].values()))
        yield archive


@pytest.fixture(scope="module")
def proxy_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def move_pacs(studies: SyntheticSet, proxy_port: int) -> Iterator[OrthancArchive]:
    """Orthanc that can only C-MOVE: it knows the proxy (QR_PROXY at proxy_port) only."""
    with OrthancArchive("MOVEPACS", known_modalities={
            "proxy": ("QR_PROXY", LOOPBACK, proxy_port)}) as archive:
        archive.upload(studies.paths)
        yield archive


def rules(archive: Any, destinations: dict[str, Any], **archive_extra: Any) -> dict[str, Any]:
    return {
        "archives": {"pacs": archive_entry(archive, **archive_extra)},
        "destinations": {name.lower(): {"ae_title": name, "host": LOOPBACK, "port": port}
                         for name, port in destinations.items()},
        "routes": [{"called_ae": ROUTE, "archives": ["pacs"]}],
    }


def move(proxy: ProxyProcess, destination: str, study_uid: str, **kw: Any) -> Any:
    return movescu(LOOPBACK, proxy.port, ROUTE, WORKSTATION, move_destination=destination,
                   keys=[f"StudyInstanceUID={study_uid}"], **kw)


def assert_identical(received: dict[str, Dataset], originals: dict[str, Dataset]) -> None:
    """Same SOP Instance UIDs; each in its original transfer syntax, pixel data byte-equal."""
    assert sorted(received) == sorted(originals)
    for uid, original in originals.items():
        got = received[uid]
        expected = {original.file_meta.TransferSyntaxUID}
        if expected == {DeflatedExplicitVRLittleEndian}:   # never proposed: arrives inflated
            expected = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
        assert got.file_meta.TransferSyntaxUID in expected, original.SOPClassUID.name
        if "PixelData" in original:
            assert got.PixelData == original.PixelData, original.file_meta.TransferSyntaxUID
        else:
            assert got == original


def by_uid(datasets: list[Dataset]) -> dict[str, Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in datasets}


def originals(studies: SyntheticSet, k: int) -> dict[str, Dataset]:
    return by_uid([dcmread(p) for p in studies.studies[k].paths])


# -- C-MOVE becomes a C-GET ---------------------------------------------------------------


def test_move_is_pulled_with_cget_and_arrives_instance_for_instance(
        pacs: OrthancArchive, studies: SyntheticSet, proxy_factory: ProxyFactory,
        store_scp_factory: StoreSCPFactory, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    dest = store_scp_factory("WS1")
    temp = tmp_path / "proxy-tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))          # where a leaked temp file would be
    proxy = proxy_factory(rules(pacs, {"WS1": dest.port}))
    monkeypatch.delenv("TMPDIR")
    result = move(proxy, "WS1", studies.studies[0].study_uid)

    assert result.final_status == SUCCESS, result.output[-3000:]
    assert (result.completed, result.failed, result.warning) == (6, 0, 0)
    assert_identical(by_uid(dest.received_datasets()), originals(studies, 0))
    assert dest.associations() == [("QR_PROXY", "WS1")]
    op = proxy.operations("C-MOVE")[-1]
    assert (op["status"], op["destination"], op["completed"], op["failed"]) == (
        "0x0000", "WS1", 6, 0)
    assert op["survey"] == "counted"        # one STUDY-level C-FIND, no per-instance listing
    ups = {(e["archive"], e["operation"]) for e in proxy.events("upstream")}
    assert ("pacs", "C-GET") in ups and ("pacs", "C-MOVE") not in ups
    assert proxy.metric("dicom_proxy_suboperations_total", operation="C-MOVE",
                        result="completed") == 6
    assert list(temp.iterdir()) == []                                 # no temp file leaked
    assert list((proxy.workdir / "spool" / "retrieve").glob("**/*.dcm")) == []


def test_every_encoding_arrives_in_its_original_syntax_byte_for_byte(
        pacs: OrthancArchive, encoded: tuple[str, dict[str, Dataset]],
        proxy_factory: ProxyFactory, store_scp_factory: StoreSCPFactory) -> None:
    dest = store_scp_factory("WS1")
    proxy = proxy_factory(rules(pacs, {"WS1": dest.port}))
    study, originals_ = encoded
    result = move(proxy, "WS1", study)
    assert result.final_status == SUCCESS, result.output[-3000:]
    assert result.completed == len(originals_)
    assert_identical(by_uid(dest.received_datasets()), originals_)


def test_cget_is_relayed_over_the_workstations_association(
        pacs: OrthancArchive, studies: SyntheticSet, encoded: tuple[str, dict[str, Dataset]],
        proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(rules(pacs, {}))
    got = getscu(LOOPBACK, proxy.port, ROUTE, WORKSTATION,
                 keys=[f"StudyInstanceUID={studies.studies[1].study_uid}"])
    assert got.final_status == SUCCESS, got.output[-3000:]
    assert (got.completed, got.failed) == (6, 0)
    assert_identical(by_uid(got.datasets), originals(studies, 1))
    assert proxy.operations("C-GET")[-1]["completed"] == 6

    # A workstation that negotiates JPEG 2000 gets the J2K instance as it is stored.
    study, originals_ = encoded
    j2k = {u: ds for u, ds in originals_.items()
           if ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.91"}
    (uid,) = j2k
    got = getscu(LOOPBACK, proxy.port, ROUTE, WORKSTATION, level="IMAGE",
                 keys=[f"StudyInstanceUID={study}",
                       f"SeriesInstanceUID={j2k[uid].SeriesInstanceUID}",
                       f"SOPInstanceUID={uid}"], extra_args=["+xw"])
    assert got.final_status == SUCCESS, got.output[-3000:]
    assert_identical(by_uid(got.datasets), j2k)


# -- the truth about failures -----------------------------------------------------------------


def test_unknown_move_destination_is_a801_and_named(
        pacs: OrthancArchive, studies: SyntheticSet, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(rules(pacs, {"WS1": free_port()}))
    result = move(proxy, "NOBODY", studies.studies[0].study_uid)
    assert result.final_status == DESTINATION_UNKNOWN
    op = proxy.operations("C-MOVE")[-1]
    assert op["destination"] == "NOBODY" and "NOBODY" in op["hint"]
    assert not [e for e in proxy.events("upstream") if e["operation"] == "C-GET"]


def test_a_move_that_matches_nothing_is_never_reported_as_success(
        pacs: OrthancArchive, studies: SyntheticSet, proxy_factory: ProxyFactory) -> None:
    # "C-MOVE succeeded" with nothing arriving is the failure this product exists to
    # prevent: a study no archive holds gets 0xC000 and says why, not Success 0/0/0.
    with StoreSCP("WS1") as scp:
        proxy = proxy_factory(rules(pacs, {"WS1": scp.port}))
        result = move(proxy, "WS1", "1.2.3.4.5.6.7.8.9.999")
        assert scp.received_files() == []
    assert result.final_status == 0xC000, result.output[-2000:]
    assert (result.completed, result.failed) in ((0, 0), (None, None))
    op = proxy.operations("C-MOVE")[-1]
    assert op["status"] == "0xC000" and "no instance matched" in op["hint"]


def test_a_dead_destination_fails_every_instance_and_pulls_nothing(
        pacs: OrthancArchive, studies: SyntheticSet, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(rules(pacs, {"WS1": free_port()}))    # nothing listens there
    result = move(proxy, "WS1", studies.studies[0].study_uid)
    assert result.final_status == UNABLE_SUBOPS, result.output[-3000:]
    assert (result.completed, result.failed) == (0, 6)
    op = proxy.operations("C-MOVE")[-1]
    assert op["failed"] == 6 and "unreachable" in op["hint"] + str(op.get("failure_reasons"))
    assert set(op["failed_sop_instance_uids"]) == set(studies.studies[0].sop_uids)
    assert not [e for e in proxy.events("upstream") if e["operation"] == "C-GET"]


def test_a_destination_refusing_some_classes_gets_a_warning_with_the_failed_list(
        pacs: OrthancArchive, encoded: tuple[str, dict[str, Dataset]],
        proxy_factory: ProxyFactory) -> None:
    ct_only = RecordingSCP("CTONLY", [CTImageStorage])
    try:
        proxy = proxy_factory(rules(pacs, {"CTONLY": ct_only.port}))
        study, originals_ = encoded
        result = move(proxy, "CTONLY", study)
        cts = {u for u, ds in originals_.items() if ds.SOPClassUID == CTImageStorage}
        assert result.final_status == WARNING, result.output[-3000:]
        assert (result.completed, result.failed) == (len(cts), len(originals_) - len(cts))
        assert set(ct_only.received) == cts
        op = proxy.operations("C-MOVE")[-1]
        assert set(op["failed_sop_instance_uids"]) == set(originals_) - cts
        sent = re.search(r"#\s*\d+,\s*(\d+) FailedSOPInstanceUIDList", result.output)
        assert sent and int(sent.group(1)) == result.failed          # listed to the workstation
    finally:
        ct_only.close()


def test_an_archive_aborting_mid_retrieve_gives_true_counts(
        studies: SyntheticSet, proxy_factory: ProxyFactory,
        store_scp_factory: StoreSCPFactory) -> None:
    datasets = [dcmread(p) for p in studies.studies[2].paths]
    archive = AbortingArchive("FLAKY", datasets, deliver=2)
    dest = store_scp_factory("WS1")
    try:
        proxy = proxy_factory(rules(archive, {"WS1": dest.port}))
        result = move(proxy, "WS1", studies.studies[2].study_uid)
        assert result.final_status == WARNING, result.output[-3000:]
        assert (result.completed, result.failed) == (2, 4)
        assert dest.received_sop_uids() == {str(d.SOPInstanceUID) for d in datasets[:2]}
        op = proxy.operations("C-MOVE")[-1]
        assert set(op["failed_sop_instance_uids"]) == {str(d.SOPInstanceUID)
                                                      for d in datasets[2:]}
        get = [e for e in proxy.events("upstream") if e["operation"] == "C-GET"][-1]
        assert "aborted" in get["error"]
    finally:
        archive.close()


def test_an_archive_falling_silent_mid_retrieve_is_given_up_on_after_its_timeout(
        studies: SyntheticSet, proxy_factory: ProxyFactory,
        store_scp_factory: StoreSCPFactory) -> None:
    datasets = [dcmread(p) for p in studies.studies[2].paths]
    stall = threading.Event()
    archive = AbortingArchive("SILENT", datasets, deliver=3, stall=stall)
    dest = store_scp_factory("WS1")
    try:
        proxy = proxy_factory(rules(archive, {"WS1": dest.port}, timeout=2))
        result = move(proxy, "WS1", studies.studies[2].study_uid)
        assert result.final_status == WARNING, result.output[-3000:]
        assert (result.completed, result.failed) == (3, 3)
        assert dest.received_sop_uids() == {str(d.SOPInstanceUID) for d in datasets[:3]}
        get = [e for e in proxy.events("upstream") if e["operation"] == "C-GET"][-1]
        assert "within timeout (2s)" in get["error"] and 1900 < get["duration_ms"] < 10000
        assert "archives.pacs.timeout" in (get.get("hint") or "")
    finally:
        stall.set()
        archive.close()


def test_a_cancelled_cget_counts_exactly_what_the_workstation_stored(
        pacs: OrthancArchive, studies: SyntheticSet, proxy_factory: ProxyFactory) -> None:
    """The proxy hands each C-STORE sub-operation over before the one before is answered
    (``proxy.dicom.link`` Rule 7); a C-CANCEL still stops the next one, and the final
    counts are what the workstation stored. (getscu cannot cancel: pynetdicom does.)"""
    proxy = proxy_factory(rules(pacs, {}))
    stored: list[str] = []

    def on_store(event: evt.Event) -> int:
        stored.append(str(event.request.AffectedSOPInstanceUID))
        time.sleep(0.3)                        # a slow workstation: the next one waits
        return 0

    ae = AE(ae_title=WORKSTATION)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(LOOPBACK, proxy.port, ae_title=ROUTE,
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", studies.studies[2].study_uid
    statuses = []
    for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet,
                                      msg_id=7):
        statuses.append(status)
        if int(status.Status) == PENDING and len(statuses) == 1:
            assoc.send_c_cancel(7, query_model=StudyRootQueryRetrieveInformationModelGet)
    assoc.release()
    final = statuses[-1]
    assert int(final.Status) == CANCEL
    assert 1 <= len(stored) < 6
    assert int(final.NumberOfCompletedSuboperations) == len(stored)
    assert int(final.NumberOfFailedSuboperations) == 0
    assert int(final.NumberOfRemainingSuboperations) == 6 - len(stored)
    op = proxy.wait_event("operation", lambda e: e.get("operation") == "C-GET")
    assert op["status"] == "0xFE00" and op["completed"] == len(stored)


def test_cancel_stops_the_archive_and_the_forwarding(
        pacs: OrthancArchive, studies: SyntheticSet, proxy_factory: ProxyFactory,
        store_scp_factory: StoreSCPFactory) -> None:
    dest = store_scp_factory("SLOW", extra_args=["--sleep-after", "1"])
    proxy = proxy_factory(rules(pacs, {"SLOW": dest.port}))
    result = move(proxy, "SLOW", studies.studies[0].study_uid, cancel_after=1)
    assert result.final_status == CANCEL, result.output[-3000:]
    assert result.completed is not None and 1 <= result.completed < 6
    assert result.remaining == 6 - result.completed - (result.failed or 0)
    op = proxy.wait_event("operation", lambda e: e.get("operation") == "C-MOVE")
    assert op["status"] == "0xFE00"
    assert len(dest.received_files()) == result.completed


# -- retrieve = "move": the archive C-MOVEs to the proxy --------------------------------------


def test_move_mode_archive_delivers_through_the_proxys_listener(
        move_pacs: OrthancArchive, studies: SyntheticSet, proxy_port: int,
        proxy_factory: ProxyFactory, store_scp_factory: StoreSCPFactory) -> None:
    """Three workstations at once, two of them moving the same study: nobody crosses."""
    wanted = {"WS1": 0, "WS2": 1, "WS3": 0}
    scps = {name: store_scp_factory(name) for name in wanted}
    proxy = proxy_factory({**rules(move_pacs, {n: scp.port for n, scp in scps.items()},
                                   retrieve="move"), "proxy": {"port": proxy_port}})
    results: dict[str, Any] = {}

    def run(dest: str) -> None:
        results[dest] = move(proxy, dest, studies.studies[wanted[dest]].study_uid)

    threads = [threading.Thread(target=run, args=(name,)) for name in wanted]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for dest, k in wanted.items():
        assert results[dest].final_status == SUCCESS, results[dest].output[-3000:]
        assert results[dest].completed == 6
        assert_identical(by_uid(scps[dest].received_datasets()), originals(studies, k))
    ups = [e for e in proxy.events("upstream") if e["operation"] == "C-MOVE"]
    assert len(ups) == 3 and all(e["status"] == "0x0000" for e in ups)
    inbound = [e for e in proxy.operations("C-STORE") if e.get("inbound")]
    assert len(inbound) == 18 and all(e["status"] == "0x0000" for e in inbound)
    # Each C-MOVE to the archive had its own Move Originator Message ID, carried back.
    assert len({e["move_message_id"] for e in inbound}) == 3
    spool = proxy.workdir / "spool"          # nothing left behind, received or in transit
    assert [p for p in spool.glob("**/*") if p.is_file() and "dead" not in p.parts] == []


def test_move_mode_archive_that_does_not_know_the_proxy_says_so(
        pacs: OrthancArchive, studies: SyntheticSet, proxy_factory: ProxyFactory,
        store_scp_factory: StoreSCPFactory) -> None:
    dest = store_scp_factory("WS1")
    proxy = proxy_factory(rules(pacs, {"WS1": dest.port}, retrieve="move"))
    result = move(proxy, "WS1", studies.studies[0].study_uid)
    assert result.final_status == 0xC000, result.output[-3000:]   # unable to process
    assert (result.completed, result.failed) == (0, 6)
    op = proxy.operations("C-MOVE")[-1]
    assert "QR_PROXY" in op["hint"] and "modalities" in op["hint"]
    assert dest.received_files() == []


def test_a_cancelled_move_mode_retrieve_cancels_the_archives_c_move(
        studies: SyntheticSet, proxy_port: int, proxy_factory: ProxyFactory,
        store_scp_factory: StoreSCPFactory) -> None:
    """The workstation's C-CANCEL reaches the archive as a C-CANCEL of the proxy's own
    C-MOVE (its Message ID); the archive's Cancel answer ends the retrieve."""
    datasets = [dcmread(p) for p in studies.studies[1].paths]
    archive = CancellableMoveArchive("MOVER", datasets, ("QR_PROXY", proxy_port))
    dest = store_scp_factory("WS1")
    try:
        proxy = proxy_factory({**rules(archive, {"WS1": dest.port}, retrieve="move"),
                               "proxy": {"port": proxy_port}})
        result = move(proxy, "WS1", studies.studies[1].study_uid, cancel_after=1)
        assert archive.cancelled.is_set(), result.output[-3000:]
        assert result.final_status == CANCEL, result.output[-3000:]
        assert result.completed == 1
        assert dest.received_sop_uids() == {str(datasets[0].SOPInstanceUID)}
        up = proxy.wait_event("upstream", lambda e: e.get("operation") == "C-MOVE")
        assert up["status"] == "0xFE00"
        inbound = [e for e in proxy.operations("C-STORE") if e.get("inbound")]
        assert [e["move_message_id"] for e in inbound] == archive.move_ids
        op = proxy.wait_event("operation", lambda e: e.get("operation") == "C-MOVE")
        assert op["status"] == "0xFE00"
    finally:
        archive.close()


# -- federation: the study is split over two archives -------------------------------------


@pytest.fixture(scope="module")
def split(pacs: OrthancArchive, move_pacs: OrthancArchive,
          tmp_path_factory: pytest.TempPathFactory) -> SyntheticSet:
    """One study: series 1 only in PACS, series 2 only in MOVEPACS."""
    data = build_synthetic_set(tmp_path_factory.mktemp("split"), 1, series_per_study=2,
                               instances_per_series=3, seed="split")
    by_series: dict[str, list[Path]] = {}
    for path in data.paths:
        by_series.setdefault(str(dcmread(path).SeriesInstanceUID), []).append(path)
    first, second = by_series.values()
    pacs.upload(first)
    move_pacs.upload(second)
    return data


def test_a_study_split_over_two_archives_is_pulled_from_each(
        pacs: OrthancArchive, move_pacs: OrthancArchive, split: SyntheticSet,
        proxy_factory: ProxyFactory, store_scp_factory: StoreSCPFactory) -> None:
    dest = store_scp_factory("WS1")
    proxy = proxy_factory({
        "archives": {"site_a": archive_entry(pacs), "site_b": archive_entry(move_pacs)},
        "destinations": {"ws1": {"ae_title": "WS1", "host": LOOPBACK, "port": dest.port}},
        "routes": [{"called_ae": "FED", "archives": ["site_a", "site_b"]}]})
    result = movescu(LOOPBACK, proxy.port, "FED", WORKSTATION, move_destination="WS1",
                     keys=[f"StudyInstanceUID={split.studies[0].study_uid}"])
    assert result.final_status == SUCCESS, result.output[-3000:]
    assert (result.completed, result.failed) == (6, 0)
    assert_identical(by_uid(dest.received_datasets()),
                     by_uid([dcmread(p) for p in split.paths]))
    gets = {e["archive"]: e["received"] for e in proxy.events("upstream")
            if e["operation"] == "C-GET"}
    assert gets == {"site_a": 3, "site_b": 3}
    assert proxy.operations("C-MOVE")[-1]["survey"] == "listed"


def test_a_destination_that_keeps_aborting_stops_the_pull(
        pacs: OrthancArchive, studies: SyntheticSet, proxy_factory: ProxyFactory,
        store_scp_factory: StoreSCPFactory) -> None:
    dest = store_scp_factory("WS1", extra_args=["--abort-after"])
    proxy = proxy_factory(rules(pacs, {"WS1": dest.port}))
    result = move(proxy, "WS1", studies.studies[1].study_uid)
    assert result.final_status == UNABLE_SUBOPS, result.output[-3000:]
    assert (result.completed, result.failed) == (0, 6)
    op = proxy.operations("C-MOVE")[-1]
    assert set(op["failed_sop_instance_uids"]) == set(studies.studies[1].sop_uids)
    store = [e for e in proxy.events("upstream") if e["operation"] == "C-STORE"][-1]
    assert store["associations"] == 2                 # re-opened once, then gave up


def test_a_stalled_destination_fills_the_memory_window_then_files_and_loses_nothing(
        pacs: OrthancArchive, studies: SyntheticSet, proxy_factory: ProxyFactory) -> None:
    """The archive delivers everything while the destination is stalled: the proxy keeps
    at most ``retrieve_memory_bytes`` in memory, the rest goes to files, all arrive."""
    window = 2 * max(p.stat().st_size for p in studies.studies[2].paths)
    gate = threading.Event()
    dest = RecordingSCP("SLOW", [CTImageStorage], gate=gate)
    try:
        proxy = proxy_factory({**rules(pacs, {"SLOW": dest.port}),
                               "spool": {"retrieve_memory_bytes": window}})
        outcome: dict[str, Any] = {}
        mover = threading.Thread(target=lambda: outcome.update(
            result=move(proxy, "SLOW", studies.studies[2].study_uid)))
        mover.start()
        proxy.wait_event("upstream", where=lambda e: e.get("operation") == "C-GET",
                         timeout=60)              # the archive has sent all six
        gate.set()
        mover.join(60)
        result = outcome["result"]
        assert result.final_status == SUCCESS, result.output[-3000:]
        assert (result.completed, result.failed) == (6, 0)
        assert_identical(dest.received, originals(studies, 2))
        op = proxy.operations("C-MOVE")[-1]
        assert 0 < op["buffer_peak_memory_bytes"] <= window
        assert op["buffer_spilled"] >= 6 - 2 - 1     # one in flight, two in memory at most
        assert list((proxy.workdir / "spool" / "retrieve").glob("**/*.dcm")) == []
    finally:
        gate.set()
        dest.close()
