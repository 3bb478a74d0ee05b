"""Who may do what (the Security issue), against real peers.

The archive is Orthanc with no modality entry (only the proxy's C-GET can pull from it);
the workstations are DCMTK ``echoscu``/``findscu``/``movescu``; the Move Destinations are
DCMTK ``storescp``. Everything runs on loopback, so source-network rules are proven with
127.0.0.1 against ``AE@127.0.0.0/8`` (admitted) and ``AE@10.0.0.0/8`` (refused).

Each refusal is checked as the user sees it (the DCMTK tool's result) and as the operator
sees it (the log line and the metric); and the same request by someone who may make it
is answered, so a refusal is never an accident of the set-up.

Misbehaving viewers holding associations open are pynetdicom associations (fault
injection); the viewers that must still be served are DCMTK.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pynetdicom import AE, Association
from pynetdicom.sop_class import Verification

from tests.e2e.conftest import StoreSCPFactory
from tests.e2e.data import SyntheticSet, build_synthetic_set
from tests.e2e.dcmtk import StoreSCP, echoscu, findscu, movescu
from tests.e2e.orthanc import OrthancArchive
from tests.e2e.ports import LOOPBACK
from tests.e2e.proxy_harness import ProxyProcess, archive_entry, to_toml

SUCCESS, DESTINATION_UNKNOWN = 0x0000, 0xA801
ROUTE = "GUARDED"                  # source networks and move destinations
LIMITED = "LIMITED"                # association limits
ProxyFactory = Callable[..., ProxyProcess]


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSet:
    return build_synthetic_set(tmp_path_factory.mktemp("access"), 1, series_per_study=1,
                               instances_per_series=2, seed="access")


@pytest.fixture(scope="module")
def pacs(studies: SyntheticSet) -> Iterator[OrthancArchive]:
    with OrthancArchive("PACS") as archive:
        archive.upload(studies.paths)
        yield archive


def rules(pacs: OrthancArchive, ws1_port: int, ws2_port: int) -> dict[str, object]:
    return {
        "archives": {"pacs": archive_entry(pacs)},
        "destinations": {"ws1": {"ae_title": "WS1", "host": LOOPBACK, "port": ws1_port},
                         "ws2": {"ae_title": "WS2", "host": LOOPBACK, "port": ws2_port}},
        "routes": [
            {"called_ae": ROUTE, "archives": ["pacs"], "destinations": ["ws1"],
             "allow": ["LOCAL_WS@127.0.0.0/8", "REMOTE_WS@10.0.0.0/8",
                       "TWO_NETS@10.0.0.0/8", "TWO_NETS@127.0.0.1", "ANY_WS"]},
            {"called_ae": LIMITED, "archives": ["pacs"], "destinations": [],
             "max_associations": 2, "max_associations_per_ae": 1},
        ],
    }


@pytest.fixture
def destinations(store_scp_factory: StoreSCPFactory) -> tuple[StoreSCP, StoreSCP]:
    return store_scp_factory("WS1"), store_scp_factory("WS2")


@pytest.fixture
def proxy(pacs: OrthancArchive, destinations: tuple[StoreSCP, StoreSCP],
          proxy_factory: ProxyFactory) -> ProxyProcess:
    ws1, ws2 = destinations
    return proxy_factory(rules(pacs, ws1.port, ws2.port))


def security_events(proxy: ProxyProcess, kind: str) -> float:
    return proxy.metric("dicom_proxy_security_events_total", kind=kind)


def rejected_line(proxy: ProxyProcess, calling: str) -> dict[str, object]:
    return proxy.wait_event("association_rejected", lambda e: e["calling_ae"] == calling)


# -- 1. a calling AE title bound to source networks ---------------------------------------------

@pytest.mark.parametrize("calling", ["LOCAL_WS", "TWO_NETS", "ANY_WS"])
def test_a_title_calling_from_its_network_gets_in(proxy: ProxyProcess, calling: str) -> None:
    assert echoscu(LOOPBACK, proxy.port, ROUTE, calling).ok
    found = findscu(LOOPBACK, proxy.port, ROUTE, calling, keys=["StudyInstanceUID"])
    assert found.ok and len(found.identifiers) == 1
    assert not proxy.events("association_rejected")


def test_a_title_calling_from_elsewhere_is_not_recognised(proxy: ProxyProcess,
                                                          pacs: OrthancArchive) -> None:
    before = len(pacs.calling_aets())
    assert security_events(proxy, "source_network") == 0     # the series exists at zero

    # The user: the association is refused, permanently, as an unknown calling AE title.
    result = findscu(LOOPBACK, proxy.port, ROUTE, "REMOTE_WS", keys=["StudyInstanceUID"])
    assert result.association_rejected, result.output[-2000:]
    assert result.rejection_reason == "Calling AE Title Not Recognized"
    assert "Rejected Permanent" in result.output and result.identifiers == []

    # The operator: where it came from, what it may call from, what to change.
    line = rejected_line(proxy, "REMOTE_WS")
    assert line["called_ae"] == ROUTE and str(line["peer"]).startswith("127.0.0.1:")
    assert line["reason"] == ("calling AE title 'REMOTE_WS' is not allowed from 127.0.0.1 on "
                              "route 'GUARDED' (only from 10.0.0.0/8)")
    assert line["hint"] == ("if 127.0.0.1 is one of its hosts, add 'REMOTE_WS@127.0.0.1/32' to "
                            "allow of the route 'GUARDED' in rules.toml; otherwise another host "
                            "is using the AE title 'REMOTE_WS'")
    assert line["security"] == "source_network" and line["severity"] == "warning"
    assert security_events(proxy, "source_network") == 1
    assert proxy.metric("dicom_proxy_associations_total", called_ae=ROUTE,
                        result="rejected") == 1
    assert len(pacs.calling_aets()) == before               # nothing went upstream


# -- 2. the Move Destinations a route's workstations may name ----------------------------------

def test_an_allowed_move_destination_gets_the_study(proxy: ProxyProcess,
                                                    studies: SyntheticSet,
                                                    destinations: tuple[StoreSCP, StoreSCP]
                                                    ) -> None:
    ws1, _ = destinations
    result = movescu(LOOPBACK, proxy.port, ROUTE, "LOCAL_WS", move_destination="WS1",
                     keys=[f"StudyInstanceUID={studies.studies[0].study_uid}"])
    assert result.final_status == SUCCESS, result.output[-2000:]
    assert result.completed == 2
    assert len(ws1.wait_for_files(2)) == 2
    assert not proxy.events("move_destination_refused")


@pytest.mark.parametrize(("asked", "allowed_hint"), [
    ("WS2", "add 'ws2' to destinations of the route 'GUARDED'"),          # configured
    ("EVIL", "add [destinations.<name>] with ae_title = 'EVIL'"),         # not even that
])
def test_any_other_move_destination_is_refused_and_nothing_is_pulled(
        proxy: ProxyProcess, studies: SyntheticSet, destinations: tuple[StoreSCP, StoreSCP],
        asked: str, allowed_hint: str) -> None:
    _, ws2 = destinations
    assert security_events(proxy, "move_destination") == 0

    # The user: 0xA801 Move Destination unknown, no sub-operation.
    result = movescu(LOOPBACK, proxy.port, ROUTE, "LOCAL_WS", move_destination=asked,
                     keys=[f"StudyInstanceUID={studies.studies[0].study_uid}"])
    assert result.final_status == DESTINATION_UNKNOWN, result.output[-2000:]
    assert not result.completed

    # The operator: one security line (who, from where, what for, on which route) ...
    line = proxy.wait_event("move_destination_refused")
    assert (line["calling_ae"], line["called_ae"], line["route"], line["destination"]) == (
        "LOCAL_WS", ROUTE, ROUTE, asked)
    assert str(line["peer"]).startswith("127.0.0.1:") and line["severity"] == "warning"
    assert line["reason"] == (f"route 'GUARDED' does not allow Move Destination {asked!r} "
                              "(allowed: WS1)")
    assert allowed_hint in str(line["hint"])
    # ... the operation line says 0xA801 and why, and the counter moved.
    op = proxy.operations("C-MOVE")[-1]
    assert (op["status"], op["destination"]) == ("0xA801", asked)
    assert security_events(proxy, "move_destination") == 1
    # Nothing was pulled from the archive, nothing reached the destination.
    assert not proxy.events("upstream")
    assert ws2.received_files() == []


# -- 3. association limits per route and per calling AE title -------------------------------

def hold(port: int, calling: str) -> Association:
    """A viewer that associates and keeps the association open (fault injection)."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae.associate(LOOPBACK, port, ae_title=LIMITED)


def test_one_viewer_over_its_share_is_refused_and_the_others_are_served(
        proxy: ProxyProcess) -> None:
    hog = hold(proxy.port, "HOG")
    try:
        assert hog.is_established
        # The same viewer again: transient local-limit rejection, naming the limit.
        again = echoscu(LOOPBACK, proxy.port, LIMITED, "HOG")
        assert again.association_rejected, again.output[-2000:]
        assert "Rejected Transient" in again.output
        assert again.rejection_reason == "Local Limit Exceeded"
        line = rejected_line(proxy, "HOG")
        assert line["reason"] == ("calling AE title 'HOG' holds 1 associations on route "
                                  "'LIMITED' (max_associations_per_ae = 1)")
        assert "raise max_associations_per_ae of the route 'LIMITED'" in str(line["hint"])
        assert "security" not in line
        # Another viewer is not starved.
        assert echoscu(LOOPBACK, proxy.port, LIMITED, "OTHER").ok

        # Two viewers hold the route's two slots: a third is refused by the route's limit.
        second = hold(proxy.port, "HOG2")
        try:
            assert second.is_established
            third = echoscu(LOOPBACK, proxy.port, LIMITED, "THIRD")
            assert third.association_rejected and third.rejection_reason == "Local Limit Exceeded"
            line = rejected_line(proxy, "THIRD")
            assert line["reason"] == ("association limit of route 'LIMITED' reached (2 active, "
                                      "max_associations = 2)")
            assert "raise max_associations of the route 'LIMITED'" in str(line["hint"])
            # Other routes are not limited by this one.
            assert echoscu(LOOPBACK, proxy.port, ROUTE, "ANY_WS").ok
        finally:
            second.release()
    finally:
        hog.release()
    proxy.wait_event("association_released", lambda e: e["calling_ae"] == "HOG")
    proxy.wait_event("association_released", lambda e: e["calling_ae"] == "HOG2")
    assert proxy.metric("dicom_proxy_associations_total", called_ae=LIMITED,
                        result="rejected") == 2
    assert security_events(proxy, "source_network") == 0     # a limit is no security event
    # The slot is free again once the viewer let go.
    assert echoscu(LOOPBACK, proxy.port, LIMITED, "HOG").ok


# -- a rules file error ---------------------------------------------------------------------

@pytest.mark.parametrize(("entry", "problem"), [
    ("WS1@10.1.2.300/24", "routes[0].allow[1]: invalid network '10.1.2.300/24'"),
    ("WS1@10.1.2.7/24", "routes[0].allow[1]: invalid network '10.1.2.7/24': host bits set "
                        "(did you mean 10.1.2.0/24?)"),
])
def test_check_names_a_bad_network_by_its_key_path(tmp_path: Path, entry: str,
                                                   problem: str) -> None:
    document = {"proxy": {"ae_title": "QR_PROXY", "host": LOOPBACK, "port": 0},
                "archives": {"pacs": {"ae_title": "PACS", "host": LOOPBACK, "port": 104}},
                "routes": [{"called_ae": ROUTE, "archives": ["pacs"],
                            "allow": ["ANY_WS", entry]}]}
    path = tmp_path / "rules.toml"
    path.write_text(to_toml(document))
    done = subprocess.run([sys.executable, "-m", "proxy.cli", "check", "--rules", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == "" and "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"dicom-proxy: {path}: {problem}"), line
