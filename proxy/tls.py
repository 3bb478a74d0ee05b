"""DICOM over TLS (PS3.15 Annex B, BCP 195 profile): the proxy's server context, what a
failed handshake means, and what the certificates it holds say.

Job: build the ``ssl.SSLContext`` the workstation-facing TLS listener hands to
``proxy.dicom.io`` (``server_context``); turn a handshake error into one of the
contract's reasons with a hint a network engineer acts on (``explain``); read the
subject and expiry of the proxy's own certificate and of its CAs (``held_certificates``);
build the context the proxy originates TLS with toward archives and destinations that
have ``tls = true`` (``client_context``, ``ClientTls``) and explain their failures
(``explain_peer``).

Rule 1: BCP 195: TLS 1.2 or newer only (``min_version`` may raise it to 1.3), no
        compression, no renegotiation, the stdlib's secure cipher list minus NULL,
        export, anonymous and RC4/3DES suites; the server's cipher order wins.
Rule 2: ``require_client_cert``: the workstation must present a certificate that chains
        to ``[tls] ca`` (``CERT_REQUIRED``); otherwise none is asked for (``CERT_NONE``).
Rule 3: a context is built whole from the files as they are now; a reload builds a new
        one (running associations keep the context they handshook with).
Rule 4: ``explain`` is pure: exception in, (reason, hint) out; the reasons are the
        contract's words: "unknown CA", "expired", "not yet valid", "name mismatch",
        "no certificate", "protocol", "timeout"; anything else is "handshake failed".
Rule 5: toward a peer the proxy verifies (``CERT_REQUIRED``, the name checked: the peer's
        ``tls_server_name``, default its host) against ``[tls] ca`` (the system's CAs when
        there is none), presents its own certificate to peers that ask for one, and
        keeps Rule 1's versions, ciphers and no compression.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from proxy.config import TlsConfig

# Annex B / BCP 195: no NULL, export, anonymous, RC4, 3DES or MD5 suites (TLS 1.2 list;
# TLS 1.3 suites are all acceptable and not set through this string).
CIPHERS = "HIGH:!aNULL:!eNULL:!EXPORT:!RC4:!3DES:!MD5:!PSK:!SRP:!DSS"
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

UNKNOWN_CA = "unknown CA"
EXPIRED = "expired"
NOT_YET_VALID = "not yet valid"
NAME_MISMATCH = "name mismatch"
NO_CERTIFICATE = "no certificate"
PROTOCOL = "protocol"
TIMEOUT = "timeout"
OTHER = "handshake failed"


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """The listener's context (Rules 1-3); raises OSError/ssl.SSLError on unusable files."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[tls.min_version]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    ctx.set_ciphers(CIPHERS)
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    if tls.ca is not None:
        ctx.load_verify_locations(cafile=str(tls.ca))
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_NONE
    return ctx


def client_context(tls: TlsConfig) -> ssl.SSLContext:
    """The context toward archives and destinations (Rules 1, 3, 5)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)     # CERT_REQUIRED, check_hostname
    ctx.minimum_version = _VERSIONS[tls.min_version]
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    ctx.set_ciphers(CIPHERS)
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    if tls.ca is not None:
        ctx.load_verify_locations(cafile=str(tls.ca))
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return ctx


# (side, peer "host:port", reason and hint (None: it succeeded), peer certificate
# subject) of one handshake.
HandshakeHook = Callable[[str, str, str | None, str | None, "PeerCertificate | None"], None]


class ClientTls:
    """The proxy's client context, swapped whole by ``reload`` (SIGHUP, Rule 3), and who
    hears each handshake toward a peer (``on_handshake``; the caller logs and counts)."""

    def __init__(self, config: TlsConfig, on_handshake: HandshakeHook | None = None) -> None:
        self.config = config
        self.context = client_context(config)
        self.on_handshake = on_handshake

    def reload(self) -> None:
        """Re-read the files; raises OSError/ssl.SSLError and keeps the old context then."""
        self.context = client_context(self.config)

    def heard(self, side: str, peer: str, reason: str | None = None, hint: str | None = None,
              peer_cert: bytes | None = None) -> None:
        if self.on_handshake is not None:
            self.on_handshake(side, peer, reason, hint, peer_certificate(peer_cert))


_PEER_HINTS = {
    UNKNOWN_CA: "the {side}'s certificate is not signed by a CA in [tls] ca (or the {side} "
                "refused the proxy's certificate): add the CA that issued it to [tls] ca, or "
                "the proxy's CA to the {side}'s trusted certificates",
    EXPIRED: "a certificate in the handshake has expired (the {side}'s, or the proxy's as "
             "the {side} saw it): renew it",
    NOT_YET_VALID: "the {side}'s certificate is not valid yet: check the clocks of the "
                   "{side} and the proxy, or the certificate's start date",
    NAME_MISMATCH: "the {side}'s certificate does not carry {name}: set tls_server_name to a "
                   "name in its subjectAltName, or issue it a certificate for {name}",
    NO_CERTIFICATE: "the {side} wants a client certificate the proxy did not present: check "
                    "[tls] cert and key",
    PROTOCOL: "the {side} offered no TLS version or cipher the proxy accepts (TLS 1.2 or "
              "newer, BCP 195 ciphers), or does not speak TLS on that port: check its TLS "
              "settings, or set tls = false for a clear DICOM port",
    TIMEOUT: "the {side} did not finish the TLS handshake in time: is TLS enabled on that "
             "port? (a clear DICOM port waits for an association request)",
}


def explain_peer(error: BaseException, side: str, name: str,
                 timeout: float) -> tuple[str, str]:
    """(reason, hint) for a failed handshake toward an archive or destination (Rule 4);
    ``name`` is the name its certificate had to carry."""
    reason, _hint = explain(error, timeout)
    if reason in _PEER_HINTS:
        return reason, _PEER_HINTS[reason].format(side=side, name=name)
    return reason, f"the TLS handshake with the {side} failed ({error}); check its TLS settings"


def explain(error: BaseException, handshake_timeout: float) -> tuple[str, str]:
    """(reason, hint) for a failed workstation handshake (Rule 4)."""
    said = str(error).lower()
    if isinstance(error, TimeoutError) or "taking longer than" in said or "timed out" in said:
        return TIMEOUT, (f"the peer did not finish the TLS handshake within handshake_timeout "
                         f"({handshake_timeout:g}s): a client speaking clear DICOM to the TLS "
                         "port, a port scan, or a network dropping packets; clear DICOM goes "
                         "to the proxy's clear port")
    text = f"{getattr(error, 'reason', '') or ''} {getattr(error, 'verify_message', '') or ''} " \
           f"{error}".lower()
    if "alert" in text and any(k in text for k in ("unknown ca", "unknown_ca", "bad certificate",
                                                   "bad_certificate", "certificate expired",
                                                   "certificate_expired")):
        # The workstation's TLS alert: it refused the proxy's certificate, not vice versa.
        reason = EXPIRED if "expired" in text else UNKNOWN_CA
        return reason, ("the workstation refused the proxy's certificate ([tls] cert): add the "
                        "CA that issued it to the workstation's trusted CAs (DCMTK: +cf CA), "
                        "or renew it if it expired")
    if "expired" in text:
        return EXPIRED, ("the workstation's certificate has expired: issue it a new one "
                         "from the CA in [tls] ca")
    if "not yet valid" in text:
        return NOT_YET_VALID, ("the workstation's certificate is not valid yet: check the "
                               "clocks of the workstation and the proxy, or the certificate's "
                               "start date")
    if "hostname mismatch" in text or "name mismatch" in text or "ip address mismatch" in text:
        return NAME_MISMATCH, ("the certificate does not carry the name it is reached by: "
                               "issue one with that name in its subjectAltName")
    if any(k in text for k in ("unknown ca", "unable to get local issuer",
                               "self-signed certificate", "self signed certificate",
                               "certificate verify failed", "unable to get issuer")):
        return UNKNOWN_CA, ("the workstation's certificate is not signed by a CA in [tls] ca: "
                            "add its CA certificate to that file, or issue it a certificate "
                            "from that CA")
    if "peer did not return a certificate" in text or "certificate required" in text \
            or "no certificate" in text:
        return NO_CERTIFICATE, ("the workstation presented no certificate and [tls] "
                                "require_client_cert = true: configure its TLS certificate "
                                "and key (DCMTK: +tls KEY CERT)")
    if any(k in text for k in ("version", "unsupported protocol", "unsupported_protocol",
                               "no protocols available", "no shared cipher",
                               "wrong_version_number", "wrong version number",
                               "http request", "unknown protocol")):
        return PROTOCOL, ("the peer offered no TLS version or cipher the proxy accepts (TLS "
                          "1.2 or newer, BCP 195 ciphers), or did not speak TLS at all: "
                          "enable TLS 1.2+ on the workstation, or point clear DICOM at the "
                          "clear port")
    if isinstance(error, ConnectionError) or "eof" in text:
        return OTHER, ("the peer closed the connection during the TLS handshake: a port probe "
                       "or health check, or a workstation that gave up (see its TLS log)")
    return OTHER, f"the TLS handshake failed ({error}); check the workstation's TLS settings"


@dataclass(frozen=True)
class HeldCertificate:
    role: str                 # "proxy" (its own certificate) or "ca"
    subject: str
    not_before: float         # unix seconds
    not_after: float          # unix seconds


def _load_all(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def held_certificates(tls: TlsConfig) -> list[HeldCertificate]:
    """The proxy's own certificate (the first of ``cert``) and every CA in ``ca``."""
    out = []
    for role, path in (("proxy", tls.cert), ("ca", tls.ca)):
        if path is None:
            continue
        certs = _load_all(path)
        for cert in certs[:1] if role == "proxy" else certs:
            out.append(HeldCertificate(role, cert.subject.rfc4514_string(),
                                       cert.not_valid_before_utc.timestamp(),
                                       cert.not_valid_after_utc.timestamp()))
    return out


def chain_problem(tls: TlsConfig) -> str | None:
    """Why the proxy's own certificate does not chain to a CA in ``ca`` (None: it does).
    The intermediates after it in ``cert`` are followed; each signature is checked."""
    if tls.ca is None:
        return None
    own = _load_all(tls.cert)
    cas = _load_all(tls.ca)
    current, intermediates = own[0], own[1:]
    for _ in range(8):
        if any(_issued_by(current, ca) for ca in cas):
            return None
        parent = next((c for c in intermediates if _issued_by(current, c)), None)
        if parent is None:
            return (f"its issuer {current.issuer.rfc4514_string()} is not in the CA file "
                    "(nor an intermediate after it in the cert file)")
        current = parent
    return "the chain is longer than 8 certificates"


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclass(frozen=True)
class PeerCertificate:
    """What a peer's certificate says (``getpeercert(True)``, verified by the handshake)."""

    subject: str              # RFC 4514
    not_after: float          # unix seconds


def peer_certificate(der: bytes | None) -> PeerCertificate | None:
    """The subject and expiry of a peer certificate (DER, as ``getpeercert(True)`` gives)."""
    if not der:
        return None
    try:
        cert = x509.load_der_x509_certificate(der)
        return PeerCertificate(cert.subject.rfc4514_string(),
                               cert.not_valid_after_utc.timestamp())
    except ValueError:
        return None


def peer_subject(der: bytes | None) -> str | None:
    """The RFC 4514 subject of a peer certificate (DER, as ``getpeercert(True)`` gives it)."""
    seen = peer_certificate(der)
    return seen.subject if seen is not None else None
