"""``pacskit certs``: a small certificate authority for labs and tests (not for production PKI).

``pacskit certs init DIR`` writes, into DIR:

- ``ca.pem`` / ``ca.key``: a self-signed CA (RSA 2048, SHA-256);
- ``server.pem`` / ``server.key``: the server's certificate, with the host names and IP addresses of
  ``--name`` / ``--ip`` as subject alternative names (TLS clients check those);
- ``<client>.pem`` / ``<client>.key`` for each ``--client NAME``: client certificates whose subject CN
  is NAME (what the AE registry's ``tls_subject`` compares);
- ``crl.pem``: the CA's certificate revocation list (empty at first).

``pacskit certs client DIR NAME`` issues one more client certificate; ``pacskit certs revoke DIR
FILE.pem`` adds a certificate to ``crl.pem``. Keys are written unencrypted with mode 0600. RSA keys
because every DICOM TLS profile's suites (and DCMTK's) include RSA authentication.

The functions below are what the command uses; the tests use them to make the bad certificates too
(expired, self-signed, from an unknown CA).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Optional

import typer

try:  # the `tls` extra; without it the commands say how to install it
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError:  # pragma: no cover - exercised only without the extra
    HAVE_CRYPTOGRAPHY = False
else:
    HAVE_CRYPTOGRAPHY = True

__all__ = ["Issued", "issue_certificate", "make_ca", "make_crl", "write_key", "write_pem"]

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


def _load_ca(folder: Path) -> Issued:
    try:
        cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"no usable CA in {folder} (ca.pem, ca.key): {exc}") from None
    assert isinstance(key, rsa.RSAPrivateKey)
    return Issued(cert, key)


def _revoked(folder: Path) -> list[x509.Certificate]:
    """The certificates recorded as revoked (``revoked/``), from which crl.pem is rebuilt."""
    out = []
    for path in sorted((folder / "revoked").glob("*.pem")):
        out.append(x509.load_pem_x509_certificate(path.read_bytes()))
    return out


# ---------------------------------------------------------------------- commands

certs_app = typer.Typer(help="A small CA with server and client certificates for labs (pacskit certs init DIR).", no_args_is_help=True)

_STEM_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def _stem(name: str) -> str:
    if not name or not set(name) <= _STEM_OK or name.startswith("."):
        raise typer.BadParameter(f"{name!r}: use letters, digits, '-', '_' and '.' (it names the files)")
    return name


def _need_cryptography() -> None:
    if not HAVE_CRYPTOGRAPHY:
        typer.echo("error: pacskit certs needs the cryptography package: pip install 'pacskit[tls]'", err=True)
        raise typer.Exit(2)


@certs_app.command("init")
def init(
    folder: Annotated[Path, typer.Argument(help="where to write the CA, server and client files")],
    name: Annotated[Optional[list[str]], typer.Option("--name", help="server host name (SAN; repeatable) [localhost]")] = None,
    ip: Annotated[Optional[list[str]], typer.Option("--ip", help="server IP address (SAN; repeatable) [127.0.0.1]")] = None,
    client: Annotated[Optional[list[str]], typer.Option("--client", help="a client certificate with this CN (repeatable)")] = None,
    days: Annotated[int, typer.Option(help="validity of the leaf certificates in days")] = 825,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing CA")] = False,
) -> None:
    """Make a CA, a server certificate, client certificates and an empty CRL."""
    _need_cryptography()
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "ca.key").exists() and not force:
        typer.echo(f"error: {folder / 'ca.key'} exists (use --force to replace the CA)", err=True)
        raise typer.Exit(2)
    names = name or ["localhost"]
    ips = ip or ["127.0.0.1"]
    try:
        for value in ips:
            ipaddress.ip_address(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    clients = [_stem(c) for c in client or []]
    ca = make_ca()
    ca.save(folder, "ca")
    issue_certificate(ca, names[0], server=True, dns_names=names, ip_addresses=ips, days=days).save(folder, "server")
    for cn in clients:
        issue_certificate(ca, cn, days=days).save(folder, cn)
    write_pem(folder / "crl.pem", make_crl(ca))
    typer.echo(f"CA, server certificate ({', '.join(names + ips)}), {len(clients)} client certificate(s) and crl.pem in {folder}")


@certs_app.command("client")
def client_cert(
    folder: Annotated[Path, typer.Argument(help="the folder of `pacskit certs init`")],
    cn: Annotated[str, typer.Argument(help="the subject CN (compare with the AE registry's tls_subject)")],
    days: Annotated[int, typer.Option(help="validity in days")] = 825,
) -> None:
    """Issue one more client certificate from the lab CA."""
    _need_cryptography()
    ca = _load_ca(folder)
    cert_path, key_path = issue_certificate(ca, cn, days=days).save(folder, _stem(cn))
    typer.echo(f"wrote {cert_path} and {key_path}")


@certs_app.command("revoke")
def revoke(
    folder: Annotated[Path, typer.Argument(help="the folder of `pacskit certs init`")],
    certificate: Annotated[Path, typer.Argument(help="the certificate (PEM) to revoke")],
) -> None:
    """Revoke a certificate: it is added to crl.pem (restart the server to load the new CRL)."""
    _need_cryptography()
    ca = _load_ca(folder)
    try:
        cert = x509.load_pem_x509_certificate(certificate.read_bytes())
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"{certificate}: {exc}") from None
    if cert.issuer != ca.certificate.subject:
        raise typer.BadParameter(f"{certificate} was not issued by this CA")
    (folder / "revoked").mkdir(exist_ok=True)
    write_pem(folder / "revoked" / f"{cert.serial_number:x}.pem", cert)
    revoked = _revoked(folder)
    write_pem(folder / "crl.pem", make_crl(ca, revoked))
    typer.echo(f"revoked serial {cert.serial_number:x}; crl.pem lists {len(revoked)} certificate(s)")
