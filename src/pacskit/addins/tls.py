"""TLS add-in: DICOM over TLS (PS3.15 Annex B secure transport profiles), replaceable like any add-in.

Disabled until configured: ``[addins.tls] enabled = true`` with a certificate and key. It then gives
the server (through :meth:`~pacskit.services.AddIn.tls_setup`) a TLS listener on ``port`` (2762, the
registered ``dicom-tls``) beside the plain one, or instead of it with ``plain_port = false``, and the
context for outgoing associations to registry entries marked ``tls``.

Defaults are the secure ones: the Non-downgrading BCP 195 profile (TLS 1.2 and 1.3; TLS 1.0/1.1 are
refused in the handshake) and mutual TLS (a client must present a certificate the trust store
``ca_file`` verifies; with ``crl_file`` it must not be revoked). Which AE may use which certificate is
access control (``tls_subject`` in the AE registry, see docs/security.md). Options: docs/addins/tls.md.

Example::

    [addins.tls]
    enabled = true
    certificate = "tls/server.pem"
    private_key = "tls/server.key"
    ca_file = "tls/ca.pem"
    crl_file = "tls/crl.pem"        # optional
    client_certificates = "required"  # or "optional", "none"
    profile = "bcp195-nd"
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from pacskit.services import AddIn, AddInOptions, TlsSetup
from pacskit.net.tls import DEFAULT_PROFILE, PROFILES, ProfileName, TlsConfigError, client_context, server_context

if TYPE_CHECKING:
    from pacskit.config.aetitles import RemoteAE


class TlsOptions(AddInOptions):
    """Relative paths are inside the server folder."""

    enabled: bool = Field(False, description="TLS is off until certificates are configured")
    profile: ProfileName = Field(DEFAULT_PROFILE, description="PS3.15 profile: " + ", ".join(PROFILES))
    port: int = Field(2762, ge=0, le=65535, description="TLS port (0: any free port, for tests)")
    plain_port: bool = Field(True, description="keep the plain (non-TLS) port open beside the TLS one")
    certificate: str | None = Field(None, description="our certificate (PEM; chain after it)")
    private_key: str | None = Field(None, description="our private key (PEM, unencrypted)")
    ca_file: str | None = Field(None, description="trust store (PEM CA certificates) for peers' certificates")
    crl_file: str | None = Field(None, description="certificate revocation list(s) (PEM); turns on CRL checking")
    crl_whole_chain: bool = Field(False, description="check every certificate of the chain against a CRL, not only the peer's own")
    client_certificates: Literal["required", "optional", "none"] = Field(
        "required", description="mutual TLS: required, optional (checked when sent) or none"
    )
    verify_peer_name: bool = Field(True, description="outgoing: the peer's certificate must name the host we connect to")


class TlsAddIn(AddIn):
    name = "tls"
    description = "DICOM over TLS: PS3.15 BCP 195 profiles, mutual TLS, CRL checking"
    Options = TlsOptions

    def __init__(self, options: AddInOptions, base) -> None:  # type: ignore[no-untyped-def]
        super().__init__(options, base)
        self._outgoing: ssl.SSLContext | None = None

    def _path(self, value: str | None) -> Path | None:
        if value is None:
            return None
        path = Path(value)
        return path if path.is_absolute() else self.base.settings.folder / path

    def tls_setup(self) -> TlsSetup | None:
        options = self.options
        assert isinstance(options, TlsOptions)
        if options.certificate is None or options.private_key is None:
            raise ValueError("addins.tls: certificate and private_key are required when TLS is enabled")
        certificate, key = self._path(options.certificate), self._path(options.private_key)
        ca, crl = self._path(options.ca_file), self._path(options.crl_file)
        try:
            listen = server_context(
                certificate,  # type: ignore[arg-type]
                key,
                profile=options.profile,
                ca_file=ca,
                client_certificates=options.client_certificates,
                crl_file=crl,
                crl_whole_chain=options.crl_whole_chain,
            )
            self._outgoing = client_context(
                profile=options.profile, ca_file=ca, certificate=certificate, private_key=key,
                check_hostname=options.verify_peer_name,
            )
        except TlsConfigError as exc:
            raise ValueError(f"addins.tls: {exc}") from exc
        self.base.log.info(
            "TLS profile %s (%s), client certificates %s%s", options.profile, PROFILES[options.profile].title,
            options.client_certificates, ", CRL checked" if crl is not None else "",
        )
        return TlsSetup(listen=listen, port=options.port, keep_plain=options.plain_port, outgoing=self._outgoing_for)

    def _outgoing_for(self, ae: RemoteAE) -> ssl.SSLContext:
        assert self._outgoing is not None
        return self._outgoing
