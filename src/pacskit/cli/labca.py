"""A small certificate authority for labs and tests (not for production PKI): what ``pacskit certs``
(:mod:`pacskit.cli.certs`) writes, and what the tests use to make bad certificates too (expired,
self-signed, from an unknown CA).

Its own module because it needs the ``cryptography`` package (the ``tls`` extra), whose import costs
~0.1 s: only ``pacskit certs`` loads it, not every ``pacskit`` command. RSA keys because every DICOM TLS
profile's suites (and DCMTK's) include RSA authentication.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "Issued", "issue_certificate", "load_ca", "load_certificate", "make_ca", "make_crl", "new_key",
    "revoked_certificates", "write_key", "write_pem",
]

_DAY = dt.timedelta(days=1)


class Issued:
    """A certificate and its private key."""

    def __init__(self, certificate: x509.Certificate, key: rsa.RSAPrivateKey) -> None:
        self.certificate = certificate
        self.key = key

    def save(self, folder: Path, stem: str) -> tuple[Path, Path]:
        """``folder/stem.pem`` and ``folder/stem.key`` (mode 0600)."""
        cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
        write_pem(cert_path, self.certificate)
        write_key(key_path, self.key)
        return cert_path, key_path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pacskit lab"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_ca(common_name: str = "pacskit lab CA", *, days: int = 3650) -> Issued:
    """A self-signed CA certificate (basic constraints CA, key usage cert + CRL signing)."""
    key = new_key()
    name = _name(common_name)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + days * _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
                          key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue_certificate(
    ca: Issued | None,
    common_name: str,
    *,
    server: bool = False,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    days: int = 825,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """A leaf certificate signed by ``ca`` (``None``: self-signed). ``server`` sets the server-auth and
    client-auth extended key usages (a server also opens associations), else client-auth only;
    ``not_before`` / ``not_after`` override the validity
    (tests make expired certificates with them)."""
    key = new_key()
    now = _now()
    start = not_before or now - _DAY
    end = not_after or now + days * _DAY
    issuer_name = ca.certificate.subject if ca is not None else _name(common_name)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True, data_encipherment=False,
                          key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(
            # A DICOM node is both: it accepts TLS and opens TLS associations (C-MOVE) with one identity.
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server
                                  else [ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    )
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if ca is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    cert = builder.sign(ca.key if ca is not None else key, hashes.SHA256())
    return Issued(cert, key)


def make_crl(ca: Issued, revoked: Sequence[x509.Certificate] = (), *, days: int = 30) -> x509.CertificateRevocationList:
    """The CA's CRL listing ``revoked``."""
    now = _now()
    builder = x509.CertificateRevocationListBuilder().issuer_name(ca.certificate.subject).last_update(now - _DAY).next_update(now + days * _DAY)
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(now - _DAY).build()
        )
    return builder.sign(ca.key, hashes.SHA256())


def write_pem(path: Path, obj: x509.Certificate | x509.CertificateRevocationList) -> None:
    path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))


def write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def load_ca(folder: Path) -> Issued:
    """The CA of ``folder`` (``ca.pem``, ``ca.key``); ``OSError`` / ``ValueError`` when it is missing or
    unreadable."""
    cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("ca.key is not an RSA private key")
    return Issued(cert, key)


def load_certificate(path: Path) -> x509.Certificate:
    """A PEM certificate; ``OSError`` / ``ValueError`` when it cannot be read."""
    return x509.load_pem_x509_certificate(path.read_bytes())


def revoked_certificates(folder: Path) -> list[x509.Certificate]:
    """The certificates recorded as revoked (``revoked/``), from which crl.pem is rebuilt."""
    return [load_certificate(path) for path in sorted((folder / "revoked").glob("*.pem"))]
