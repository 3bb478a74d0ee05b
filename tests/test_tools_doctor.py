"""The doctor's decisions (pure): findings from what a peer negotiated and answered."""

from __future__ import annotations

from typing import Any

import pytest
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind as FIND,
)
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelGet as GET,
)
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelMove as MOVE,
)
from pynetdicom.sop_class import (
    Verification as ECHO,
)

from proxy.config import Config, parse
from proxy.tools.doctor import (
    FAIL,
    OK,
    WARN,
    Finding,
    QueryOutcome,
    archive_findings,
    config_findings,
    exit_status,
    render,
    route_findings,
)
from proxy.upstream import Peer

SUCCESS, CANCEL, UNABLE = 0x0000, 0xFE00, 0xC000
ALL = {ECHO, FIND, GET, MOVE}
ONE_MATCH = QueryOutcome(1, SUCCESS, False)


def rules(**overrides: Any) -> Config:
    data: dict[str, Any] = {
        "proxy": {"ae_title": "QR_PROXY", "host": "127.0.0.1", "port": 11112},
        "archives": {
            "a": {"ae_title": "PACS_A", "host": "10.0.0.5", "port": 104, "max_results": 3},
            "b": {"ae_title": "PACS_B", "host": "10.0.0.6", "port": 104, "retrieve": "move"}},
        "routes": [{"called_ae": "ONLY_A", "archives": ["a"], "destinations": []},
                   {"called_ae": "FED", "archives": ["a", "b"], "destinations": []}]}
    data.update(overrides)
    return parse(data)


def findings_for(name: str, accepted: set[str], echo: int | None = SUCCESS,
                 query: QueryOutcome | None = ONE_MATCH) -> list[Finding]:
    cfg = rules().archives[name]
    return archive_findings(cfg, Peer.of(cfg, "QR_PROXY"), accepted, echo, query)


def test_a_healthy_archive_is_one_ok_line() -> None:
    [finding] = findings_for("a", ALL)
    assert finding == Finding(OK, "archive a", "PACS_A at 10.0.0.5:104 answers C-ECHO, C-FIND "
                                               "(STUDY) and accepts C-GET from QR_PROXY")


def test_c_get_not_negotiated_suggests_move() -> None:
    [finding] = findings_for("a", ALL - {GET})
    assert finding.severity == FAIL
    assert "did not accept C-GET (Study Root GET not negotiated) (it accepts C-MOVE)" in \
        finding.message
    assert finding.fix is not None and finding.fix.startswith('set retrieve = "move" for '
                                                              "archives.a")


def test_c_move_not_negotiated_suggests_get_when_it_can() -> None:
    [finding] = findings_for("b", ALL - {MOVE})
    assert finding.severity == FAIL and finding.fix == 'set retrieve = "get" for archives.b'
    [neither] = findings_for("b", {ECHO, FIND})
    assert neither.fix == "allow Study Root MOVE for the proxy on PACS_B"


def test_no_find_context_is_broken_and_names_the_calling_ae() -> None:
    found = findings_for("a", {ECHO, GET}, query=None)
    assert [f.severity for f in found] == [FAIL]
    assert "did not accept Study Root C-FIND from QR_PROXY" in found[0].message


def test_echo_refused_is_a_warning_about_health_checks() -> None:
    [finding] = findings_for("a", ALL - {ECHO}, echo=None)
    assert finding.severity == WARN and "health checks report it down" in finding.message


@pytest.mark.parametrize(("query", "severity", "words"), [
    (QueryOutcome(3, CANCEL, False), WARN, "exactly max_results = 3 matches"),
    (QueryOutcome(3, SUCCESS, False), WARN, "exactly max_results = 3 matches"),
    (QueryOutcome(4, CANCEL, True), WARN, "returned more than max_results = 3"),
    (QueryOutcome(0, UNABLE, False), FAIL, "with 0xC000 after 0 matches"),
    (QueryOutcome(2, None, False), FAIL, "gave no final status"),
    (QueryOutcome(2, SUCCESS, False), OK, "answers C-ECHO")])
def test_the_study_level_test_query(query: QueryOutcome, severity: str, words: str) -> None:
    [finding] = findings_for("a", ALL, query=query)
    assert finding.severity == severity and words in finding.message


def test_no_cap_configured_means_no_cap_finding() -> None:
    [finding] = findings_for("b", ALL, query=QueryOutcome(1, CANCEL, True))
    assert finding.severity == OK


def test_routes_all_down_is_broken_some_down_is_a_warning() -> None:
    config = rules()
    assert route_findings(config, {"a": True, "b": True}) == []
    found = route_findings(config, {"a": True, "b": False})
    assert [(f.severity, f.subject) for f in found] == [(WARN, "route FED")]
    found = route_findings(config, {"a": False, "b": False})
    assert [(f.severity, f.subject) for f in found] == [(FAIL, "route ONLY_A"), (FAIL, "route FED")]
    assert found[1].message == ("every archive of this route is down (a, b): workstations "
                                "calling FED get no answers")


def test_config_sanity() -> None:
    assert config_findings(rules()) == []
    looped = rules(archives={"self": {"ae_title": "X", "host": "localhost", "port": 11112},
                             "spare": {"ae_title": "Y", "host": "10.0.0.9", "port": 104}},
                   routes=[{"called_ae": "R", "archives": ["self"], "destinations": []}],
                   health={"enabled": False})
    found = config_findings(looped)
    assert [(f.severity, f.subject) for f in found] == [
        (FAIL, "archive self"), (WARN, "archive spare"), (WARN, "config")]
    assert "the proxy's own listener" in found[0].message


def test_a_route_that_may_c_move_anywhere_is_a_warning() -> None:
    open_routes = rules(
        destinations={"ws1": {"ae_title": "WS1", "host": "10.0.1.20", "port": 104},
                      "ws2": {"ae_title": "WS2", "host": "10.0.1.21", "port": 104}},
        routes=[{"called_ae": "OPEN", "archives": ["a", "b"]},
                {"called_ae": "CLOSED", "archives": ["a"], "destinations": ["ws1"]}])
    [finding] = config_findings(open_routes)
    assert render([finding])[0] == (
        "WARN route OPEN: no destinations key: its workstations may C-MOVE studies to every "
        "[destinations] entry (ws1, ws2) and to any added later; fix: add destinations = "
        "[...] to the route with the names of the destinations its workstations may send to "
        "(destinations = [] for none)")
    bare = rules(routes=[{"called_ae": "OPEN", "archives": ["a", "b"]}])
    assert [f.message for f in config_findings(bare)] == [
        "no destinations key: its workstations may C-MOVE studies to every [destinations] "
        "entry (none configured yet) and to any added later"]


def test_render_is_one_line_per_finding_plus_a_summary() -> None:
    findings = [Finding(FAIL, "archive a", "it is down", "start it"),
                Finding(WARN, "route R", "half down"),
                Finding(OK, "destination d", "answers")]
    assert render(findings) == [
        "FAIL archive a: it is down; fix: start it",
        "WARN route R: half down",
        "ok   destination d: answers",
        "summary: 1 broken, 1 warnings, 1 ok"]
    assert exit_status(findings) == 1
    assert exit_status(findings[1:]) == 0
    assert exit_status([]) == 0


def test_an_mpps_only_archive_is_asked_for_mpps_not_for_queries() -> None:
    """doctor Rule 7."""
    mpps = "1.2.840.10008.3.1.2.3.3"
    cfg = rules().archives["a"]
    peer = Peer.of(cfg, "QR_PROXY")
    [ok] = archive_findings(cfg, peer, {ECHO, mpps}, SUCCESS, None, queries=False, mpps=True)
    assert ok.severity == OK and "accepts MPPS from QR_PROXY" in ok.message
    [refused] = archive_findings(cfg, peer, {ECHO}, SUCCESS, None, queries=False, mpps=True)
    assert refused.severity == FAIL and "Modality Performed Procedure Step" in refused.message
    assert refused.fix is not None and "QR_PROXY" in refused.fix
    [both] = archive_findings(cfg, peer, ALL | {mpps}, SUCCESS, ONE_MATCH, mpps=True)
    assert both.severity == OK and "C-GET and MPPS from QR_PROXY" in both.message


def test_a_commitment_archive_must_accept_storage_commitment_and_know_the_proxy() -> None:
    """doctor Rule 7: commit_to (or store_to's first)."""
    commitment = "1.2.840.10008.1.20.1"
    cfg = rules().archives["a"]
    peer = Peer.of(cfg, "QR_PROXY")
    where = "QR_PROXY at 10.0.0.9, port 11112"
    ok, told = archive_findings(cfg, peer, ALL | {commitment}, SUCCESS, ONE_MATCH,
                                commit=where)
    assert ok.severity == OK and told.severity == OK
    assert "accepts Storage Commitment" in told.message and where in told.message
    assert "must know" in told.message
    *_, refused = archive_findings(cfg, peer, ALL, SUCCESS, ONE_MATCH, commit=where)
    assert refused.severity == FAIL and "Storage Commitment" in refused.message
    assert refused.fix is not None and where in refused.fix
    assert len(archive_findings(cfg, peer, ALL, SUCCESS, ONE_MATCH)) == 1    # not asked
