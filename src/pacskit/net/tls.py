"""TLS plumbing: the PS3.15 Annex B secure transport profiles as :class:`ssl.SSLContext` builders.

The engine itself only takes an ``ssl.SSLContext`` (:class:`~pacskit.net.Acceptor`'s ``ssl``,
:func:`~pacskit.net.connect`'s ``ssl``); this module makes contexts that follow a DICOM profile, for
the server's TLS add-in (:mod:`pacskit.addins.tls`) and for the client SCUs and CLI alike.

Profiles (``PROFILES``), by the names DCMTK uses where it has one:

===================  =========================================================  ==================
name                 PS3.15 profile                                             protocol versions
===================  =========================================================  ==================
``bcp195-nd``        B.10 Non-downgrading BCP 195 (the default)                 TLS 1.2, 1.3
``bcp195``           B.9 BCP 195 (fallback to 1.0/1.1 where OpenSSL allows it)  TLS 1.0 - 1.3
``bcp195-rfc8996``   B.12 BCP 195 RFC 8996 / 9325                               TLS 1.2, 1.3
``bcp195-ex``        B.11 Extended BCP 195 (ECDHE + AES-GCM only)               TLS 1.2, 1.3
``aes``              B.3 AES TLS (retired; AES-CBC with RSA key exchange)       TLS 1.0 - 1.2
``basic``            B.1 Basic TLS (retired; 3DES), only if OpenSSL still has it TLS 1.0 - 1.2
===================  =========================================================  ==================

TLS 1.3 cipher suites are not configurable through Python's ``ssl`` (OpenSSL's defaults: AES-GCM and
ChaCha20-Poly1305, all of which BCP 195 permits). The retired profiles need OpenSSL's security level 0
for TLS 1.0/1.1; a build that has dropped their ciphers gives :class:`TlsConfigError` at start-up
instead of a server that silently negotiates something else.
"""

from __future__ import annotations

import ssl
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "DEFAULT_PROFILE",
    "PROFILES",
    "TlsConfigError",
    "TlsProfile",
    "client_context",
    "peer_common_name",
    "server_context",
]

# RFC 7525 / RFC 9325 recommended suites (OpenSSL names), ECDSA twins of the same strength included.
_BCP195_SUITES = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
_EXTENDED_SUITES = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"
)


@dataclass(frozen=True, slots=True)
class TlsProfile:
    """One PS3.15 secure transport connection profile."""

    name: str
    title: str
    minimum: ssl.TLSVersion
    ciphers: str
    maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED
    legacy: bool = False  # needs OpenSSL security level 0 (TLS < 1.2, RSA key exchange, SHA-1 MACs)


PROFILES: dict[str, TlsProfile] = {
    p.name: p
    for p in (
        TlsProfile("bcp195-nd", "Non-downgrading BCP 195 TLS Profile", ssl.TLSVersion.TLSv1_2, _BCP195_SUITES),
        TlsProfile("bcp195", "BCP 195 TLS Profile", ssl.TLSVersion.TLSv1, _BCP195_SUITES + ":ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:AES128-SHA", legacy=True),
        TlsProfile("bcp195-rfc8996", "BCP 195 RFC 8996 TLS Profile", ssl.TLSVersion.TLSv1_2, _BCP195_SUITES),
        TlsProfile("bcp195-ex", "Extended BCP 195 TLS Profile", ssl.TLSVersion.TLSv1_2, _EXTENDED_SUITES),
        TlsProfile("aes", "AES TLS Secure Transport Connection Profile (retired)", ssl.TLSVersion.TLSv1,
                   "AES128-SHA:AES256-SHA:DES-CBC3-SHA", ssl.TLSVersion.TLSv1_2, legacy=True),
        TlsProfile("basic", "Basic TLS Secure Transport Connection Profile (retired)", ssl.TLSVersion.TLSv1,
                   "DES-CBC3-SHA", ssl.TLSVersion.TLSv1_2, legacy=True),
    )
}
DEFAULT_PROFILE = "bcp195-nd"

ProfileName = Literal["bcp195-nd", "bcp195", "bcp195-rfc8996", "bcp195-ex", "aes", "basic"]


class TlsConfigError(ValueError):
    """The TLS configuration cannot be used (missing or unreadable file, wrong key, unknown profile,
    a profile this OpenSSL cannot do); the message names the file or setting."""


def _profile(name: str) -> TlsProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise TlsConfigError(f"unknown TLS profile {name!r}; one of {', '.join(PROFILES)}") from None


def _apply_profile(context: ssl.SSLContext, profile: TlsProfile) -> None:
    ciphers = profile.ciphers + (":@SECLEVEL=0" if profile.legacy else "")
    try:
        context.set_ciphers(ciphers)
    except ssl.SSLError as exc:
        raise TlsConfigError(f"TLS profile {profile.name}: this OpenSSL ({ssl.OPENSSL_VERSION}) has none of its cipher suites") from exc
    try:
        with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated: the legacy profiles say so in their docs
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = profile.minimum
            context.maximum_version = profile.maximum
    except ValueError as exc:
        raise TlsConfigError(f"TLS profile {profile.name}: {exc}") from exc
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if hasattr(ssl, "OP_NO_RENEGOTIATION"):
        context.options |= ssl.OP_NO_RENEGOTIATION


def _load_identity(context: ssl.SSLContext, certificate: str | Path | None, private_key: str | Path | None) -> None:
    if certificate is None:
        return
    for label, path in (("certificate", certificate), ("private key", private_key or certificate)):
        if not Path(path).is_file():
            raise TlsConfigError(f"TLS {label} {path} does not exist")
    try:
        context.load_cert_chain(str(certificate), str(private_key) if private_key is not None else None)
    except ssl.SSLError as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        if "KEY_VALUES_MISMATCH" in str(reason).upper():
            raise TlsConfigError(f"TLS private key {private_key} does not belong to certificate {certificate}") from exc
        raise TlsConfigError(f"TLS certificate {certificate} / key {private_key} unusable: {reason}") from exc


def _load_trust(context: ssl.SSLContext, ca_file: str | Path | None, crl_file: str | Path | None, *, crl_whole_chain: bool) -> None:
    if ca_file is not None:
        if not Path(ca_file).is_file():
            raise TlsConfigError(f"TLS CA file {ca_file} does not exist")
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except ssl.SSLError as exc:
            raise TlsConfigError(f"TLS CA file {ca_file} unusable: {exc}") from exc
    if crl_file is not None:
        if not Path(crl_file).is_file():
            raise TlsConfigError(f"TLS CRL file {crl_file} does not exist")
        try:
            context.load_verify_locations(cafile=str(crl_file))  # PEM CRLs load like CA certificates
        except ssl.SSLError as exc:
            raise TlsConfigError(f"TLS CRL file {crl_file} unusable: {exc}") from exc
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN if crl_whole_chain else ssl.VERIFY_CRL_CHECK_LEAF


def server_context(
    certificate: str | Path,
    private_key: str | Path | None = None,
    *,
    profile: str = DEFAULT_PROFILE,
    ca_file: str | Path | None = None,
    client_certificates: Literal["none", "optional", "required"] = "required",
    crl_file: str | Path | None = None,
    crl_whole_chain: bool = False,
) -> ssl.SSLContext:
    """The listening context: our certificate and key, the profile, and how clients authenticate.

    ``client_certificates``: ``required`` (mutual TLS: a client without a certificate the trust store
    ``ca_file`` verifies fails the handshake), ``optional`` (verified when sent), ``none``.
    ``crl_file`` (PEM) turns on revocation checking of the client's certificate (``crl_whole_chain``: of
    every certificate of its chain, which then needs a CRL of every CA). Raises :class:`TlsConfigError`.
    """
    spec = _profile(profile)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_profile(context, spec)
    _load_identity(context, certificate, private_key)
    if client_certificates != "none":
        if ca_file is None:
            raise TlsConfigError("TLS client certificates need a trust store (ca_file)")
        _load_trust(context, ca_file, crl_file, crl_whole_chain=crl_whole_chain)
        context.verify_mode = ssl.CERT_REQUIRED if client_certificates == "required" else ssl.CERT_OPTIONAL
    elif crl_file is not None:
        raise TlsConfigError("a CRL is only used to check client certificates; set client_certificates")
    return context


def client_context(
    *,
    profile: str = DEFAULT_PROFILE,
    ca_file: str | Path | None = None,
    certificate: str | Path | None = None,
    private_key: str | Path | None = None,
    check_hostname: bool = True,
    verify: bool = True,
    crl_file: str | Path | None = None,
) -> ssl.SSLContext:
    """An outgoing context: the profile, the trust store that verifies the peer (``ca_file``; the
    system's store when ``None``) and optionally our certificate for mutual TLS. ``check_hostname``
    makes the peer's certificate carry the host name (or IP address) we connect to; ``verify=False``
    (tests, labs only) skips verification altogether. Raises :class:`TlsConfigError`."""
    spec = _profile(profile)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _apply_profile(context, spec)
    if verify:
        if ca_file is None:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        _load_trust(context, ca_file, crl_file, crl_whole_chain=False)
        context.check_hostname = check_hostname
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    _load_identity(context, certificate, private_key)
    return context


def peer_common_name(peercert: dict[str, Any] | None) -> str | None:
    """The subject CN of a verified peer certificate as :meth:`ssl.SSLSocket.getpeercert` returns it."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
