"""rules.toml TLS keys: [tls], [proxy] tls_port, [[routes]] tls_only, archives'/destinations'
tls and tls_server_name; every mistake is one ConfigError naming its key path."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from proxy.config import ConfigError, parse
from tests.tls_certs import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def rules(pki: Pki, **tls: Any) -> dict[str, Any]:
    return {
        "proxy": {"ae_title": "QR_PROXY", "port": 11112, "tls_port": 2762},
        "tls": {"cert": str(pki.proxy.cert), "key": str(pki.proxy.key),
                "ca": str(pki.ca.path), **tls},
        "archives": {"site_a": {"ae_title": "PACS_A", "host": "10.0.0.5", "port": 104}},
        "destinations": {"ws1": {"ae_title": "WS1", "host": "10.0.0.9", "port": 104}},
        "routes": [{"called_ae": "RELAY", "archives": ["site_a"]}],
    }


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse(data)
    return str(info.value)


def test_defaults(pki: Pki) -> None:
    config = parse(rules(pki))
    assert config.tls is not None
    assert (config.tls.require_client_cert, config.tls.min_version,
            config.tls.handshake_timeout) == (True, "1.2", 10.0)
    assert config.proxy.tls_port == 2762
    assert config.routes[0].tls_only is False
    assert config.archives["site_a"].tls is False
    assert config.archives["site_a"].tls_server_name is None


def test_no_tls_section_means_no_tls_listener(pki: Pki) -> None:
    data = rules(pki)
    del data["tls"]
    del data["proxy"]["tls_port"]
    config = parse(data)
    assert config.tls is None and config.proxy.tls_port is None


def test_explicit_values(pki: Pki) -> None:
    data = rules(pki, require_client_cert=False, min_version="1.3", handshake_timeout=3)
    data["routes"][0]["tls_only"] = True
    data["archives"]["site_a"].update(tls=True, tls_server_name="pacs-a.example.org")
    data["destinations"]["ws1"].update(tls=True, tls_server_name="ws1.example.org")
    config = parse(data)
    assert config.tls is not None
    assert (config.tls.require_client_cert, config.tls.min_version,
            config.tls.handshake_timeout) == (False, "1.3", 3.0)
    assert config.routes[0].tls_only
    assert config.archives["site_a"].tls_server_name == "pacs-a.example.org"
    assert config.destinations["ws1"].tls and \
        config.destinations["ws1"].tls_server_name == "ws1.example.org"


@pytest.mark.parametrize(("change", "expected"), [
    (lambda d: d["tls"].update(cert="/nonexistent/proxy.crt"),
     "tls.cert: cannot read '/nonexistent/proxy.crt': No such file or directory"),
    (lambda d: d["tls"].update(key="/nonexistent/proxy.key"), "tls.key: cannot read"),
    (lambda d: d["tls"].update(ca="/nonexistent/ca.crt"), "tls.ca: cannot read"),
    (lambda d: d["tls"].pop("cert"), "tls.cert: is required"),
    (lambda d: d["tls"].update(min_version="1.1"),
     "tls.min_version: must be one of '1.2', '1.3', not '1.1'"),
    (lambda d: d["tls"].update(min_version=1.0), "tls.min_version: must be one of"),
    (lambda d: d["tls"].update(handshake_timeout=0), "tls.handshake_timeout: must be a positive"),
    (lambda d: d["tls"].update(verify=True), "tls.verify: unknown key"),
    (lambda d: d["tls"].pop("ca"), "tls.ca: is required with require_client_cert = true"),
    (lambda d: d.pop("tls"), "proxy.tls_port: needs a [tls] section"),
    (lambda d: d["proxy"].update(tls_port=11112), "proxy.tls_port: is the clear port (11112)"),
    (lambda d: d["proxy"].update(tls_port=70000), "proxy.tls_port: port 70000 is out of range"),
    (lambda d: (d.pop("tls"), d["proxy"].pop("tls_port"),
                d["routes"][0].update(tls_only=True)),
     "routes[0].tls_only: needs [proxy] tls_port and a [tls] section"),
    (lambda d: d["routes"][0].update(tls_only="yes"), "routes[0].tls_only: must be true or false"),
    (lambda d: (d.pop("tls"), d["proxy"].pop("tls_port"),
                d["archives"]["site_a"].update(tls=True)),
     "archives.site_a.tls: needs a [tls] section"),
    (lambda d: d["destinations"]["ws1"].update(tls_server_name="a b"),
     "destinations.ws1.tls_server_name: must be a host name"),
])
def test_mistakes_name_their_key(pki: Pki, change: Any, expected: str) -> None:
    data = copy.deepcopy(rules(pki))
    change(data)
    assert error_of(data).startswith(expected)


def test_no_ca_is_fine_without_client_certificates(pki: Pki) -> None:
    data = rules(pki, require_client_cert=False)
    del data["tls"]["ca"]
    config = parse(data)
    assert config.tls is not None and config.tls.ca is None


# -- [[routes]] certificates: calling AE titles bound to client certificate subjects --------

def test_certificate_bindings_are_parsed(pki: Pki) -> None:
    data = rules(pki)
    data["routes"][0]["certificates"] = {
        "WS1": "CN=ws1.example.org,O=Radiology",
        "WS2": ["CN=old.example.org", "cn=new.example.org,  o=Radiology"]}
    route = parse(data).routes[0]
    ws1, ws2 = route.certificate_binding("WS1"), route.certificate_binding("WS2")
    assert ws1 is not None and ws2 is not None and route.certificate_binding("WS3") is None
    assert ws1.subjects == ("CN=ws1.example.org,O=Radiology",)
    assert ws2.subjects == ("CN=old.example.org", "cn=new.example.org,  o=Radiology")
    # Attributes by OID, values case- and space-folded: both spellings name one subject.
    assert ws2.attributes[1] == frozenset({("2.5.4.3", "new.example.org"),
                                           ("2.5.4.10", "radiology")})


@pytest.mark.parametrize(("change", "expected"), [
    (lambda d: d["routes"][0].update(certificates={"WS1": "not a subject"}),
     "routes[0].certificates.WS1[0]: 'not a subject' is not a certificate subject"),
    (lambda d: d["routes"][0].update(certificates={"WS1": []}),
     "routes[0].certificates.WS1: names no certificate subject"),
    (lambda d: d["routes"][0].update(certificates={"WS1": 3}),
     "routes[0].certificates.WS1[0]: must be a string"),
    (lambda d: d["routes"][0].update(certificates=["CN=x"]),
     "routes[0].certificates: must be a table"),
    (lambda d: d["routes"][0].update(allow=["WS2"], certificates={"WS1": "CN=ws1"}),
     "routes[0].certificates.WS1: 'WS1' is not in allow of this route"),
    (lambda d: (d["tls"].update(require_client_cert=False),
                d["routes"][0].update(certificates={"WS1": "CN=ws1"})),
     "routes[0].certificates: needs [proxy] tls_port and [tls] require_client_cert = true"),
    (lambda d: (d["proxy"].pop("tls_port"), d["routes"][0].update(certificates={"WS1": "CN=a"})),
     "routes[0].certificates: needs [proxy] tls_port and [tls] require_client_cert = true"),
    (lambda d: (d.pop("tls"), d["proxy"].pop("tls_port"),
                d["routes"][0].update(certificates={"WS1": "CN=ws1"})),
     "routes[0].certificates: needs [proxy] tls_port and a [tls] section"),
])
def test_certificate_binding_mistakes_name_their_key(pki: Pki, change: Any,
                                                     expected: str) -> None:
    data = copy.deepcopy(rules(pki))
    change(data)
    assert error_of(data).startswith(expected)
