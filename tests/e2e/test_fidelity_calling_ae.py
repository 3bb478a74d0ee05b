"""Route ``pass_calling_ae = true``: the archive sees the workstation's calling AE title.

One strict Orthanc (``only_known_calling_aets``) plays a PACS granting query/retrieve
per calling AE: it knows the workstation ``WS_KNOWN`` with every right, and the proxy
``QR_PROXY`` only as a C-ECHO peer and as a C-MOVE destination (no right to query or
retrieve). A second strict Orthanc takes C-STOREs from ``WS_KNOWN`` only.

Every request is made DIRECTLY (the workstation calling Orthanc) and THROUGH the
proxy, and the two answers are compared; Orthanc's own records (its log's "Association
Received from AET X", each instance's ``RemoteAET``) show whose title reached it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread

from proxy.tools.synthetic import make_studies, write_studies
from tests.e2e.data import SyntheticSet, build_synthetic_set
from tests.e2e.dcmtk import (
    SUCCESS,
    DcmtkResult,
    FindResult,
    RetrieveResult,
    StoreSCP,
    echoscu,
    findscu,
    getscu,
    movescu,
    storescu,
)
from tests.e2e.orthanc import OrthancArchive
from tests.e2e.ports import LOOPBACK, free_port
from tests.e2e.proxy_harness import ProxyProcess, archive_entry

KNOWN = "WS_KNOWN"                 # the archive grants this workstation everything
STRANGER = "WS_STRANGER"           # the archive does not know this one
PROXY = "QR_PROXY"                 # the proxy's own title: C-ECHO and move destination only
DEST = "WS_DEST"                   # a C-MOVE destination (one storescp per path)
UNABLE_TO_PROCESS = 0xC000
ProxyFactory = Callable[..., ProxyProcess]


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSet:
    """2 studies x 1 series x 2 instances."""
    return build_synthetic_set(tmp_path_factory.mktemp("calling-ae"), 2, series_per_study=1,
                               instances_per_series=2, seed="calling-ae")


@pytest.fixture(scope="module")
def proxy_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def direct_dest() -> Iterator[StoreSCP]:
    """The move destination Orthanc sends to when asked directly."""
    with StoreSCP(DEST) as scp:
        yield scp


@pytest.fixture(scope="module")
def pacs(studies: SyntheticSet, proxy_port: int,
         direct_dest: StoreSCP) -> Iterator[OrthancArchive]:
    modalities = {
        "ws": [KNOWN, LOOPBACK, free_port()],
        "dest": list(direct_dest.modality),
        "proxy": {"AET": PROXY, "Host": LOOPBACK, "Port": proxy_port, "AllowEcho": True,
                  "AllowFind": False, "AllowGet": False, "AllowMove": False,
                  "AllowStore": False},
    }
    archive = OrthancArchive("PACS_CA", only_known_calling_aets=True,
                             extra_config={"DicomModalities": modalities})
    with archive:
        archive.upload(studies.paths)
        yield archive


@pytest.fixture(scope="module")
def store_pacs() -> Iterator[OrthancArchive]:
    archive = OrthancArchive("STORE_CA", only_known_calling_aets=True,
                             known_modalities={"ws": (KNOWN, LOOPBACK, 1)})
    with archive:
        yield archive


@pytest.fixture(scope="module")
def proxy_dest() -> Iterator[StoreSCP]:
    """The same destination AE title, where the proxy delivers."""
    with StoreSCP(DEST) as scp:
        yield scp


@pytest.fixture(scope="module")
def proxy(pacs: OrthancArchive, store_pacs: OrthancArchive, proxy_dest: StoreSCP,
          proxy_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    rules = {
        "proxy": {"port": proxy_port, "network_timeout": 30},
        "health": {"enabled": True, "interval": 0.5, "timeout": 5},
        "spool": {"dir": str(tmp_path_factory.mktemp("calling-ae-spool")),
                  "retry_initial": 0.2, "retry_max": 1.0},
        "archives": {
            "site_get": archive_entry(pacs, timeout=10),
            "site_move": archive_entry(pacs, timeout=10, retrieve="move"),
            "site_store": archive_entry(store_pacs, timeout=10),
        },
        "destinations": {"dest": {"ae_title": DEST, "host": LOOPBACK,
                                  "port": proxy_dest.port}},
        "routes": [
            {"called_ae": "PASS", "archives": ["site_get"], "pass_calling_ae": True},
            {"called_ae": "PASS_MOVE", "archives": ["site_move"], "pass_calling_ae": True},
            {"called_ae": "KEEP", "archives": ["site_get"]},
            {"called_ae": "STORE", "archives": ["site_store"], "store_to": ["site_store"],
             "pass_calling_ae": True},
            {"called_ae": "STORE_RELAY", "archives": ["site_store"],
             "store_to": ["site_store"], "store": "relay", "pass_calling_ae": True},
        ],
    }
    running = ProxyProcess(rules, tmp_path_factory.mktemp("calling-ae-proxy")).start()
    yield running
    assert running.stop() == 0, running.stderr()[-2000:]


# -- helpers ----------------------------------------------------------------------------


def direct(pacs: OrthancArchive) -> tuple[str, int, str]:
    return LOOPBACK, pacs.dicom_port, pacs.aet


def through(proxy: ProxyProcess, route: str) -> tuple[str, int, str]:
    return LOOPBACK, proxy.port, route


def canonical(identifiers: list[Dataset]) -> list[str]:
    """Order-free, comparable form of a C-FIND answer (RetrieveAETitle is rewritten)."""
    return sorted(json.dumps({e.keyword or str(e.tag): str(e.value) for e in ds
                              if e.keyword != "RetrieveAETitle"}, sort_keys=True)
                  for ds in identifiers)


def titles_of(pacs: OrthancArchive, proxy: ProxyProcess,
              action: Callable[[], Any]) -> tuple[Any, list[str]]:
    """Run ``action`` through ``proxy``; the calling AE titles of the associations Orthanc
    received meanwhile, one per ``upstream`` request the proxy logged (the proxy's
    periodic health C-ECHOs, as ``QR_PROXY`` and never ``upstream``, left out)."""
    before, logged = len(pacs.calling_aets()), len(proxy.events("upstream"))
    result = action()

    def requests() -> int:
        return sum(e["archive"] in ("site_get", "site_move")
                   for e in proxy.events("upstream")[logged:])

    seen = [ae for ae in pacs.calling_aets()[before:] if ae != PROXY]
    wait_for(lambda: requests() >= len(seen) > 0, "the upstream lines")
    assert requests() == len(seen)
    return result, seen


def find(at: tuple[str, int, str], calling: str, study: str = "") -> FindResult:
    return findscu(*at, calling, keys=[f"StudyInstanceUID={study}", "PatientID",
                                       "StudyDate", "NumberOfStudyRelatedInstances"])


def get(at: tuple[str, int, str], calling: str, study: str) -> RetrieveResult:
    return getscu(*at, calling, keys=[f"StudyInstanceUID={study}"])


def move(at: tuple[str, int, str], calling: str, study: str) -> RetrieveResult:
    return movescu(*at, calling, move_destination=DEST, keys=[f"StudyInstanceUID={study}"])


def uids(datasets: list[Dataset]) -> list[str]:
    return sorted(str(ds.SOPInstanceUID) for ds in datasets)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout}s for {what}")
        time.sleep(0.1)


# -- the workstation's own title reaches the archive ---------------------------------------


def test_echo_passes_the_workstations_title(proxy: ProxyProcess, pacs: OrthancArchive) -> None:
    direct_echo = echoscu(*direct(pacs), KNOWN)
    proxied, seen = titles_of(pacs, proxy, lambda: echoscu(*through(proxy, "PASS"), KNOWN))
    assert direct_echo.final_status == proxied.final_status == SUCCESS, proxied.output
    assert seen == [KNOWN]


def test_find_answers_as_directly_and_the_archive_sees_the_workstation(
        proxy: ProxyProcess, pacs: OrthancArchive, studies: SyntheticSet) -> None:
    for study in ("", studies.study_uids[1]):
        expected = find(direct(pacs), KNOWN, study)
        got, seen = titles_of(pacs, proxy, lambda s=study: find(through(proxy, "PASS"), KNOWN, s))
        assert expected.ok and got.ok, got.output[-2000:]
        assert expected.identifiers and canonical(got.identifiers) == canonical(
            expected.identifiers)
        assert seen == [KNOWN]


def test_get_answers_as_directly_and_every_association_is_the_workstations(
        proxy: ProxyProcess, pacs: OrthancArchive, studies: SyntheticSet) -> None:
    study = studies.study_uids[0]
    expected = get(direct(pacs), KNOWN, study)
    got, seen = titles_of(pacs, proxy, lambda: get(through(proxy, "PASS"), KNOWN, study))
    assert expected.final_status == got.final_status == SUCCESS, got.output[-2000:]
    assert (got.completed, got.failed) == (expected.completed, expected.failed) == (2, 0)
    assert uids(got.datasets) == uids(expected.datasets) == sorted(studies.studies[0].sop_uids)
    assert seen == [KNOWN, KNOWN]                 # the survey C-FIND and the C-GET


@pytest.mark.parametrize("route", ["PASS", "PASS_MOVE"])
def test_move_answers_as_directly_and_the_archive_sees_the_workstation(
        route: str, proxy: ProxyProcess, pacs: OrthancArchive, studies: SyntheticSet,
        direct_dest: StoreSCP, proxy_dest: StoreSCP) -> None:
    study = studies.studies[1]
    expected = move(direct(pacs), KNOWN, study.study_uid)
    before = len(proxy_dest.associations())
    got, seen = titles_of(pacs, proxy, lambda: move(through(proxy, route), KNOWN, study.study_uid))
    assert expected.final_status == got.final_status == SUCCESS, got.output[-2000:]
    assert (got.completed, got.failed) == (expected.completed, expected.failed) == (2, 0)
    assert proxy_dest.received_sop_uids() == direct_dest.received_sop_uids() >= set(
        study.sop_uids)
    assert seen == [KNOWN, KNOWN]                 # the survey C-FIND and the C-GET/C-MOVE
    # The destination is stored to by the proxy, calling as itself (PS3.4 C.4.2.2: the
    # workstation is named in each C-STORE as Move Originator).
    assert set(proxy_dest.associations()[before:]) == {(PROXY, DEST)}
    if route == "PASS_MOVE":                      # Orthanc C-MOVEd to the proxy's own title
        up = [e for e in proxy.events("upstream") if e["operation"] == "C-MOVE"][-1]
        assert up["archive"] == "site_move" and up["status"] == "0x0000"


# -- without pass_calling_ae, and strangers ----------------------------------------------------


def test_without_pass_calling_ae_the_archive_judges_the_proxy(
        proxy: ProxyProcess, pacs: OrthancArchive, studies: SyntheticSet) -> None:
    # What the archive does with the proxy's own title: it may not query (A-ABORT).
    as_proxy = find(direct(pacs), PROXY)
    assert as_proxy.association_aborted and as_proxy.identifiers == []
    before = len(proxy.events("upstream"))
    refused = find(through(proxy, "KEEP"), KNOWN)
    assert refused.final_status == UNABLE_TO_PROCESS and refused.identifiers == []
    retrieved = get(through(proxy, "KEEP"), KNOWN, studies.study_uids[0])
    assert retrieved.final_status == UNABLE_TO_PROCESS and retrieved.datasets == []
    ups = [e for e in proxy.events("upstream")[before:] if e.get("called_ae") == "KEEP"]
    assert {e["operation"] for e in ups} == {"C-FIND", "C-GET"}
    assert all("the archive aborted" in e["error"] for e in ups)


@pytest.mark.parametrize("action", ["echo", "find", "get"])
def test_a_workstation_the_archive_does_not_know_is_refused_as_directly(
        action: str, proxy: ProxyProcess, pacs: OrthancArchive,
        studies: SyntheticSet) -> None:
    run: dict[str, Callable[[tuple[str, int, str]], DcmtkResult]] = {
        "echo": lambda at: echoscu(*at, STRANGER),
        "find": lambda at: find(at, STRANGER),
        "get": lambda at: get(at, STRANGER, studies.study_uids[0]),
    }
    def strangers_upstream() -> list[dict[str, Any]]:
        return [e for e in proxy.events("upstream") if e.get("calling_ae") == STRANGER]

    refused = run[action](direct(pacs))
    assert refused.association_rejected
    assert "Calling AE Title Not Recognized" in refused.output
    rejected_before = pacs.rejected_calling_aets().count(STRANGER)
    ups_before = len(strangers_upstream())
    operations = len(proxy.operations())
    proxied = run[action](through(proxy, "PASS"))
    proxy.wait_event("operation", lambda e: e.get("calling_ae") == STRANGER
                     and proxy.operations().index(e) >= operations)
    # Every association the proxy opened for the stranger was refused by the archive as
    # the direct one was; the workstation gets a failure status (the proxy had accepted
    # its association), never data, never Success, and the log says what to change.
    ups = strangers_upstream()[ups_before:]
    assert ups and pacs.rejected_calling_aets().count(STRANGER) == rejected_before + len(ups)
    assert proxied.final_status != SUCCESS and not proxied.association_rejected
    if action == "echo":
        assert "Received Echo Response (Unknown Status: 0x110)" in proxied.output  # PS3.7 C.4.2
    else:
        assert proxied.final_status is not None and proxied.final_status >= 0xA000
    if isinstance(proxied, FindResult):
        assert proxied.identifiers == []
    if isinstance(proxied, RetrieveResult):
        assert proxied.datasets == []
    for up in ups:
        assert f"rejected calling AE {STRANGER}" in up["error"]
        assert up["hint"].startswith("the route passes the workstation's calling AE title")


# -- the proxy's own associations keep its title -------------------------------------------------


def test_health_checks_call_as_the_proxy(proxy: ProxyProcess, pacs: OrthancArchive,
                                        store_pacs: OrthancArchive) -> None:
    # PACS_CA knows QR_PROXY for C-ECHO: up. STORE_CA knows only the workstation: the
    # proxy's own health C-ECHO is refused there, though the route passing the
    # workstation's title stores fine (test below).
    proxy.wait_event("archive_up", lambda e: e.get("archive") == "site_get")
    down = proxy.wait_event("archive_down", lambda e: e.get("archive") == "site_store")
    assert f"rejected calling AE {PROXY}" in down["reason"]
    assert PROXY in store_pacs.rejected_calling_aets()
    assert PROXY in pacs.calling_aets() and PROXY not in pacs.rejected_calling_aets()


# -- store and forward: the instance's RemoteAET is the sender's --------------------------------


def test_forwarded_instances_are_stored_as_from_the_workstation(
        proxy: ProxyProcess, store_pacs: OrthancArchive, tmp_path: Path) -> None:
    paths = write_studies(tmp_path / "known", make_studies(1, instances_per_series=2,
                                                           seed="calling-ae-store"))
    strangers = write_studies(tmp_path / "stranger", make_studies(
        1, instances_per_series=1, seed="calling-ae-stranger"))
    direct_store = storescu(*direct(store_pacs), KNOWN, paths)
    assert direct_store.statuses == [SUCCESS] * 2, direct_store.output[-2000:]
    expected = store_pacs.remote_aets()
    assert set(expected.values()) == {KNOWN}
    store_pacs.delete_all()

    # A stranger's instance first: refused by the archive for good, it must not hold up
    # the known workstation's instances queued behind it.
    assert storescu(*through(proxy, "STORE"), STRANGER, strangers).statuses == [SUCCESS]
    sent = storescu(*through(proxy, "STORE"), KNOWN, paths)
    assert sent.statuses == [SUCCESS] * 2, sent.output[-2000:]
    wait_for(lambda: len(store_pacs.remote_aets()) == 2, "two forwarded instances")
    assert store_pacs.remote_aets() == expected
    dead = proxy.wait_event("forward_dead_lettered")
    assert dead["sop_instance_uid"] == str(dcmread(strangers[0]).SOPInstanceUID)
    assert f"rejected calling AE {STRANGER}" in dead["reason"]
    assert dead["hint"].startswith("the route passes the workstation's calling AE title")
    assert STRANGER in store_pacs.rejected_calling_aets()
    # The spool file says who sent it to which route (PS3.10 7.1), so a restart forwards
    # it as the same sender; the dead letter's note names them too.
    meta = dcmread(dead["path"], stop_before_pixels=True).file_meta
    assert (meta.SendingApplicationEntityTitle, meta.ReceivingApplicationEntityTitle) == (
        STRANGER, "STORE")
    note = json.loads(Path(dead["path"]).with_suffix(".json").read_text())
    assert (note["sending_ae"], note["receiving_ae"]) == (STRANGER, "STORE")


def test_a_relay_route_stores_as_the_workstation_and_refuses_a_stranger_as_directly(
        proxy: ProxyProcess, store_pacs: OrthancArchive, tmp_path: Path) -> None:
    """store = "relay" with pass_calling_ae: the archive association mirrored at
    negotiation is the workstation's own, so the archive's answer is the direct one."""
    paths = write_studies(tmp_path / "relay", make_studies(1, instances_per_series=1,
                                                           seed="calling-ae-relay"))
    store_pacs.delete_all()
    direct_store = storescu(*direct(store_pacs), KNOWN, paths)
    assert direct_store.statuses == [SUCCESS], direct_store.output[-2000:]
    expected = store_pacs.remote_aets()
    store_pacs.delete_all()
    sent = storescu(*through(proxy, "STORE_RELAY"), KNOWN, paths)
    assert sent.statuses == [SUCCESS], sent.output[-2000:]
    assert store_pacs.remote_aets() == expected            # no waiting: relayed, answered
    direct_stranger = storescu(*direct(store_pacs), STRANGER, paths)
    relayed_stranger = storescu(*through(proxy, "STORE_RELAY"), STRANGER, paths)
    assert direct_stranger.statuses == relayed_stranger.statuses == []
    assert "Association Rejected" in direct_stranger.output
    assert "Association Rejected" in relayed_stranger.output, relayed_stranger.output[-2000:]


def test_a_restart_forwards_spooled_instances_as_their_sender(
        store_pacs: OrthancArchive, proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    [path] = write_studies(tmp_path / "queued", make_studies(1, instances_per_series=1,
                                                             seed="calling-ae-restart"))
    uid = str(dcmread(path).SOPInstanceUID)
    rules = {"spool": {"dir": str(tmp_path / "spool"), "retry_initial": 0.2, "retry_max": 1.0},
             "archives": {"site_store": archive_entry(store_pacs, timeout=5)},
             "routes": [{"called_ae": "STORE", "archives": ["site_store"],
                         "store_to": ["site_store"], "pass_calling_ae": True}]}
    store_pacs.stop()                          # the instance waits in the spool
    try:
        first = proxy_factory(rules)
        assert storescu(*through(first, "STORE"), KNOWN, [path]).statuses == [SUCCESS]
        assert first.stop() == 0
    finally:
        store_pacs.start()
    proxy_factory(rules)                       # a new process: only the spool file remains
    wait_for(lambda: uid in store_pacs.remote_aets(), "the spooled instance")
    assert store_pacs.remote_aets()[uid] == KNOWN
