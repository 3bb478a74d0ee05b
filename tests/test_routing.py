"""Pure routing decisions: admission (with PS3.8 reject reasons) and AE-title rewrites."""

from __future__ import annotations

import pytest
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.pdu_primitives import A_ASSOCIATE

from proxy.config import Config, RouteConfig, parse
from proxy.routing import (
    MoveRefusal,
    Rejection,
    admit,
    archives_for,
    calling_ae_for,
    forward_calling_ae,
    move_destination,
    move_destination_for,
    route_limit,
    too_many_associations,
    upstream_titles,
)
from tests.tls_certs import make_pki


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    return parse({
        "proxy": {"ae_title": "QR_PROXY", "tls_port": 0},
        "tls": {"cert": str(pki.proxy.cert), "key": str(pki.proxy.key), "ca": str(pki.ca.path)},
        "archives": {
            "site_a": {"ae_title": "PACS_A", "host": "h", "port": 104, "calling_ae": "PROXY_AT_A"},
            "site_b": {"ae_title": "PACS_B", "host": "h", "port": 105},
        },
        "destinations": {"ws1": {"ae_title": "WS1", "host": "h", "port": 11113},
                         "ws2": {"ae_title": "WS2", "host": "h", "port": 11114}},
        "routes": [
            {"called_ae": "RELAY", "archives": ["site_a"]},
            {"called_ae": "GUARDED", "archives": ["site_b"], "allow": ["WS1", "WS2"]},
            {"called_ae": "FED", "archives": ["site_a", "site_b"], "store_to": ["site_b"]},
            {"called_ae": "BOUND", "archives": ["site_a"],
             "allow": ["LAB@127.0.0.0/8", "LAB@10.9.0.0/16", "ANYWHERE", "ANYWHERE@10.0.0.0/8",
                       "V6@::1/128", "V6@fd00::/8"],
             "destinations": ["ws1"], "max_associations": 3, "max_associations_per_ae": 2},
            {"called_ae": "NO_MOVES", "archives": ["site_a"], "destinations": []},
            {"called_ae": "CERTS", "archives": ["site_a"],
             "certificates": {"WS1": "CN=ws1.example.org,O=Radiology",
                              "WS2": ["CN=old.example.org", "CN=new.example.org"]}},
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
    assert all(r in decision.hint for r in ("RELAY", "GUARDED", "FED", "BOUND"))


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
    route = config.route_for("BOUND")
    assert route is not None
    for why in (admit(config, "X", "NOPE"), admit(config, "X", "GUARDED"), limit,
                admit(config, "LAB", "BOUND", source_ip="10.0.0.1"),
                route_limit(route, "LAB", 3, 0), route_limit(route, "LAB", 0, 2)):
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


# -- who may do what (routing Rule 6) -------------------------------------------------------

@pytest.mark.parametrize(("calling", "source_ip"), [
    ("LAB", "127.0.0.1"), ("LAB", "127.200.3.4"), ("LAB", "10.9.255.1"),   # either network
    ("LAB", "::ffff:127.0.0.1"),            # IPv4-mapped (a dual-stack listener): its IPv4
    ("ANYWHERE", "192.0.2.1"), ("ANYWHERE", None),   # a bare entry: from any address
    ("V6", "::1"), ("V6", "fd12:3456::7"),
    ("SOMEONE", "127.0.0.1"),
])
def test_source_networks_admit_their_addresses(config: Config, calling: str,
                                               source_ip: str | None) -> None:
    if calling == "SOMEONE":                       # not in allow at all: the old rejection
        decision = admit(config, calling, "BOUND", source_ip=source_ip)
        assert isinstance(decision, Rejection) and decision.security is None
        return
    decision = admit(config, calling, "BOUND", source_ip=source_ip)
    assert isinstance(decision, RouteConfig) and decision.called_ae == "BOUND"


@pytest.mark.parametrize(("calling", "source_ip", "networks"), [
    ("LAB", "10.0.0.1", "127.0.0.0/8, 10.9.0.0/16"),
    ("LAB", "128.0.0.1", "127.0.0.0/8, 10.9.0.0/16"),
    ("LAB", "::1", "127.0.0.0/8, 10.9.0.0/16"),        # an IPv6 address is in no IPv4 network
    ("V6", "::2", "::1/128, fd00::/8"),
    ("V6", "127.0.0.1", "::1/128, fd00::/8"),
    ("LAB", None, "127.0.0.0/8, 10.9.0.0/16"),         # address not known: not proven
    ("LAB", "not-an-address", "127.0.0.0/8, 10.9.0.0/16"),
])
def test_source_networks_reject_other_addresses(config: Config, calling: str,
                                                source_ip: str | None, networks: str) -> None:
    decision = admit(config, calling + "  ", "BOUND", source_ip=source_ip)
    assert isinstance(decision, Rejection)
    # PS3.8 Table 9-21: rejected-permanent, service-user, calling-AE-title-not-recognized.
    assert (decision.result, decision.source, decision.diagnostic) == (0x01, 0x01, 0x03)
    where = source_ip or "an unknown address"
    assert decision.reason == (f"calling AE title {calling!r} is not allowed from {where} on "
                               f"route 'BOUND' (only from {networks})")
    assert decision.security == "source_network"
    assert f"the AE title {calling!r}" in decision.hint


def test_source_network_hint_names_the_entry_to_add(config: Config) -> None:
    v4 = admit(config, "LAB", "BOUND", source_ip="10.0.0.1")
    v6 = admit(config, "V6", "BOUND", source_ip="::2")
    assert isinstance(v4, Rejection) and isinstance(v6, Rejection)
    assert v4.hint == ("if 10.0.0.1 is one of its hosts, add 'LAB@10.0.0.1/32' to allow of the "
                       "route 'BOUND' in rules.toml; otherwise another host is using the AE "
                       "title 'LAB'")
    assert "'V6@::2/128'" in v6.hint


def test_the_proxys_own_title_is_not_subject_to_route_networks(config: Config) -> None:
    decision = admit(config, "PACS_A", "QR_PROXY", source_ip="203.0.113.9")
    assert not isinstance(decision, Rejection)


@pytest.mark.parametrize(("on_route", "from_ae", "limit_name"), [
    (0, 0, None), (2, 1, None),
    (3, 0, "max_associations"),           # the route's own limit
    (2, 2, "max_associations_per_ae"),    # this calling AE's share of it
    (5, 5, "max_associations"),
])
def test_route_limits(config: Config, on_route: int, from_ae: int,
                      limit_name: str | None) -> None:
    route = config.route_for("BOUND")
    assert route is not None
    decision = route_limit(route, "LAB ", on_route, from_ae)
    if limit_name is None:
        assert decision is None
        return
    assert decision is not None
    # rejected-transient, service-provider (presentation), local-limit-exceeded.
    assert (decision.result, decision.source, decision.diagnostic) == (0x02, 0x03, 0x02)
    assert f"{limit_name} of the route 'BOUND'" in decision.hint
    assert f"{limit_name} = " in decision.reason and decision.security is None
    if limit_name == "max_associations_per_ae":
        assert decision.reason == ("calling AE title 'LAB' holds 2 associations on route "
                                   "'BOUND' (max_associations_per_ae = 2)")


def test_a_route_without_limits_has_none(config: Config) -> None:
    route = config.route_for("RELAY")
    assert route is not None and route_limit(route, "X", 10_000, 10_000) is None


def test_move_destinations_a_route_allows(config: Config) -> None:
    bound, relay = config.route_for("BOUND"), config.route_for("RELAY")
    allowed = move_destination_for(config, bound, "WS1 ")
    assert not isinstance(allowed, MoveRefusal) and allowed.name == "ws1"
    # Without the key: every [destinations] entry; an unknown one is no security event.
    for asked in ("WS1", "WS2"):
        found = move_destination_for(config, relay, asked)
        assert not isinstance(found, MoveRefusal) and found.ae_title == asked
    unknown = move_destination_for(config, relay, "NOBODY")
    assert isinstance(unknown, MoveRefusal) and unknown.security is None
    assert "NOBODY" in unknown.hint and "WS1, WS2" in unknown.hint


@pytest.mark.parametrize(("route", "asked", "allowed", "add"), [
    ("BOUND", "WS2", "WS1", "add 'ws2' to destinations of the route 'BOUND'"),
    ("BOUND", "EVIL", "WS1", "add [destinations.<name>] with ae_title = 'EVIL'"),
    ("NO_MOVES", "WS1", "none", "add 'ws1' to destinations of the route 'NO_MOVES'"),
])
def test_other_move_destinations_are_refused_as_security_events(
        config: Config, route: str, asked: str, allowed: str, add: str) -> None:
    refused = move_destination_for(config, config.route_for(route), asked)
    assert isinstance(refused, MoveRefusal)
    assert refused.security == "move_destination"
    assert refused.reason == (f"route {route!r} does not allow Move Destination {asked!r} "
                              f"(allowed: {allowed})")
    assert add in refused.hint


# -- calling AE titles bound to client certificates (routing Rule 7) -------------------------

@pytest.mark.parametrize(("calling", "subject"), [
    ("WS1", "CN=ws1.example.org,O=Radiology"),
    ("WS1", "C=DE,O=radiology,CN=WS1.Example.org"),   # more attributes, other order and case
    ("WS2", "CN=old.example.org"), ("WS2", "CN=new.example.org,O=Anything"),   # either
    ("OTHER", None), ("OTHER", "CN=whoever"),          # not bound: allow alone decides
])
def test_bound_titles_are_admitted_with_their_certificate(config: Config, calling: str,
                                                          subject: str | None) -> None:
    decision = admit(config, calling, "CERTS", source_ip="127.0.0.1", tls_subject=subject)
    assert isinstance(decision, RouteConfig) and decision.called_ae == "CERTS"


@pytest.mark.parametrize(("calling", "subject", "showed"), [
    ("WS1", None, "this association showed none"),                  # clear port, or no cert
    ("WS1", "CN=ws2.example.org,O=Radiology", "showed CN=ws2.example.org,O=Radiology"),
    ("WS1", "CN=ws1.example.org", "showed CN=ws1.example.org"),     # O missing
    ("WS1", "CN=ws1.example.org.evil,O=Radiology", "showed CN=ws1.example.org.evil"),
    ("WS2", "CN=older.example.org", "showed CN=older.example.org"),
])
def test_bound_titles_are_refused_with_another_certificate(config: Config, calling: str,
                                                           subject: str | None,
                                                           showed: str) -> None:
    decision = admit(config, calling + " ", "CERTS", source_ip="127.0.0.1", tls_subject=subject)
    assert isinstance(decision, Rejection)
    assert (decision.result, decision.source, decision.diagnostic) == (0x01, 0x01, 0x03)
    assert decision.security == "certificate"
    assert decision.reason.startswith(f"calling AE title {calling!r} is bound to a client "
                                      "certificate on route 'CERTS'")
    assert showed in decision.reason
    if subject is None:
        assert "must call over TLS" in decision.hint
    else:
        assert f"add it to certificates.{calling} of the route 'CERTS'" in decision.hint
