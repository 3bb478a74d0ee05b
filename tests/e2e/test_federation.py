"""Federated C-FIND end to end: real Orthanc archives, DCMTK findscu as the workstation.

What the workstation gets through one AE title must be exactly the union of what the
archives hold — no duplicates — past an archive's silent cap (700 studies behind
LimitFindResults = 500), with archives down, slow, timing out, and cancelled.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread

from proxy.app import Proxy
from proxy.config import parse
from proxy.tools.synthetic import make_studies
from tests.e2e.conftest import OrthancFactory
from tests.e2e.dcmtk import SUCCESS, FindResult, findscu, tool
from tests.e2e.fault_peers import ScriptedArchive
from tests.e2e.orthanc import OrthancArchive
from tests.e2e.ports import LOOPBACK, POLL_INTERVAL
from tests.e2e.proxy_harness import ProxyProcess, archive_entry

ProxyFactory = Callable[..., ProxyProcess]
WS = "WORKSTATION"
CANCEL, OUT_OF_RESOURCES = 0xFE00, 0xA700          # PS3.4 C.4.1.1.4
PENDING = 0xFF00
STUDY_KEYS = ["StudyInstanceUID", "RetrieveAETitle", "NumberOfStudyRelatedInstances"]


def _small(seed: str, ks: range, series: int = 1) -> list[Dataset]:
    """Studies ``ks`` of ``seed`` (same seed and k → same StudyInstanceUID in any archive)."""
    wanted = set(ks)
    return [ds for k, ds in enumerate(make_studies(max(ks) + 1, series_per_study=series,
                                                   seed=seed, rows=8, cols=8))
            if k // series in wanted]


@pytest.fixture(scope="module")
def capped() -> Iterator[OrthancArchive]:
    """One Orthanc holding 700 one-instance studies, capping every C-FIND at 500."""
    archive = OrthancArchive("CAPPED", limit_find_results=500)
    try:
        archive.start()
        archive.upload(make_studies(700, seed="capped", rows=8, cols=8))
        yield archive
    finally:
        archive.close()


@pytest.fixture
def pair(orthanc_factory: OrthancFactory) -> tuple[OrthancArchive, OrthancArchive]:
    """site_a holds studies 0-5, site_b studies 3-8 (3, 4, 5 in both; site_b's with 2 series)."""
    a, b = orthanc_factory("SITE_A"), orthanc_factory("SITE_B")
    a.upload(_small("fed", range(0, 6)))
    b.upload(_small("fed", range(3, 9), series=2))
    return a, b


def _rules(archives: dict[str, Any], *routes: dict[str, Any]) -> dict[str, Any]:
    return {"archives": archives, "routes": list(routes)}


def _find(proxy: ProxyProcess, called: str, *keys: str, level: str = "STUDY",
          **options: Any) -> FindResult:
    return findscu(LOOPBACK, proxy.port, called, WS, level=level, keys=list(keys), **options)


def _uids(result: FindResult, keyword: str = "StudyInstanceUID") -> list[str]:
    return result.values(keyword)


def test_federated_find_is_the_union_without_duplicates(
        pair: tuple[OrthancArchive, OrthancArchive], proxy_factory: ProxyFactory) -> None:
    a, b = pair
    proxy = proxy_factory(_rules({"site_a": archive_entry(a), "site_b": archive_entry(b)},
                                 {"called_ae": "FEDERATION", "archives": ["site_a", "site_b"]}))
    result = _find(proxy, "FEDERATION", *STUDY_KEYS)
    assert result.final_status == SUCCESS, result.output[-2000:]
    found = _uids(result)
    assert len(found) == len(set(found)) == 9
    assert set(found) == a.study_uids() | b.study_uids()
    assert set(result.values("RetrieveAETitle")) == {"FEDERATION"}
    [op] = proxy.operations("C-FIND")
    assert op["matches"] == 9 and op["duplicates"] == 3
    assert op["archives"] == ["site_a", "site_b"] and op["status"] == "0x0000"
    assert {e["archive"] for e in proxy.events("upstream")} == {"site_a", "site_b"}


def test_complete_merge_fills_and_takes_the_larger_count(
        pair: tuple[OrthancArchive, OrthancArchive], proxy_factory: ProxyFactory) -> None:
    a, b = pair
    proxy = proxy_factory(_rules({"site_a": archive_entry(a), "site_b": archive_entry(b)},
                                 {"called_ae": "MERGED", "archives": ["site_a", "site_b"],
                                  "merge": "complete"}))
    result = _find(proxy, "MERGED", *STUDY_KEYS)
    assert result.final_status == SUCCESS
    counts = dict(zip(_uids(result), result.values("NumberOfStudyRelatedInstances"),
                      strict=True))
    assert len(counts) == len(result.identifiers) == 9
    shared = a.study_uids() & b.study_uids()
    assert len(shared) == 3
    assert {counts[uid] for uid in shared} == {"2"}        # site_a says 1, site_b says 2
    assert {counts[uid] for uid in a.study_uids() - shared} == {"1"}
    assert proxy.operations("C-FIND")[0]["duplicates"] == 3


def test_capped_archive_is_recovered_through_federation_and_relay(
        capped: OrthancArchive, orthanc_factory: OrthancFactory,
        proxy_factory: ProxyFactory) -> None:
    direct = findscu(capped.host, capped.dicom_port, capped.aet, WS, keys=["StudyInstanceUID"])
    assert len(direct.identifiers) == 500 and direct.final_status == CANCEL   # Orthanc's cap
    a = orthanc_factory("SITE_A")
    a.upload(_small("fed", range(0, 6)))
    proxy = proxy_factory(_rules(
        {"site_a": archive_entry(a), "capped": archive_entry(capped, max_results=500),
         "unknown_cap": archive_entry(capped)},           # same Orthanc, cap not configured
        {"called_ae": "FEDERATION", "archives": ["site_a", "capped"]},
        {"called_ae": "RELAY", "archives": ["unknown_cap"]}))
    started = time.monotonic()
    result = _find(proxy, "FEDERATION", "StudyInstanceUID", "StudyDate")
    elapsed = time.monotonic() - started
    assert result.final_status == SUCCESS, result.output[-2000:]
    found = _uids(result)
    assert len(found) == len(set(found)) == 706
    assert set(found) == capped.study_uids() | a.study_uids()
    assert all(ds.StudyDate for ds in result.identifiers)
    assert proxy.metric("dicom_proxy_find_truncated_total", archive="capped") >= 1
    warning = proxy.wait_event("find_truncated")
    assert warning["archive"] == "capped" and warning["level"] == "warning"
    recovered = proxy.wait_event("find_recovered")
    assert recovered["archive"] == "capped" and recovered["subqueries"] >= 2
    assert elapsed < 30

    relayed = _find(proxy, "RELAY", "StudyInstanceUID")          # no StudyDate asked back
    assert relayed.final_status == SUCCESS
    assert sorted(_uids(relayed)) == sorted(capped.study_uids())
    assert all("StudyDate" not in ds for ds in relayed.identifiers)
    assert proxy.metric("dicom_proxy_find_truncated_total", archive="unknown_cap") >= 1


def test_capped_series_are_recovered_by_drilling_down(
        capped: OrthancArchive, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(_rules({"capped": archive_entry(capped, max_results=500)},
                                 {"called_ae": "RELAY", "archives": ["capped"]}))
    result = _find(proxy, "RELAY", "SeriesInstanceUID", "Modality=CT", level="SERIES")
    assert result.final_status == SUCCESS, result.output[-2000:]
    assert sorted(_uids(result, "SeriesInstanceUID")) == sorted(capped.series_uids())
    assert all("StudyInstanceUID" not in ds for ds in result.identifiers)


def test_an_archive_stopped_mid_suite_leaves_the_others_answering(
        pair: tuple[OrthancArchive, OrthancArchive], proxy_factory: ProxyFactory) -> None:
    a, b = pair
    proxy = proxy_factory(_rules({"site_a": archive_entry(a), "site_b": archive_entry(b)},
                                 {"called_ae": "FEDERATION", "archives": ["site_a", "site_b"]}))
    assert len(_uids(_find(proxy, "FEDERATION", "StudyInstanceUID"))) == 9
    b.stop()
    result = _find(proxy, "FEDERATION", "StudyInstanceUID")
    assert sorted(_uids(result)) == sorted(a.study_uids())
    assert result.final_status == OUT_OF_RESOURCES
    assert "site_b" in result.output and "incomplete" in result.output   # the ErrorComment
    failed = proxy.wait_event("upstream", where=lambda e: e["archive"] == "site_b"
                              and e.get("error") is not None)
    assert "refused" in failed["error"] and failed["level"] == "warning"
    op = proxy.operations("C-FIND")[-1]
    assert op["archives_failed"] == ["site_b"] and op["status"] == "0xA700"
    assert proxy.metric("dicom_proxy_upstream_requests_total", archive="site_b",
                        operation="C-FIND", status="failure") == 1
    b.start()
    assert len(_uids(_find(proxy, "FEDERATION", "StudyInstanceUID"))) == 9


def _hold_then_answer(matches: list[Dataset]) -> Callable[[ScriptedArchive, Any],
                                                          Iterator[tuple[int, Dataset | None]]]:
    """Nothing until the test opens ``gate``, then every match."""
    def script(archive: ScriptedArchive, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        if not archive.wait(60):
            return
        for ds in matches:
            yield PENDING, ds
    return script


def _study(uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = uid
    ds.RetrieveAETitle = "SCRIPTED"
    return ds


def _rsp_files(directory: Path) -> int:
    return len(list(directory.glob("rsp*.dcm")))


def test_first_matches_do_not_wait_for_a_slow_archive_and_a_timeout_is_named(
        pair: tuple[OrthancArchive, OrthancArchive], proxy_factory: ProxyFactory) -> None:
    a, _ = pair
    slow = ScriptedArchive(_hold_then_answer([_study(f"1.2.3.{k}") for k in range(3)]), "SLOW")
    stuck = ScriptedArchive(_hold_then_answer([_study("1.2.3.99")]), "STUCK")
    try:
        proxy = proxy_factory(_rules(
            {"site_a": archive_entry(a), "slow": archive_entry(slow, timeout=30),
             "stuck": archive_entry(stuck, timeout=4)},
            {"called_ae": "FEDERATION", "archives": ["site_a", "slow", "stuck"]}))
        with tempfile.TemporaryDirectory() as out:
            argv = [tool("findscu"), "-d", "-S", "-aet", WS, "-aec", "FEDERATION", "-to", "10",
                    "-ta", "10", "-td", "60", "-k", "QueryRetrieveLevel=STUDY",
                    "-k", "StudyInstanceUID", "-X", "-od", out, LOOPBACK, str(proxy.port)]
            with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) as proc:
                deadline = time.monotonic() + 20
                while _rsp_files(Path(out)) < 6 and time.monotonic() < deadline:
                    time.sleep(POLL_INTERVAL)
                assert _rsp_files(Path(out)) == 6, "site_a's matches waited for SLOW"
                assert proc.poll() is None and not slow.first_sent.is_set()
                # ...nor for STUCK, whose answer (a timeout after 4 s) is still to come.
                assert not [e for e in proxy.events("upstream") if e["archive"] == "stuck"]
                proxy.wait_event("upstream", where=lambda e: e["archive"] == "stuck")
                slow.gate.set()                          # STUCK stays silent: it timed out
                output, _ = proc.communicate(timeout=30)
            result = FindResult(argv, proc.returncode, output, "")
            result.read_log("C-FIND RSP")
            found = [str(dcmread(p).StudyInstanceUID) for p in sorted(Path(out).glob("rsp*"))]
        assert set(found) == a.study_uids() | {f"1.2.3.{k}" for k in range(3)}
        assert result.final_status == OUT_OF_RESOURCES and "stuck" in output
        [timed_out] = [e for e in proxy.events("upstream") if e["archive"] == "stuck"]
        assert "4s" in timed_out["error"]
        assert proxy.operations("C-FIND")[0]["archives_failed"] == ["stuck"]
    finally:
        slow.close()
        stuck.close()


def _capped_then_trickling(cap: int) -> Callable[[ScriptedArchive, Any],
                                                 Iterator[tuple[int, Dataset | None]]]:
    """First query: ``cap`` matches and Success (a silent cap). Any later query: one new
    match, then nothing until the C-CANCEL arrives (recorded in ``archive.cancelled``)."""
    def script(archive: ScriptedArchive, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        n = len(archive.identifiers)
        if n == 1:
            for k in range(cap):
                yield PENDING, _study(f"1.2.9.{k}")
            return
        yield PENDING, _study(f"1.2.9.{1000 + n}")
        while not archive.closing.wait(0.01):
            if event.is_cancelled:
                archive.cancelled.set()
                yield CANCEL, None
                return
    return script


def _one_then_wait_for_cancel(me: ScriptedArchive, event: Any) -> Iterator[tuple[int, Any]]:
    yield PENDING, _study("1.2.8.1")
    while not me.closing.wait(0.01):
        if event.is_cancelled:
            me.cancelled.set()
            yield CANCEL, None
            return


def test_cancel_reaches_every_archive_including_a_subquery_in_flight(
        proxy_factory: ProxyFactory) -> None:
    splitting = ScriptedArchive(_capped_then_trickling(3), "SPLITTING")
    waiting = ScriptedArchive(_one_then_wait_for_cancel, "WAITING")
    try:
        proxy = proxy_factory(_rules(
            {"splitting": archive_entry(splitting, max_results=3),
             "waiting": archive_entry(waiting)},
            {"called_ae": "FEDERATION", "archives": ["splitting", "waiting"]}))
        # 3 capped + 1 from waiting + 1 from the first sub-query = 5, then C-CANCEL.
        result = _find(proxy, "FEDERATION", "StudyInstanceUID", "StudyDate", cancel_after=5)
        assert result.final_status == CANCEL
        assert splitting.cancelled.wait(10) and waiting.cancelled.wait(10)
        assert len(splitting.identifiers) == 2       # no sub-query started after the cancel
        op = proxy.wait_event("operation")
        assert op["status"] == "0xFE00"
    finally:
        splitting.close()
        waiting.close()


def test_recheck_drops_what_an_archive_matched_loosely(
        pair: tuple[OrthancArchive, OrthancArchive], proxy_factory: ProxyFactory) -> None:
    a, b = pair
    archives = {"site_a": archive_entry(a), "site_b": archive_entry(b)}
    proxy = proxy_factory(_rules(
        archives,
        {"called_ae": "LOOSE", "archives": ["site_a", "site_b"]},
        {"called_ae": "STRICT", "archives": ["site_a", "site_b"], "recheck_matches": True}))
    # Orthanc matches PN case-insensitively; PS3.4 C.2.2.2.1 single value matching does not.
    loose = _find(proxy, "LOOSE", "StudyInstanceUID", "PatientName=doe^jane4")
    assert len(loose.identifiers) == 1 and loose.final_status == SUCCESS
    strict = _find(proxy, "STRICT", "StudyInstanceUID", "PatientName=doe^jane4")
    assert strict.identifiers == [] and strict.final_status == SUCCESS
    exact = _find(proxy, "STRICT", "StudyInstanceUID", "PatientName=DOE^JANE4")
    assert len(exact.identifiers) == 1
    ops = proxy.operations("C-FIND")
    assert [op.get("recheck_dropped") for op in ops] == [None, 2, 0]


def test_locations_are_remembered_and_located(
        pair: tuple[OrthancArchive, OrthancArchive]) -> None:
    a, b = pair
    config = parse({
        "proxy": {"ae_title": "QR_PROXY", "host": LOOPBACK, "port": 0},
        "metrics": {"enabled": False}, "health": {"enabled": False},
        "archives": {"site_a": archive_entry(a), "site_b": archive_entry(b)},
        "routes": [{"called_ae": "FEDERATION", "archives": ["site_a", "site_b"]}]})
    with open(os.devnull, "w") as sink:
        _locate_through(Proxy(config, stream=sink), a, b)


def _locate_through(proxy: Proxy, a: OrthancArchive, b: OrthancArchive) -> None:
    host, port = proxy.start()
    try:
        shared = sorted(a.study_uids() & b.study_uids())
        cache = proxy.services.plugins.locations
        assert cache.lookup("STUDY", shared[0]) == ()
        result = findscu(host, port, "FEDERATION", WS, keys=["StudyInstanceUID"])
        assert result.final_status == SUCCESS
        assert set(cache.lookup("STUDY", shared[0])) == {"site_a", "site_b"}
        only_b = sorted(b.study_uids() - a.study_uids())[0]
        assert cache.lookup("STUDY", only_b) == ("site_b",)
        locate = proxy.services.plugins.locate
        series = sorted(b.series_uids() - a.series_uids())[0]
        where = locate("SERIES", [series, "1.2.3.4"], ["site_a", "site_b"])
        assert where.asked and where.of(series) == ("site_b",) and where.of("1.2.3.4") == ()
        assert cache.lookup("SERIES", series) == ("site_b",)
    finally:
        proxy.stop(grace=5)
