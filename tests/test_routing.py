"""Pure routing decisions: admission (with PS3.8 reject reasons) and AE-title rewrites."""

from __future__ import annotations

import pytest
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.pdu_primitives import A_ASSOCIATE

from proxy.config import Config, RouteConfig, parse
from proxy.routing import (
    Rejection,
    admit,
    archives_for,
    calling_ae_for,
    forward_calling_ae,
    move_destination,
    too_many_associations,
    upstream_titles,
)


@pytest.fixture(scope="module")
def config() -> Config:
    return parse({
        "proxy": {"ae_title": "QR_PROXY"},
        "archives": {
            "site_a": {"ae_title": "PACS_A", "host": "h", "port": 104, "calling_ae": "PROXY_AT_A"},
            "site_b": {"ae_title": "PACS_B", "host": "h", "port": 105},
        },
        "destinations": {"ws1": {"ae_title": "WS1", "host": "h", "port": 11113}},
        "routes": [
            {"called_ae": "RELAY", "archives": ["site_a"]},
            {"called_ae": "GUARDED", "archives": ["site_b"], "allow": ["WS1", "WS2"]},
            {"called_ae": "FED", "archives": ["site_a", "site_b"], "store_to": ["site_b"]},
        ],
    })


@pytest.mark.parametrize(("calling", "called", "route"), [
    ("ANY_WS", "RELAY", "RELAY"),
    ("WS1", "GUARDED", "GUARDED"),
    ("WS2", "GUARDED", "GUARDED"),
    ("WS1       ", "GUARDED         ", "GUARDED"),   # space-padded as on the wire
    ("X", "FED", "FED"),
])
def test_admitted_to_the_route_called(config: Config, calling: str, called: str,
                                      route: str) -> None:
    decision = admit(config, calling, called)
    assert isinstance(decision, RouteConfig) and decision.called_ae == route


# PS3.8 Table 9-21: result 1 = rejected-permanent; source 1 = DICOM UL service-user;
# diagnostic 7 = called-AE-title-not-recognized, 3 = calling-AE-title-not-recognized.
@pytest.mark.parametrize(("calling", "called", "diagnostic", "words"), [
    ("WS1", "NOPE", 0x07, "called AE title 'NOPE' is not a route"),
    ("WS1", "relay", 0x07, "called AE title 'relay' is not a route"),   # case matters
    ("WS3", "GUARDED", 0x03, "calling AE title 'WS3' is not allowed on route 'GUARDED'"),
    ("ws1", "GUARDED", 0x03, "calling AE title 'ws1' is not allowed"),
])
def test_rejected_with_the_standard_reason(config: Config, calling: str, called: str,
                                           diagnostic: int, words: str) -> None:
    decision = admit(config, calling, called)
    assert isinstance(decision, Rejection)
    assert (decision.result, decision.source, decision.diagnostic) == (0x01, 0x01, diagnostic)
    assert decision.reason.startswith(words)
    assert decision.hint


def test_unknown_called_ae_hint_lists_the_routes(config: Config) -> None:
    decision = admit(config, "WS1", "NOPE")
    assert isinstance(decision, Rejection)
    assert all(r in decision.hint for r in ("RELAY", "GUARDED", "FED"))


def test_disallowed_calling_ae_hint_says_what_to_add(config: Config) -> None:
    decision = admit(config, "WS9", "GUARDED")
    assert isinstance(decision, Rejection)
    assert "'WS9'" in decision.hint and "allow" in decision.hint


@pytest.mark.parametrize(("active", "limit", "rejected"), [
    (0, 1, False), (3, 4, False), (4, 4, True), (9, 4, True),
])
def test_association_limit(active: int, limit: int, rejected: bool) -> None:
    decision = too_many_associations(active, limit)
    if not rejected:
        assert decision is None
        return
    # result 2 = rejected-transient; source 3 = service-provider (presentation);
    # diagnostic 2 = local-limit-exceeded.
    assert decision is not None
    assert (decision.result, decision.source, decision.diagnostic) == (0x02, 0x03, 0x02)
    assert str(limit) in decision.reason and "max_associations" in decision.hint


def test_every_rejection_encodes_as_a_valid_a_associate_rj(config: Config) -> None:
    """pynetdicom (as the workstation would) decodes the PDU and names the same reason."""
    limit = too_many_associations(1, 1)
    assert limit is not None
    for why in (admit(config, "X", "NOPE"), admit(config, "X", "GUARDED"), limit):
        assert isinstance(why, Rejection)
        primitive = A_ASSOCIATE()
        primitive.result, primitive.result_source = why.result, why.source
        primitive.diagnostic = why.diagnostic
        pdu = A_ASSOCIATE_RJ()
        pdu.from_primitive(primitive)
        decoded = A_ASSOCIATE_RJ()
        decoded.decode(pdu.encode())
        assert (decoded.result, decoded.source, decoded.reason_diagnostic) == (
            why.result, why.source, why.diagnostic)
        assert decoded.reason_str  # pynetdicom knows a name for the diagnostic


def test_upstream_titles_are_what_the_archive_expects(config: Config) -> None:
    # calling AE = the archive's calling_ae (or the proxy's title); called AE = its ae_title
    assert upstream_titles(config.archives["site_a"], "QR_PROXY") == ("PROXY_AT_A", "PACS_A")
    assert upstream_titles(config.archives["site_b"], "QR_PROXY") == ("QR_PROXY", "PACS_B")
    assert upstream_titles(config.destinations["ws1"], "QR_PROXY") == ("QR_PROXY", "WS1")


def test_calling_ae_is_the_workstations_only_on_a_passing_route(config: Config) -> None:
    site_a = config.archives["site_a"]
    passing = RouteConfig("PASS", ("site_a",), pass_calling_ae=True)
    plain = config.route_for("RELAY")
    assert calling_ae_for(site_a, passing, "WS1 ") == "WS1"
    assert calling_ae_for(site_a, plain, "WS1") == "PROXY_AT_A"      # the archive's calling_ae
    assert calling_ae_for(site_a, None, "WS1") == "PROXY_AT_A"       # no route: the proxy's
    assert calling_ae_for(site_a, passing, "  ") == "PROXY_AT_A"     # nothing to pass


def test_forwarded_instances_follow_the_route_they_came_in_on() -> None:
    data = {"proxy": {"ae_title": "QR_PROXY"},
            "archives": {"site_a": {"ae_title": "PACS_A", "host": "h", "port": 104}},
            "routes": [{"called_ae": "PASS", "archives": ["site_a"], "store_to": ["site_a"],
                        "pass_calling_ae": True},
                       {"called_ae": "KEEP", "archives": ["site_a"], "store_to": ["site_a"]}]}
    cfg = parse(data)
    site_a = cfg.archives["site_a"]
    assert forward_calling_ae(cfg, site_a, "MODALITY", "PASS ") == "MODALITY"
    assert forward_calling_ae(cfg, site_a, "MODALITY", "KEEP") == "QR_PROXY"
    assert forward_calling_ae(cfg, site_a, "MODALITY", "GONE") == "QR_PROXY"  # route removed
    assert forward_calling_ae(cfg, site_a, "", "") == "QR_PROXY"              # older spool


def test_archives_for_each_operation(config: Config) -> None:
    fed = config.route_for("FED")
    assert fed is not None
    for operation in ("C-ECHO", "C-FIND", "C-MOVE", "C-GET"):
        assert [a.name for a in archives_for(config, fed, operation)] == ["site_a", "site_b"]
    assert [a.name for a in archives_for(config, fed, "C-STORE")] == ["site_b"]


def test_move_destination_comes_from_the_proxy_table(config: Config) -> None:
    dest = move_destination(config, "WS1 ")
    assert dest is not None and dest.name == "ws1"
    assert move_destination(config, "UNKNOWN") is None
