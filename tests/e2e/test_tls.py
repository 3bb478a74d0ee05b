"""DICOM over TLS on the workstation side, with REAL DCMTK tools (``+tls KEY CERT +cf CA``)
through the proxy to a plain-DICOM Orthanc.

Each refusal is checked as the user sees it (the DCMTK tool's exit status and message)
and as the operator sees it (one ``tls_failed`` or ``association_rejected`` line, and
``dicom_proxy_tls_handshakes_total``). Certificates are made per module
(``tests.tls_certs``): a CA, the proxy's, a workstation's, an expired one, one from an
untrusted CA. Synchronisation is by log lines and sockets, never by sleeping.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.e2e.data import SyntheticSet
from tests.e2e.dcmtk import echoscu, findscu
from tests.e2e.orthanc import OrthancArchive
from tests.e2e.ports import LOOPBACK
from tests.e2e.proxy_harness import ProxyProcess, archive_entry
from tests.tls_certs import Issued, Pki, make_pki

ProxyFactory = Callable[..., ProxyProcess]
HANDSHAKE_TIMEOUT = 3.0
HANDSHAKES = "dicom_proxy_tls_handshakes_total"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def archive(synthetic_studies: SyntheticSet) -> Iterator[OrthancArchive]:
    with OrthancArchive("PACS_TLS") as pacs:
        pacs.upload(synthetic_studies.paths)
        yield pacs


def rules(archive: OrthancArchive, pki: Pki, cert_dir: Path | None = None) -> dict[str, Any]:
    cert = (cert_dir or pki.proxy.cert.parent)
    return {
        "proxy": {"tls_port": 0},
        "tls": {"cert": str(cert / pki.proxy.cert.name), "key": str(cert / pki.proxy.key.name),
                "ca": str(pki.ca.path), "handshake_timeout": HANDSHAKE_TIMEOUT},
        "archives": {"pacs": archive_entry(archive)},
        "routes": [{"called_ae": "RELAY", "archives": ["pacs"]},
                   {"called_ae": "SECURE", "archives": ["pacs"], "tls_only": True},
                   {"called_ae": "BOUND", "archives": ["pacs"],
                    "certificates": {"WS1": pki.workstation.subject}}],
    }


@pytest.fixture
def proxy(archive: OrthancArchive, pki: Pki, proxy_factory: ProxyFactory) -> ProxyProcess:
    started = proxy_factory(rules(archive, pki))
    assert started.tls_port and started.tls_port != started.port
    return started


def tls_args(pki: Pki, who: Issued | None) -> list[str]:
    """DCMTK options: our certificate (``+tls``) or none (``+tla``), trusting the site CA."""
    mine = ["+tls", str(who.key), str(who.cert)] if who else ["+tla"]
    return [*mine, "+cf", str(pki.ca.path)]


def test_echo_and_find_over_tls_answer_as_the_archive_does(
        proxy: ProxyProcess, archive: OrthancArchive, pki: Pki,
        synthetic_studies: SyntheticSet) -> None:
    secure = tls_args(pki, pki.workstation)
    assert echoscu(LOOPBACK, proxy.tls_port, "SECURE", "WS_TLS", tls=secure).ok
    keys = ["StudyInstanceUID", "PatientID", "StudyDate", "AccessionNumber"]
    direct = findscu(LOOPBACK, archive.dicom_port, archive.aet, "WS_TLS", keys=keys)
    through = findscu(LOOPBACK, proxy.tls_port, "SECURE", "WS_TLS", keys=keys, tls=secure)
    assert direct.ok and through.ok, through.output[-2000:]
    assert len(direct.identifiers) == len(synthetic_studies.studies)
    for keyword in keys:
        assert sorted(through.values(keyword)) == sorted(direct.values(keyword))
    accepted = proxy.wait_event("association_accepted", lambda e: e["called_ae"] == "SECURE")
    assert accepted["tls"] is True
    assert accepted["client_certificate"] == pki.workstation.subject
    # The workstation's certificate, as the handshake verified it, is exported with its expiry.
    expires = x509.load_pem_x509_certificate(pki.workstation.cert.read_bytes())
    assert proxy.metric("dicom_proxy_tls_certificate_expiry_seconds", role="workstation",
                        subject=pki.workstation.subject) == \
        expires.not_valid_after_utc.timestamp()
    assert proxy.metric(HANDSHAKES, side="workstation", result="ok") >= 2
    assert proxy.metric(HANDSHAKES, side="workstation", result="failed") == 0
    # A route without tls_only answers on both ports.
    assert echoscu(LOOPBACK, proxy.tls_port, "RELAY", "WS_TLS", tls=secure).ok
    assert echoscu(LOOPBACK, proxy.port, "RELAY", "WS_CLEAR").ok


def test_a_clear_association_to_a_tls_only_route_is_rejected(proxy: ProxyProcess) -> None:
    result = echoscu(LOOPBACK, proxy.port, "SECURE", "WS_CLEAR")
    assert result.returncode != 0 and result.association_rejected
    assert result.rejection_reason is not None and \
        "Called AE Title Not Recognized" in result.rejection_reason
    line = proxy.wait_event("association_rejected", lambda e: e["calling_ae"] == "WS_CLEAR")
    assert line["reason"] == "route SECURE accepts TLS only"
    assert f"TLS port {proxy.tls_port}" in line["hint"] and "+tls" in line["hint"]
    assert proxy.metric(HANDSHAKES, side="workstation", result="ok") == 0


@pytest.mark.parametrize(("who", "reason", "words"), [
    (None, "no certificate", "require_client_cert"),
    ("untrusted", "unknown CA", "[tls] ca"),
    ("expired", "expired", "new one"),
])
def test_a_refused_workstation_certificate(proxy: ProxyProcess, pki: Pki, who: str | None,
                                           reason: str, words: str) -> None:
    issued = getattr(pki, who) if who else None
    result = echoscu(LOOPBACK, proxy.tls_port, "SECURE", "WS_BAD", tls=tls_args(pki, issued),
                     timeout=15)
    assert result.returncode != 0 and not result.ok
    assert "Association Request Failed" in result.output and "TLS" in result.output, \
        result.output[-1500:]
    line = proxy.wait_event("tls_failed")
    assert (line["side"], line["reason"]) == ("workstation", reason)
    assert line["peer"].startswith(f"{LOOPBACK}:") and words in line["hint"]
    assert line["level"] == "warning"
    assert len(proxy.events("tls_failed")) == 1
    assert proxy.metric(HANDSHAKES, side="workstation", result="failed") == 1
    assert not proxy.events("association_accepted")


# -- a calling AE title bound to its client certificate (routing Rule 7) ---------------------

SECURITY = "dicom_proxy_security_events_total"


def test_a_bound_title_gets_in_with_its_own_certificate(proxy: ProxyProcess, pki: Pki,
                                                        archive: OrthancArchive) -> None:
    mine = tls_args(pki, pki.workstation)
    keys = ["StudyInstanceUID", "PatientID"]
    through = findscu(LOOPBACK, proxy.tls_port, "BOUND", "WS1", keys=keys, tls=mine)
    direct = findscu(LOOPBACK, archive.dicom_port, archive.aet, "WS1", keys=keys)
    assert through.ok and direct.ok, through.output[-2000:]
    assert sorted(through.values("StudyInstanceUID")) == \
        sorted(direct.values("StudyInstanceUID"))
    # A title without a binding on the route: ``allow`` (absent: any) decides alone.
    assert echoscu(LOOPBACK, proxy.tls_port, "BOUND", "WS9",
                   tls=tls_args(pki, pki.wrong_name)).ok
    assert echoscu(LOOPBACK, proxy.port, "BOUND", "WS9").ok
    assert not proxy.events("association_rejected")
    assert proxy.metric(SECURITY, kind="certificate") == 0


@pytest.mark.parametrize("how", ["another certificate", "clear port"])
def test_a_bound_title_with_another_identity_is_not_recognised(
        proxy: ProxyProcess, pki: Pki, archive: OrthancArchive, how: str) -> None:
    before = len(archive.calling_aets())
    if how == "clear port":
        result = echoscu(LOOPBACK, proxy.port, "BOUND", "WS1")
        showed = "this association showed none"
    else:            # a certificate the site CA issued, to someone else
        result = echoscu(LOOPBACK, proxy.tls_port, "BOUND", "WS1",
                         tls=tls_args(pki, pki.wrong_name))
        showed = f"this association showed {pki.wrong_name.subject}"
    # The user: refused, permanently, as an unknown calling AE title.
    assert result.association_rejected, result.output[-2000:]
    assert result.rejection_reason == "Calling AE Title Not Recognized"
    # The operator: which certificate the title is bound to, what it showed, what to do.
    line = proxy.wait_event("association_rejected", lambda e: e["calling_ae"] == "WS1")
    assert line["reason"] == (f"calling AE title 'WS1' is bound to a client certificate on "
                              f"route 'BOUND' ({pki.workstation.subject}) and {showed}")
    assert line["security"] == "certificate" and line["severity"] == "warning"
    assert proxy.metric(SECURITY, kind="certificate") == 1
    assert len(archive.calling_aets()) == before             # nothing went upstream


def test_a_silent_peer_is_dropped_after_handshake_timeout_and_delays_no_one(
        proxy: ProxyProcess, pki: Pki) -> None:
    silent = socket.create_connection((LOOPBACK, proxy.tls_port), timeout=30)
    started = time.monotonic()
    peer = f"{LOOPBACK}:{silent.getsockname()[1]}"
    meanwhile = echoscu(LOOPBACK, proxy.tls_port, "SECURE", "WS_MEANWHILE",
                        tls=tls_args(pki, pki.workstation))
    assert meanwhile.ok and time.monotonic() - started < HANDSHAKE_TIMEOUT
    assert silent.recv(1) == b""                  # the proxy closed it
    elapsed = time.monotonic() - started
    silent.close()
    assert HANDSHAKE_TIMEOUT * 0.9 <= elapsed < HANDSHAKE_TIMEOUT + 5
    line = proxy.wait_event("tls_failed")
    assert (line["peer"], line["reason"]) == (peer, "timeout")
    assert "handshake_timeout (3s)" in line["hint"]
    assert proxy.metric(HANDSHAKES, side="workstation", result="failed") == 1
    assert proxy.metric(HANDSHAKES, side="workstation", result="ok") == 1


def test_certificate_expiry_is_exported(proxy: ProxyProcess, pki: Pki) -> None:
    expiry = pki.ca.cert.not_valid_after_utc.timestamp()
    assert proxy.metric("dicom_proxy_tls_certificate_expiry_seconds", role="ca") == expiry
    own = proxy.metric("dicom_proxy_tls_certificate_expiry_seconds", role="proxy",
                       subject=pki.proxy.subject)
    assert 360 * 86400 < own - time.time() < 366 * 86400


def test_sighup_reloads_the_certificate_without_dropping_associations(
        archive: OrthancArchive, pki: Pki, proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    for path in (pki.proxy.cert, pki.proxy.key):
        shutil.copy(path, live / path.name)
    proxy = proxy_factory(rules(archive, pki, live))
    running = _tls_association(proxy, pki)
    assert running.is_established
    renewed = pki.ca.issue("proxy-renewed", "dicom-proxy renewed", days=(-1, 90))
    os.replace(renewed.cert, live / pki.proxy.cert.name)
    os.replace(renewed.key, live / pki.proxy.key.name)
    assert proxy.proc is not None
    proxy.proc.send_signal(signal.SIGHUP)
    proxy.wait_event("tls_reloaded")
    assert _served_subject(proxy, pki) == "dicom-proxy renewed"   # new handshakes
    status = running.send_c_echo()                                # the old one still works
    assert status.Status == 0x0000
    running.release()
    assert echoscu(LOOPBACK, proxy.tls_port, "SECURE", "WS_AFTER",
                   tls=tls_args(pki, pki.workstation)).ok
    own = proxy.metric("dicom_proxy_tls_certificate_expiry_seconds", role="proxy",
                       subject=renewed.subject)
    assert 85 * 86400 < own - time.time() < 91 * 86400
    assert not proxy.events("association_aborted")


def _client_context(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki.ca.path))
    ctx.load_cert_chain(str(pki.workstation.cert), str(pki.workstation.key))
    return ctx


def _tls_association(proxy: ProxyProcess, pki: Pki) -> Any:
    ae = AE(ae_title="WS_RUNNING")
    ae.add_requested_context(Verification)
    return ae.associate(LOOPBACK, proxy.tls_port, ae_title="SECURE",
                        tls_args=(_client_context(pki), "localhost"))


def _served_subject(proxy: ProxyProcess, pki: Pki) -> str:
    """The common name of the certificate a new TLS connection is shown."""
    with socket.create_connection((LOOPBACK, proxy.tls_port), timeout=10) as raw, \
            _client_context(pki).wrap_socket(raw, server_hostname="localhost") as s:
        cert = s.getpeercert() or {}
    names = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    return str(names[0])
