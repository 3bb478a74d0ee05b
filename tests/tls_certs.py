"""Certificates for the TLS tests, made with ``cryptography``: a CA, the proxy's
certificate, workstation certificates (good, expired, not yet valid, from an untrusted
CA, for the wrong name). RSA keys: DCMTK's default BCP 195 profile offers ECDHE_RSA and
DHE_RSA suites for TLS 1.2. PEM files in a directory; nothing is shared between tests."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DAY = datetime.timedelta(days=1)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dicom-proxy tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path
    subject: str


class Authority:
    """A CA that writes itself and the certificates it issues into ``directory``."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.key = rsa.generate_private_key(65537, 2048)
        now = datetime.datetime.now(datetime.UTC)
        self.subject = _name(f"{name} test CA")
        self.cert = (x509.CertificateBuilder().subject_name(self.subject)
                     .issuer_name(self.subject).public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number())
                     .not_valid_before(now - DAY).not_valid_after(now + 3650 * DAY)
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                                  False, False), True)
                     .sign(self.key, hashes.SHA256()))
        self.path = directory / f"{name}-ca.crt"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, cn: str, *, days: tuple[float, float] = (-1, 365),
              dns: tuple[str, ...] = ("localhost",),
              ips: tuple[str, ...] = ("127.0.0.1",)) -> Issued:
        """A leaf certificate valid from now+days[0] to now+days[1] (days may be < 0)."""
        key = rsa.generate_private_key(65537, 2048)
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = (x509.CertificateBuilder().subject_name(_name(cn))
                   .issuer_name(self.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now + days[0] * DAY).not_valid_after(now + days[1] * DAY)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                         ExtendedKeyUsageOID.CLIENT_AUTH]),
                                  False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path = self.directory / f"{name}.crt"
        key_path = self.directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.TraditionalOpenSSL,
                                               serialization.NoEncryption()))
        return Issued(cert_path, key_path, cert.subject.rfc4514_string())


@dataclass(frozen=True)
class Pki:
    ca: Authority
    proxy: Issued
    workstation: Issued
    expired: Issued
    not_yet_valid: Issued
    untrusted: Issued
    wrong_name: Issued
    rogue_ca: Authority


def make_pki(directory: Path) -> Pki:
    ca = Authority(directory, "site")
    rogue = Authority(directory, "rogue")
    return Pki(
        ca=ca,
        proxy=ca.issue("proxy", "dicom-proxy"),
        workstation=ca.issue("ws1", "WS1 workstation"),
        expired=ca.issue("expired", "WS expired", days=(-30, -1)),
        not_yet_valid=ca.issue("future", "WS future", days=(10, 40)),
        untrusted=rogue.issue("untrusted", "WS untrusted"),
        wrong_name=ca.issue("wrong-name", "pacs.elsewhere.example", dns=("pacs.elsewhere.example",),
                            ips=()),
        rogue_ca=rogue,
    )
