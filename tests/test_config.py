"""rules.toml validation: every mistake is one ConfigError naming its key path."""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config import ConfigError, load, parse

REPO = Path(__file__).resolve().parents[1]


def minimal() -> dict[str, Any]:
    return {
        "proxy": {"ae_title": "QR_PROXY", "port": 11112},
        "archives": {"site_a": {"ae_title": "PACS_A", "host": "10.0.0.5", "port": 104}},
        "routes": [{"called_ae": "RELAY", "archives": ["site_a"]}],
    }


def with_change(path: str, value: Any) -> dict[str, Any]:
    """``minimal()`` with one value set (``None`` deletes it); path like ``routes.0.allow``."""
    data = copy.deepcopy(minimal())
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    key: Any = int(last) if isinstance(node, list) else last
    if value is None:
        del node[key]
    else:
        node[key] = value
    return data


def test_the_example_rules_file_is_valid() -> None:
    config = load(REPO / "rules.toml")
    assert config.routes and config.archives
    assert config.source == REPO / "rules.toml"


def test_defaults_and_calling_ae_fallback() -> None:
    config = parse(minimal())
    archive = config.archives["site_a"]
    assert archive.calling_ae == "QR_PROXY"          # proxy.ae_title unless set
    assert (archive.retrieve, archive.max_results, archive.timeout) == ("get", 0, 30.0)
    assert archive.forward_associations == 1          # strict spool order unless asked
    route = config.routes[0]
    assert (route.allow, route.echo, route.is_federated) == ((), "upstream", False)
    assert (config.log.format, config.log.phi) == ("json", "hash")
    p = config.proxy
    assert p.max_associations > 0 and p.max_connections >= p.max_associations
    assert p.acse_timeout > 0 and p.dimse_timeout > 0 and p.network_timeout > 0


def test_explicit_values_are_kept() -> None:
    data = with_change("archives.site_a.calling_ae", "PROXY_AT_A")
    data["routes"][0].update(allow=["WS1", "WS2"], echo="local")
    data["proxy"].update(max_associations=3, max_connections=5, acse_timeout=1.5,
                         network_timeout=2, dimse_timeout=4)
    config = parse(data)
    assert config.archives["site_a"].calling_ae == "PROXY_AT_A"
    assert config.routes[0].allow == ("WS1", "WS2") and config.routes[0].echo == "local"
    p = config.proxy
    assert (p.max_associations, p.max_connections, p.acse_timeout, p.network_timeout,
            p.dimse_timeout) == (3, 5, 1.5, 2.0, 4.0)


def test_dicomweb_section_and_route_flag(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("t1\n")
    data = with_change("routes.0.dicomweb", True)
    data["dicomweb"] = {"host": "0.0.0.0", "port": 0, "cors_origins": ["*", "http://v:8"],
                        "tokens_file": str(tokens), "public_url": "https://pacs.example/"}
    cfg = parse(data)
    assert cfg.routes[0].dicomweb and cfg.dicomweb is not None
    assert (cfg.dicomweb.host, cfg.dicomweb.port, cfg.dicomweb.cors_origins) == (
        "0.0.0.0", 0, ("*", "http://v:8"))
    assert cfg.dicomweb.tokens_file == tokens and cfg.dicomweb.max_requests == 16
    assert cfg.dicomweb.public_url == "https://pacs.example"
    assert cfg.dicomweb.metadata_cache_bytes == 256 << 20
    data["dicomweb"]["metadata_cache_bytes"] = 0
    off = parse(data).dicomweb
    assert off is not None and off.metadata_cache_bytes == 0
    plain = parse(minimal())
    assert plain.dicomweb is None and not plain.routes[0].dicomweb


def test_route_lookup_ignores_dicom_padding() -> None:
    config = parse(minimal())
    route = config.route_for("RELAY ")
    assert route is not None and route.called_ae == "RELAY"
    assert config.route_for("relay") is None            # AE titles are case-sensitive
    assert config.route_for("NOPE") is None


BROKEN: list[tuple[str, Any, str]] = [
    # (path to change, new value or None to delete, expected start of the message)
    ("prox", {}, "prox: unknown key"),
    ("proxy.portt", 11112, "proxy.portt: unknown key"),
    ("archives.site_a.timout", 5, "archives.site_a.timout: unknown key"),
    ("routes.0.alow", ["WS1"], "routes[0].alow: unknown key"),
    ("proxy.ae_title", "A" * 17, "proxy.ae_title: invalid AE title"),
    ("proxy.ae_title", "BAD\\AE", "proxy.ae_title: invalid AE title"),
    ("archives.site_a.ae_title", "CTRL\x01AE", "archives.site_a.ae_title: invalid AE title"),
    ("archives.site_a.ae_title", "   ", "archives.site_a.ae_title: AE title must not be empty"),
    ("archives.site_a.calling_ae", "", "archives.site_a.calling_ae: AE title must not be empty"),
    ("archives.site_a.ae_title", 104, "archives.site_a.ae_title: AE title must be a string"),
    ("routes.0.called_ae", "ÉCHO", "routes[0].called_ae: invalid AE title"),
    ("routes.0.allow", ["WS1", "X" * 17], "routes[0].allow[1]: invalid AE title"),
    ("proxy.port", 65536, "proxy.port: port 65536 is out of range"),
    ("proxy.port", -1, "proxy.port: port -1 is out of range"),
    ("proxy.port", "104", "proxy.port: port must be an integer"),
    ("proxy.port", True, "proxy.port: port must be an integer"),
    ("archives.site_a.port", 0, "archives.site_a.port: port 0 is out of range"),
    ("archives.site_a.port", 70000, "archives.site_a.port: port 70000 is out of range"),
    ("archives.site_a.port", None, "archives.site_a.port: is required"),
    ("archives.site_a.host", "", "archives.site_a.host: must be a host name"),
    ("archives.site_a.retrieve", "push", "archives.site_a.retrieve: must be one of"),
    ("archives.site_a.timeout", 0, "archives.site_a.timeout: must be a positive number"),
    ("archives.site_a.max_results", -1, "archives.site_a.max_results: must be an integer >= 0"),
    ("archives.site_a.forward_associations", 0,
     "archives.site_a.forward_associations: must be an integer from 1 to 8"),
    ("archives.site_a.forward_associations", 9,
     "archives.site_a.forward_associations: must be an integer from 1 to 8"),
    ("archives.site_a.forward_associations", True,
     "archives.site_a.forward_associations: must be an integer from 1 to 8"),
    ("routes.0.archives", ["site_a", "nope"], "routes[0].archives[1]: no archive named 'nope'"),
    ("routes.0.archives", [], "routes[0].archives: must name at least one archive"),
    ("routes.0.archives", "site_a", "routes[0].archives: must be an array"),
    ("routes.0.archives", ["site_a", "site_a"], "routes[0].archives: names an archive twice"),
    ("routes.0.store_to", ["elsewhere"], "routes[0].store_to[0]: no archive named 'elsewhere'"),
    ("routes.0.mpps_to", ["ris"], "routes[0].mpps_to[0]: no archive named 'ris'"),
    ("routes.0.mpps_to", "site_a", "routes[0].mpps_to: must be an array"),
    ("routes.0.commit_to", "nope", "routes[0].commit_to: no archive named 'nope'"),
    ("routes.0.commit_to", ["site_a"], "routes[0].commit_to: must be a string"),
    ("routes.0.echo", "remote", "routes[0].echo: must be one of"),
    ("routes.0.store", "forward", "routes[0].store: must be one of"),
    ("routes.0.store", "relay", "routes[0].store: \"relay\" forwards each C-STORE to one "
                              "archive while the workstation waits: store_to must name "
                              "exactly one (it names 0)"),
    ("routes.0.called_ae", None, "routes[0].called_ae: is required"),
    ("proxy.proxy_protocol_from", ["10.0.0.0/8", "10.1.2.7/24"],
     "proxy.proxy_protocol_from[1]: invalid network '10.1.2.7/24': host bits set"),
    ("proxy.proxy_protocol_from", "10.0.0.0/8",
     "proxy.proxy_protocol_from: must be an array of networks"),
    ("proxy.proxy_protocol_from", [8], "proxy.proxy_protocol_from[0]: must be a string"),
    ("routes.0.allow", ["WS1", "WS2@10.1.2.300/24"],
     "routes[0].allow[1]: invalid network '10.1.2.300/24': expected an IPv4 or IPv6 address "
     "or CIDR such as 10.1.2.0/24 or fd00::/8"),
    ("routes.0.allow", ["WS2@10.1.2.5/24"],
     "routes[0].allow[0]: invalid network '10.1.2.5/24': host bits set (did you mean "
     "10.1.2.0/24?)"),
    ("routes.0.allow", ["WS2@fd00::/129"], "routes[0].allow[0]: invalid network 'fd00::/129'"),
    ("routes.0.allow", ["WS2@lab-net"], "routes[0].allow[0]: invalid network 'lab-net'"),
    ("routes.0.allow", ["WS2@"], "routes[0].allow[0]: 'WS2@': nothing after '@'"),
    ("routes.0.allow", ["@10.0.0.0/8"], "routes[0].allow[0]: AE title must not be empty"),
    ("routes.0.allow", ["A" * 17 + "@10.0.0.0/8"], "routes[0].allow[0]: invalid AE title"),
    ("routes.0.allow", ["WS1", 7], "routes[0].allow[1]: AE title must be a string"),
    ("routes.0.allow", "WS1", "routes[0].allow: must be an array of AE titles"),
    ("routes.0.destinations", ["nope"],
     "routes[0].destinations[0]: no destination named 'nope' (known: none)"),
    ("routes.0.destinations", "ws1", "routes[0].destinations: must be an array of names"),
    ("routes.0.max_associations", 0, "routes[0].max_associations: must be a positive integer"),
    ("routes.0.max_associations_per_ae", -1,
     "routes[0].max_associations_per_ae: must be a positive integer"),
    ("routes.0.max_associations_per_ae", 1.5,
     "routes[0].max_associations_per_ae: must be a positive integer"),
    ("proxy.acse_timeout", 0, "proxy.acse_timeout: must be a positive number"),
    ("proxy.network_timeout", -5, "proxy.network_timeout: must be a positive number"),
    ("proxy.dimse_timeout", "60", "proxy.dimse_timeout: must be a positive number"),
    ("proxy.max_associations", 0, "proxy.max_associations: must be a positive integer"),
    ("proxy.max_connections", 1.5, "proxy.max_connections: must be a positive integer"),
    ("proxy.max_pdu_size", 100, "proxy.max_pdu_size: must be between"),
    ("log.phi", "maybe", "log.phi: must be one of"),
    ("log.format", "xml", "log.format: must be one of"),
    ("metrics.port", 99999, "metrics.port: port 99999 is out of range"),
    ("proxy", None, "proxy: section is required"),
    ("proxy", "QR_PROXY", "proxy: must be a table"),
    ("archives", None, "archives: at least one archive is required"),
    ("archives", [], "archives: must be a table"),
    ("archives", {}, "archives: at least one archive is required"),
    ("archives.site_a", "PACS_A", "archives.site_a: must be a table"),
    ("routes", None, "routes: at least one [[routes]] entry is required"),
    ("routes", {"called_ae": "X"}, "routes: must be an array of tables"),
    ("routes.0", "RELAY", "routes[0]: must be a table"),
    ("routes.0.dicomweb", True, "routes[0].dicomweb: needs a [dicomweb] section"),
    ("routes.0.dicomweb", "yes", "routes[0].dicomweb: must be true or false"),
    ("dicomweb.port", 70000, "dicomweb.port: port 70000 is out of range"),
    ("dicomweb.cors_origins", "*", "dicomweb.cors_origins: must be an array of origins"),
    ("dicomweb.cors_origins", ["https://v.example/app"],
     "dicomweb.cors_origins[0]: must be an origin such as"),
    ("dicomweb.tokens_file", "/nonexistent/tokens", "dicomweb.tokens_file: cannot read"),
    ("dicomweb.max_requests", 0, "dicomweb.max_requests: must be a positive integer"),
    ("dicomweb.metadata_cache_bytes", -1,
     "dicomweb.metadata_cache_bytes: must be an integer >= 0"),
    ("dicomweb.public_url", "pacs.example", "dicomweb.public_url: must be an http(s) URL"),
    ("dicomweb.nope", 1, "dicomweb.nope: unknown key"),
]


@pytest.mark.parametrize(("path", "value", "expected"), BROKEN,
                         ids=[f"{p}={v!r}"[:60] for p, v, _ in BROKEN])
def test_each_mistake_names_its_key_path(path: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(with_change(path, value))
    message = str(caught.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_store_mode_defaults_to_spool_and_relay_needs_exactly_one_archive() -> None:
    assert parse(minimal()).routes[0].store == "spool"
    data = minimal()
    data["archives"]["site_b"] = {"ae_title": "PACS_B", "host": "10.0.0.6", "port": 104}
    data["routes"][0].update(store="relay", store_to=["site_a"])
    assert parse(data).routes[0].store == "relay"
    data["routes"][0]["store_to"] = ["site_a", "site_b"]
    with pytest.raises(ConfigError) as caught:
        parse(data)
    assert str(caught.value).startswith("routes[0].store: ") and "(it names 2)" in str(caught.value)
    data["routes"][0]["store"] = "spool"           # several archives are fine when spooled
    assert parse(data).routes[0].store_to == ("site_a", "site_b")


def test_duplicate_called_ae_titles_are_rejected() -> None:
    data = minimal()
    data["routes"].append({"called_ae": "RELAY ", "archives": ["site_a"]})  # same after padding
    with pytest.raises(ConfigError, match=r"^routes\[1\]\.called_ae: 'RELAY' is already used "
                                          r"by routes\[0\]"):
        parse(data)


def test_duplicate_destination_ae_titles_are_rejected() -> None:
    data = minimal()
    data["destinations"] = {"ws1": {"ae_title": "WS", "host": "h", "port": 1},
                            "ws2": {"ae_title": "WS", "host": "h", "port": 2}}
    with pytest.raises(ConfigError, match=r"^destinations\.ws2\.ae_title: 'WS' is already used"):
        parse(data)


def test_unknown_key_lists_what_was_expected() -> None:
    with pytest.raises(ConfigError) as caught:
        parse(with_change("archives.site_a.calling_aet", "X"))
    assert "calling_ae" in str(caught.value) and "timeout" in str(caught.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("[proxy\nae_title = 'X'\n", "invalid TOML"),
    ("[proxy]\nae_title = \n", "invalid TOML"),
    ("[proxy]\nport = 1\nport = 2\n", "invalid TOML"),
])
def test_toml_syntax_errors_are_one_line(tmp_path: Path, text: str, expected: str) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load(rules)
    assert str(caught.value).startswith(expected) and "\n" not in str(caught.value)
    assert "line" in str(caught.value)          # tomllib says where


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the rules file"):
        load(tmp_path / "missing.toml")
    latin = tmp_path / "latin1.toml"
    latin.write_bytes(b"[proxy]\nae_title = \"\xe9\"\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(latin)


# Anything a TOML file can hold, nested a little: whatever it is, parse() either
# accepts it or raises ConfigError — never another exception (no traceback).
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2, 70000), st.floats(-1, 1e6),
                     st.sampled_from(["", "RELAY", "site_a", "A" * 17, "x\\y", "hash", "get",
                                      "WS1@10.0.0.0/8", "WS1@::1/200", "@", "ws1"]))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.sampled_from(["ae_title", "host", "port", "archives", "called_ae",
                                     "allow", "calling_ae", "timeout", "site_a", "phi",
                                     "destinations", "max_associations_per_ae"]),
                    inner, max_size=4)), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(section=st.sampled_from(["proxy", "archives", "routes", "log", "metrics",
                                "destinations", "spool"]),
       value=_values, key=st.sampled_from(["", "ae_title", "port", "site_a", "0"]))
def test_any_document_gives_config_or_config_error(section: str, value: Any, key: str) -> None:
    data = minimal()
    if key and isinstance(data.get(section), dict):
        data[section] = {**data[section], key: value}
    else:
        data[section] = value
    try:
        parse(data)
    except ConfigError as exc:
        assert "\n" not in str(exc)


def test_pass_calling_ae_is_an_optional_boolean() -> None:
    assert parse(minimal()).routes[0].pass_calling_ae is False
    assert parse(with_change("routes.0.pass_calling_ae", True)).routes[0].pass_calling_ae
    for wrong in ("yes", 1, ["WS1"]):
        with pytest.raises(ConfigError) as caught:
            parse(with_change("routes.0.pass_calling_ae", wrong))
        assert str(caught.value).startswith("routes[0].pass_calling_ae: must be true or false")


def test_allow_binds_calling_ae_titles_to_source_networks() -> None:
    data = minimal()
    data["destinations"] = {"ws1": {"ae_title": "WS1", "host": "h", "port": 1},
                            "ws2": {"ae_title": "WS2", "host": "h", "port": 2}}
    data["routes"][0].update(allow=["WS1", "WS2@10.1.2.0/24", "WS2@ 192.168.7.9",
                                    "WS3@::1/128", "WS3@fd00::/8"],
                             destinations=["ws2"], max_associations=8,
                             max_associations_per_ae=2)
    route = parse(data).routes[0]
    assert route.allow == ("WS1", "WS2", "WS3")          # each title once, in order
    assert [(e.ae_title, e.network) for e in route.allow_from] == [
        ("WS1", None),
        ("WS2", ipaddress.ip_network("10.1.2.0/24")),
        ("WS2", ipaddress.ip_network("192.168.7.9/32")),   # a bare address is one host
        ("WS3", ipaddress.ip_network("::1/128")),
        ("WS3", ipaddress.ip_network("fd00::/8"))]
    assert route.destinations == ("ws2",)
    assert (route.max_associations, route.max_associations_per_ae) == (8, 2)


def test_access_keys_default_to_open_and_unlimited() -> None:
    route = parse(minimal()).routes[0]
    assert (route.allow_from, route.destinations) == ((), None)
    assert (route.max_associations, route.max_associations_per_ae) == (None, None)
    assert parse(with_change("routes.0.destinations", [])).routes[0].destinations == ()


def test_proxy_protocol_from_names_balancer_networks() -> None:
    import ipaddress

    cfg = parse({"proxy": {"ae_title": "QR_PROXY",
                           "proxy_protocol_from": ["10.0.0.0/8", "fd00::1"]},
                 "archives": {"a": {"ae_title": "PACS", "host": "h", "port": 1}},
                 "routes": [{"called_ae": "R", "archives": ["a"]}]})
    assert cfg.proxy.proxy_protocol_from == (ipaddress.ip_network("10.0.0.0/8"),
                                             ipaddress.ip_network("fd00::1/128"))
    assert parse({"proxy": {"ae_title": "QR_PROXY"},
                  "archives": {"a": {"ae_title": "PACS", "host": "h", "port": 1}},
                  "routes": [{"called_ae": "R", "archives": ["a"]}]}
                 ).proxy.proxy_protocol_from == ()
