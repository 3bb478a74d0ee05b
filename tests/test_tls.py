"""proxy.tls: the server context (BCP 195), the translation of real handshake failures
into the contract's reasons, the certificates held, and doctor's certificate findings."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from proxy import tls
from proxy.config import TlsConfig
from proxy.tools.doctor import FAIL, OK, WARN, tls_findings
from tests.tls_certs import Issued, Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def config(pki: Pki, **kw: object) -> TlsConfig:
    values: dict[str, object] = {"cert": pki.proxy.cert, "key": pki.proxy.key,
                                 "ca": pki.ca.path, **kw}
    return TlsConfig(**values)  # type: ignore[arg-type]


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> BaseException | None:
    """Run one real handshake over a socket pair; the server side's error (or None)."""
    a, b = socket.socketpair()
    failure: list[BaseException] = []

    def client_side() -> None:
        try:
            with client.wrap_socket(b, server_hostname="localhost") as s:
                s.recv(1)             # TLS 1.3: the server's verdict arrives after
        except (OSError, ssl.SSLError):
            pass

    thread = threading.Thread(target=client_side)
    thread.start()
    try:
        with server.wrap_socket(a, server_side=True) as s:
            s.sendall(b"x")
    except (OSError, ssl.SSLError) as exc:
        failure.append(exc)
    thread.join(5)
    b.close()
    return failure[0] if failure else None


def client(pki: Pki, who: Issued | None, *, maximum: ssl.TLSVersion | None = None
           ) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki.ca.path))
    if who is not None:
        ctx.load_cert_chain(str(who.cert), str(who.key))
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


def test_the_server_context_follows_bcp_195(pki: Pki) -> None:
    ctx = tls.server_context(config(pki))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.options & ssl.OP_NO_COMPRESSION
    names = [c["name"] for c in ctx.get_ciphers()]
    assert names and not any(k in n for n in names for k in ("NULL", "RC4", "DES-CBC3",
                                                             "EXP", "MD5"))
    assert tls.server_context(config(pki, min_version="1.3")).minimum_version == \
        ssl.TLSVersion.TLSv1_3
    assert tls.server_context(config(pki, require_client_cert=False, ca=None)).verify_mode == \
        ssl.CERT_NONE


def test_a_good_workstation_handshakes(pki: Pki) -> None:
    assert handshake(tls.server_context(config(pki)), client(pki, pki.workstation)) is None


@pytest.mark.parametrize(("who", "reason"), [
    ("untrusted", tls.UNKNOWN_CA),
    ("expired", tls.EXPIRED),
    ("not_yet_valid", tls.NOT_YET_VALID),
    (None, tls.NO_CERTIFICATE),
])
def test_real_failures_are_named_in_the_contracts_words(pki: Pki, who: str | None,
                                                         reason: str) -> None:
    issued = getattr(pki, who) if who else None
    error = handshake(tls.server_context(config(pki)), client(pki, issued))
    assert error is not None
    said, hint = tls.explain(error, 10)
    assert said == reason, error
    assert "certificate" in hint


def test_a_workstation_refusing_the_proxys_certificate_is_told_apart(pki: Pki) -> None:
    distrustful = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)     # trusts the rogue CA only
    distrustful.load_verify_locations(cafile=str(pki.rogue_ca.path))
    distrustful.load_cert_chain(str(pki.workstation.cert), str(pki.workstation.key))
    error = handshake(tls.server_context(config(pki)), distrustful)
    assert error is not None
    reason, hint = tls.explain(error, 10)
    assert reason == tls.UNKNOWN_CA and "refused the proxy's certificate" in hint


def test_an_old_protocol_version_is_protocol(pki: Pki) -> None:
    error = handshake(tls.server_context(config(pki, min_version="1.3")),
                      client(pki, pki.workstation, maximum=ssl.TLSVersion.TLSv1_2))
    assert error is not None
    assert tls.explain(error, 10)[0] == tls.PROTOCOL


def test_timeouts_and_name_mismatch_are_named() -> None:
    stalled = ConnectionAbortedError("SSL handshake is taking longer than 2.0 seconds: "
                                     "aborting the connection")
    reason, hint = tls.explain(stalled, 2.0)
    assert reason == tls.TIMEOUT and "handshake_timeout (2s)" in hint
    assert tls.explain(TimeoutError(), 2.0)[0] == tls.TIMEOUT
    mismatch = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate "
                                               "verify failed: Hostname mismatch, certificate "
                                               "is not valid for 'x'.")
    assert tls.explain(mismatch, 2.0)[0] == tls.NAME_MISMATCH


def test_a_name_mismatch_from_a_real_handshake(pki: Pki) -> None:
    """The proxy side of a future name check: a client verifying the server's name."""
    server = tls.server_context(config(pki, cert=pki.wrong_name.cert, key=pki.wrong_name.key,
                                       require_client_cert=False))
    a, b = socket.socketpair()
    threading.Thread(target=lambda: _swallow(server, a), daemon=True).start()
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        client(pki, None).wrap_socket(b, server_hostname="localhost")
    b.close()
    assert tls.explain(info.value, 10)[0] == tls.NAME_MISMATCH


def _swallow(server: ssl.SSLContext, sock: socket.socket) -> None:
    try:
        server.wrap_socket(sock, server_side=True).close()
    except (OSError, ssl.SSLError):
        sock.close()


def test_held_certificates_and_chain(pki: Pki) -> None:
    held = tls.held_certificates(config(pki))
    assert [(h.role, h.subject) for h in held] == [
        ("proxy", pki.proxy.subject), ("ca", pki.ca.cert.subject.rfc4514_string())]
    assert held[0].not_after > time.time() + 300 * 86400
    assert tls.chain_problem(config(pki)) is None
    problem = tls.chain_problem(config(pki, cert=pki.untrusted.cert, key=pki.untrusted.key))
    assert problem is not None and "rogue test CA" in problem


def test_doctor_checks_the_proxys_certificate(pki: Pki, tmp_path: Path) -> None:
    now = time.time()
    good = tls_findings(config(pki), now)
    assert [f.severity for f in good] == [OK, OK]
    assert "chains to a CA" in good[0].message and "expires in 365 days" in good[1].message
    soon = tls_findings(config(pki), now + 340 * 86400)
    assert soon[-1].severity == WARN and "expires in 25 days" in soon[-1].message
    assert "SIGHUP" in (soon[-1].fix or "")
    gone = tls_findings(config(pki, cert=pki.expired.cert, key=pki.expired.key), now)
    assert gone[-1].severity == FAIL and "expired" in gone[-1].message
    rogue = tls_findings(config(pki, cert=pki.untrusted.cert, key=pki.untrusted.key), now)
    assert rogue[0].severity == FAIL and "does not chain" in rogue[0].message
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate")
    assert tls_findings(config(pki, cert=junk), now)[0].severity == FAIL


# -- originating TLS toward archives and destinations (client_context, Rule 5) ----------


def client_handshake(server: ssl.SSLContext, client_ctx: ssl.SSLContext,
                     name: str = "localhost") -> tuple[BaseException | None, bool]:
    """One real handshake; (the client's error or None, whether the server saw a cert)."""
    a, b = socket.socketpair()
    seen: list[bool] = []

    def server_side() -> None:
        try:
            with server.wrap_socket(a, server_side=True) as s:
                seen.append(s.getpeercert(True) is not None)
                s.sendall(b"x")
        except (OSError, ssl.SSLError):
            a.close()

    thread = threading.Thread(target=server_side, daemon=True)
    thread.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname=name) as s:
            s.recv(1)
    except (OSError, ssl.SSLError) as exc:
        return exc, bool(seen and seen[0])
    finally:
        b.close()
        thread.join(5)
    return None, bool(seen and seen[0])


def test_the_client_context_verifies_the_peer_and_presents_the_proxys_certificate(
        pki: Pki) -> None:
    ctx = tls.client_context(config(pki))
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert tls.client_context(config(pki, min_version="1.3")).minimum_version == \
        ssl.TLSVersion.TLSv1_3
    # An archive asking for a client certificate from the site CA gets the proxy's.
    archive = tls.server_context(config(pki, cert=pki.workstation.cert,
                                        key=pki.workstation.key, require_client_cert=True))
    error, presented = client_handshake(archive, ctx)
    assert error is None and presented


def test_without_a_ca_the_client_context_trusts_the_system_cas(pki: Pki) -> None:
    ctx = tls.client_context(config(pki, ca=None))
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    archive = tls.server_context(config(pki, cert=pki.workstation.cert,
                                        key=pki.workstation.key, require_client_cert=False,
                                        ca=None))
    error, _ = client_handshake(archive, ctx)         # the site test CA is no system CA
    assert error is not None and tls.explain_peer(error, "archive", "localhost", 10)[0] == \
        tls.UNKNOWN_CA


@pytest.mark.parametrize(("served", "name", "reason", "words"), [
    ("wrong_name", "localhost", tls.NAME_MISMATCH, "tls_server_name"),
    ("workstation", "pacs.elsewhere.example", tls.NAME_MISMATCH, "pacs.elsewhere.example"),
    ("untrusted", "localhost", tls.UNKNOWN_CA, "[tls] ca"),
    ("expired", "localhost", tls.EXPIRED, "renew"),
])
def test_a_refused_peer_certificate_is_named_for_the_archive_side(
        pki: Pki, served: str, name: str, reason: str, words: str) -> None:
    issued: Issued = getattr(pki, served)
    archive = tls.server_context(config(pki, cert=issued.cert, key=issued.key,
                                        require_client_cert=False))
    error, _ = client_handshake(archive, tls.client_context(config(pki)), name)
    assert error is not None
    said, hint = tls.explain_peer(error, "archive", name, 10)
    assert said == reason, error
    assert words in hint and "archive" in hint


def test_client_tls_reload_swaps_the_context_and_reports_handshakes(pki: Pki) -> None:
    heard: list[tuple[str, str, str | None, str | None, tls.PeerCertificate | None]] = []
    holder = tls.ClientTls(config(pki), lambda *a: heard.append(a))
    before = holder.context
    holder.reload()
    assert holder.context is not before
    holder.heard("destination", "127.0.0.1:104", "unknown CA", "hint")
    assert heard == [("destination", "127.0.0.1:104", "unknown CA", "hint", None)]
    der = x509.load_pem_x509_certificate(pki.proxy.cert.read_bytes())
    holder.heard("archive", "127.0.0.1:105", peer_cert=der.public_bytes(Encoding.DER))
    assert heard[-1] == ("archive", "127.0.0.1:105", None, None, tls.PeerCertificate(
        pki.proxy.subject, der.not_valid_after_utc.timestamp()))
