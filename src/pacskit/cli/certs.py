"""``pacskit certs``: a small certificate authority for labs and tests (not for production PKI).

``pacskit certs init DIR`` writes, into DIR:

- ``ca.pem`` / ``ca.key``: a self-signed CA (RSA 2048, SHA-256);
- ``server.pem`` / ``server.key``: the server's certificate, with the host names and IP addresses of
  ``--name`` / ``--ip`` as subject alternative names (TLS clients check those);
- ``<client>.pem`` / ``<client>.key`` for each ``--client NAME``: client certificates whose subject CN
  is NAME (what the AE registry's ``tls_subject`` compares);
- ``crl.pem``: the CA's certificate revocation list (empty at first).

``pacskit certs client DIR NAME`` issues one more client certificate; ``pacskit certs revoke DIR
FILE.pem`` adds a certificate to ``crl.pem``. Keys are written unencrypted with mode 0600.

The certificate functions are in :mod:`pacskit.cli.labca` (re-exported here, loaded on first use):
they need ``cryptography``, which only these commands import, so that every other ``pacskit`` command
starts without it.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from types import ModuleType

    from pacskit.cli.labca import (
        Issued,
        issue_certificate,
        make_ca,
        make_crl,
        new_key,
        write_key,
        write_pem,
    )

__all__ = ["Issued", "issue_certificate", "make_ca", "make_crl", "new_key", "write_key", "write_pem"]

_LABCA = frozenset({"Issued", "issue_certificate", "load_ca", "make_ca", "make_crl", "new_key", "revoked_certificates",
                    "write_key", "write_pem"})


def __getattr__(name: str) -> object:
    """The names of :mod:`pacskit.cli.labca`, imported (with ``cryptography``) on first use (PEP 562)."""
    if name not in _LABCA:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from pacskit.cli import labca

    return getattr(labca, name)


certs_app = typer.Typer(help="A small CA with server and client certificates for labs (pacskit certs init DIR).", no_args_is_help=True)

_STEM_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def _stem(name: str) -> str:
    if not name or not set(name) <= _STEM_OK or name.startswith("."):
        raise typer.BadParameter(f"{name!r}: use letters, digits, '-', '_' and '.' (it names the files)")
    return name


def _labca() -> ModuleType:
    """:mod:`pacskit.cli.labca`, or exit 2 saying what to install when ``cryptography`` is missing."""
    try:
        from pacskit.cli import labca
    except ImportError:
        typer.echo("error: pacskit certs needs the cryptography package: pip install 'pacskit[tls]'", err=True)
        raise typer.Exit(2) from None
    return labca


def _load_ca(folder: Path) -> Issued:
    try:
        ca: Issued = _labca().load_ca(folder)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"no usable CA in {folder} (ca.pem, ca.key): {exc}") from None
    return ca


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
    lab = _labca()
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
    ca = lab.make_ca()
    ca.save(folder, "ca")
    lab.issue_certificate(ca, names[0], server=True, dns_names=names, ip_addresses=ips, days=days).save(folder, "server")
    for cn in clients:
        lab.issue_certificate(ca, cn, days=days).save(folder, cn)
    lab.write_pem(folder / "crl.pem", lab.make_crl(ca))
    typer.echo(f"CA, server certificate ({', '.join(names + ips)}), {len(clients)} client certificate(s) and crl.pem in {folder}")


@certs_app.command("client")
def client_cert(
    folder: Annotated[Path, typer.Argument(help="the folder of `pacskit certs init`")],
    cn: Annotated[str, typer.Argument(help="the subject CN (compare with the AE registry's tls_subject)")],
    days: Annotated[int, typer.Option(help="validity in days")] = 825,
) -> None:
    """Issue one more client certificate from the lab CA."""
    lab = _labca()
    ca = _load_ca(folder)
    cert_path, key_path = lab.issue_certificate(ca, cn, days=days).save(folder, _stem(cn))
    typer.echo(f"wrote {cert_path} and {key_path}")


@certs_app.command("revoke")
def revoke(
    folder: Annotated[Path, typer.Argument(help="the folder of `pacskit certs init`")],
    certificate: Annotated[Path, typer.Argument(help="the certificate (PEM) to revoke")],
) -> None:
    """Revoke a certificate: it is added to crl.pem (restart the server to load the new CRL)."""
    lab = _labca()
    ca = _load_ca(folder)
    try:
        cert = lab.load_certificate(certificate)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"{certificate}: {exc}") from None
    if cert.issuer != ca.certificate.subject:
        raise typer.BadParameter(f"{certificate} was not issued by this CA")
    (folder / "revoked").mkdir(exist_ok=True)
    lab.write_pem(folder / "revoked" / f"{cert.serial_number:x}.pem", cert)
    revoked = lab.revoked_certificates(folder)
    lab.write_pem(folder / "crl.pem", lab.make_crl(ca, revoked))
    typer.echo(f"revoked serial {cert.serial_number:x}; crl.pem lists {len(revoked)} certificate(s)")
