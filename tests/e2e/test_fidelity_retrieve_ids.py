"""Retrieve fidelity: the same C-MOVE / C-GET directly against Orthanc and through the proxy.

Every test sends one request twice — to the archive itself and to the proxy in front of
it — and asserts the two answers are equal: final status, Completed/Failed/Warning
counts, the set of SOP Instance UIDs that arrived and each instance's data set (issue #10,
defects 4 and 5). For ``retrieve = "move"`` the archive's own log proves the proxy asked
it exactly one C-MOVE per workstation C-MOVE (archives create one job per C-MOVE).

The archive knows two modalities: the proxy (QR_PROXY, for move mode) and the
workstation's storescp "WS" (for the direct run). The proxy's ``[destinations]`` name
another storescp under the same AE title "WS", so the two runs differ only in the address.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread

from tests.e2e.data import SyntheticSet, build_synthetic_set
from tests.e2e.dcmtk import RetrieveResult, StoreSCP, getscu, movescu
from tests.e2e.orthanc import OrthancArchive
from tests.e2e.ports import LOOPBACK, free_port
from tests.e2e.proxy_harness import ProxyProcess, archive_entry

ROUTE = "FIDELITY"
WORKSTATION = "VIEWER"
DEST = "WS"
_ORTHANC_MOVE = re.compile(r"Move-SCU request received for AET")
ProxyFactory = Callable[..., ProxyProcess]


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSet:
    """2 CT studies x 2 series x 2 instances."""
    return build_synthetic_set(tmp_path_factory.mktemp("fidelity-ids"), 2, series_per_study=2,
                               instances_per_series=2, seed="fidelity-ids")


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"proxy": free_port(), "direct": free_port(), "via_proxy": free_port()}


@pytest.fixture(scope="module")
def archive(studies: SyntheticSet, ports: dict[str, int]) -> Iterator[OrthancArchive]:
    with OrthancArchive("FIDPACS", known_modalities={
            "proxy": ("QR_PROXY", LOOPBACK, ports["proxy"]),
            "ws": (DEST, LOOPBACK, ports["direct"])}) as pacs:
        pacs.upload(studies.paths)
        yield pacs


def start_proxy(factory: ProxyFactory, archive: OrthancArchive, ports: dict[str, int],
                mode: str) -> ProxyProcess:
    return factory({
        "proxy": {"port": ports["proxy"]},
        "archives": {"pacs": archive_entry(archive, retrieve=mode)},
        "destinations": {"ws": {"ae_title": DEST, "host": LOOPBACK,
                                "port": ports["via_proxy"]}},
        "routes": [{"called_ae": ROUTE, "archives": ["pacs"]}],
    })


def upstream_moves(archive: OrthancArchive) -> int:
    return len(_ORTHANC_MOVE.findall(archive.log_text()))


def summary(result: RetrieveResult) -> tuple[Any, ...]:
    return (result.final_status, result.completed, result.failed, result.warning)


def contents(datasets: list[Dataset]) -> dict[str, Dataset]:
    """SOP Instance UID → data set (file meta dropped: storescp writes its own)."""
    out = {}
    for ds in datasets:
        body = Dataset()
        body.update(ds)
        out[str(ds.SOPInstanceUID)] = body
    return out


def compare_moves(archive: OrthancArchive, proxy: ProxyProcess, ports: dict[str, int],
                  tmp_path: Path, level: str | None, keys: list[str]) -> RetrieveResult:
    """The same movescu directly and through the proxy; asserts equal answers."""
    with StoreSCP(DEST, tmp_path / "direct", port=ports["direct"]) as direct_scp:
        direct = movescu(LOOPBACK, archive.dicom_port, archive.aet, WORKSTATION,
                         move_destination=DEST, level=level, keys=keys)
        direct_scp.wait_for_files(direct.completed or 0)      # an archive running jobs
        direct_got = contents(direct_scp.received_datasets())
    before, jobs = upstream_moves(archive), len(archive.rest("GET", "/jobs"))
    with StoreSCP(DEST, tmp_path / "proxied", port=ports["via_proxy"]) as proxied_scp:
        proxied = movescu(LOOPBACK, proxy.port, ROUTE, WORKSTATION, move_destination=DEST,
                          level=level, keys=keys)
        proxied_got = contents(proxied_scp.received_datasets())
    assert direct.final_status == 0x0000 and direct_got, direct.output[-2000:]
    assert summary(proxied) == summary(direct), proxied.output[-3000:]
    assert sorted(proxied_got) == sorted(direct_got)
    assert proxied_got == direct_got
    if proxy.rules["archives"]["pacs"]["retrieve"] == "move":
        assert upstream_moves(archive) - before == 1      # one archive job per C-MOVE
        if not archive.config()["SynchronousCMove"]:
            assert len(archive.rest("GET", "/jobs")) - jobs == 1
    return direct


def compare_gets(archive: OrthancArchive, proxy: ProxyProcess, level: str | None,
                 keys: list[str], direct_level: str | None = None) -> RetrieveResult:
    """The same getscu directly and through the proxy (``direct_level``: see below)."""
    direct = getscu(LOOPBACK, archive.dicom_port, archive.aet, WORKSTATION,
                    level=direct_level or level, keys=keys)
    before = upstream_moves(archive)
    proxied = getscu(LOOPBACK, proxy.port, ROUTE, WORKSTATION, level=level, keys=keys)
    assert direct.final_status == 0x0000 and direct.datasets, direct.output[-2000:]
    assert summary(proxied) == summary(direct), proxied.output[-3000:]
    assert contents(proxied.datasets) == contents(direct.datasets)
    if proxy.rules["archives"]["pacs"]["retrieve"] == "move":
        assert upstream_moves(archive) - before == 1
    return direct


def level_keys(studies: SyntheticSet, level: str) -> list[str]:
    """Study 0 / its first series / one of its instances, by their UIDs."""
    study = studies.studies[0]
    first = dcmread(sorted(study.paths)[0])
    keys = [f"StudyInstanceUID={study.study_uid}"]
    if level in ("SERIES", "IMAGE"):
        keys.append(f"SeriesInstanceUID={first.SeriesInstanceUID}")
    if level == "IMAGE":
        keys.append(f"SOPInstanceUID={first.SOPInstanceUID}")
    return keys


# -- defect 4: every level, each retrieve mode, one upstream C-MOVE ------------------------


@pytest.mark.parametrize("mode", ["get", "move"])
@pytest.mark.parametrize("level", ["STUDY", "SERIES", "IMAGE"])
def test_a_uid_move_at_each_level_equals_the_archives_own(
        archive: OrthancArchive, studies: SyntheticSet, ports: dict[str, int],
        proxy_factory: ProxyFactory, tmp_path: Path, level: str, mode: str) -> None:
    proxy = start_proxy(proxy_factory, archive, ports, mode)
    direct = compare_moves(archive, proxy, ports, tmp_path, level, level_keys(studies, level))
    assert direct.completed == {"STUDY": 4, "SERIES": 2, "IMAGE": 1}[level]


@pytest.fixture(scope="module")
def job_archive(studies: SyntheticSet, ports: dict[str, int]) -> Iterator[OrthancArchive]:
    """Orthanc running each C-MOVE as a job: it answers before its C-STOREs are sent."""
    with OrthancArchive("JOBPACS", known_modalities={
            "proxy": ("QR_PROXY", LOOPBACK, ports["proxy"]),
            "ws": (DEST, LOOPBACK, ports["direct"])},
            extra_config={"SynchronousCMove": False}) as pacs:
        pacs.upload(studies.paths)
        yield pacs


@pytest.mark.parametrize("level", ["STUDY", "SERIES", "IMAGE"])
def test_move_mode_takes_what_an_archive_running_jobs_sends_after_its_answer(
        job_archive: OrthancArchive, studies: SyntheticSet, ports: dict[str, int],
        proxy_factory: ProxyFactory, tmp_path: Path, level: str) -> None:
    """Defect 4: Completed = 1 from the archive, nothing matched, 0xA702 — no more."""
    proxy = start_proxy(proxy_factory, job_archive, ports, "move")
    compare_moves(job_archive, proxy, ports, tmp_path, level, level_keys(studies, level))
    inbound = [e for e in proxy.operations("C-STORE") if e.get("inbound")]
    assert inbound and all(e["status"] == "0x0000" for e in inbound)


# -- defect 5: an identifier without a level, selecting by Accession Number ----------------


@pytest.mark.parametrize("mode", ["get", "move"])
def test_a_move_by_accession_number_without_a_level_is_served_as_the_archive_does(
        archive: OrthancArchive, studies: SyntheticSet, ports: dict[str, int],
        proxy_factory: ProxyFactory, tmp_path: Path, mode: str) -> None:
    proxy = start_proxy(proxy_factory, archive, ports, mode)
    keys = [f"AccessionNumber={studies.studies[1].accession}", "StudyInstanceUID="]
    direct = compare_moves(archive, proxy, ports, tmp_path, None, keys)
    assert direct.completed == len(studies.studies[1].sop_uids)


@pytest.mark.parametrize("mode", ["get", "move"])
def test_a_get_by_accession_number_at_study_level_equals_the_archives_own(
        archive: OrthancArchive, studies: SyntheticSet, ports: dict[str, int],
        proxy_factory: ProxyFactory, mode: str) -> None:
    proxy = start_proxy(proxy_factory, archive, ports, mode)
    keys = [f"AccessionNumber={studies.studies[1].accession}"]
    direct = compare_gets(archive, proxy, "STUDY", keys)
    assert {str(ds.SOPInstanceUID) for ds in direct.datasets} == studies.studies[1].sop_uids


@pytest.mark.parametrize("mode", ["get", "move"])
def test_a_get_without_a_level_is_served_at_the_level_the_archive_infers_for_a_move(
        archive: OrthancArchive, studies: SyntheticSet, ports: dict[str, int],
        proxy_factory: ProxyFactory, mode: str) -> None:
    """Orthanc 1.10.1 infers a missing level for C-MOVE (above) but its C-GET SCP refuses
    it (0xC000, "C-GET request without the tag QueryRetrieveLevel"). The proxy runs one
    retrieve pipeline for both, so it serves the C-GET as the archive serves the C-MOVE:
    exactly what the archive's C-GET returns with the level given (STUDY)."""
    proxy = start_proxy(proxy_factory, archive, ports, mode)
    keys = [f"AccessionNumber={studies.studies[1].accession}", "StudyInstanceUID="]
    refused = getscu(LOOPBACK, archive.dicom_port, archive.aet, WORKSTATION, level=None,
                     keys=keys)
    assert refused.final_status == 0xC000           # what the archive itself does, today
    direct = compare_gets(archive, proxy, None, keys, direct_level="STUDY")
    assert {str(ds.SOPInstanceUID) for ds in direct.datasets} == studies.studies[1].sop_uids


@pytest.mark.parametrize("mode", ["get", "move"])
def test_a_study_move_by_accession_number_with_its_level_equals_the_archives_own(
        archive: OrthancArchive, studies: SyntheticSet, ports: dict[str, int],
        proxy_factory: ProxyFactory, tmp_path: Path, mode: str) -> None:
    """The level is given, the selection is by a key that is not the unique key."""
    proxy = start_proxy(proxy_factory, archive, ports, mode)
    keys = [f"AccessionNumber={studies.studies[0].accession}"]
    direct = compare_moves(archive, proxy, ports, tmp_path, "STUDY", keys)
    assert direct.completed == len(studies.studies[0].sop_uids)


def test_move_mode_retrieves_in_a_row_each_equal_the_archives_own(
        archive: OrthancArchive, studies: SyntheticSet, ports: dict[str, int],
        proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    """Orthanc keeps its association to the proxy open a while and reuses it."""
    proxy = start_proxy(proxy_factory, archive, ports, "move")
    for k, level in enumerate(["STUDY", "SERIES", "IMAGE", "SERIES", "STUDY"]):
        compare_moves(archive, proxy, ports, tmp_path / str(k), level,
                      level_keys(studies, level))


def test_an_identifier_that_selects_nothing_is_refused_and_says_why(
        archive: OrthancArchive, ports: dict[str, int], proxy_factory: ProxyFactory) -> None:
    """No level, no key with a value: the proxy will not retrieve the whole archive."""
    proxy = start_proxy(proxy_factory, archive, ports, "get")
    direct = movescu(LOOPBACK, archive.dicom_port, archive.aet, WORKSTATION,
                     move_destination=DEST, level=None, keys=["StudyInstanceUID="])
    proxied = movescu(LOOPBACK, proxy.port, ROUTE, WORKSTATION, move_destination=DEST,
                      level=None, keys=["StudyInstanceUID="])
    assert direct.final_status is not None and direct.final_status >= 0xA000   # a failure
    assert proxied.final_status == 0xA900, proxied.output[-2000:]
    assert "no level and no key with a value" in proxied.output
    op = proxy.operations("C-MOVE")[-1]
    assert "selects nothing" in op["hint"] and op["status"] == "0xA900"
    assert not proxy.events("upstream")                # nothing was asked of the archive
