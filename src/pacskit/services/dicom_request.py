"""The ``dicom_request`` base service: add-ins talk to other AEs through it.

It resolves AE titles through the AE registry, applies the server's identity (calling AE title,
implementation UID, timeouts) and shares the server's event bus, so outgoing associations are visible to
the same spies as incoming ones. Replace it (e.g. to route through a proxy) by passing another object
with the same methods when the server is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pacskit.net import (
    Association,
    ConnectionFailed,
    EventBus,
    NetConfig,
    RequestedContext,
    Services,
    connect,
)
from pacskit.dicom.uids import VERIFICATION_SOP_CLASS

if TYPE_CHECKING:
    import ssl

    from pacskit.config.aetitles import AeTitles, RemoteAE


class UnknownAE(LookupError):
    """The AE title is not in the registry."""


class DicomRequest:
    """Open associations to registered (or explicit) remote AEs.

    An AE the registry marks ``tls`` is reached over TLS with the context the server's security add-in
    supplies (:meth:`use_tls`, called by the server at start-up); without one, such an AE is refused
    with :class:`~pacskit.net.ConnectionFailed` rather than reached in the clear.
    """

    def __init__(self, calling_ae: str, ae_titles: AeTitles, config: NetConfig, bus: EventBus) -> None:
        self.calling_ae = calling_ae
        self.ae_titles = ae_titles
        self.config = config
        self.bus = bus
        self._tls: Callable[[RemoteAE], ssl.SSLContext] | None = None

    def use_tls(self, context_for: Callable[[RemoteAE], ssl.SSLContext]) -> None:
        """Reach AEs marked ``tls`` with ``context_for(ae)`` (see :class:`pacskit.services.TlsSetup`)."""
        self._tls = context_for

    def resolve(self, title: str) -> RemoteAE:
        ae = self.ae_titles.get(title)
        if ae is None:
            raise UnknownAE(f"AE {title!r} is not registered")
        return ae

    async def associate(
        self,
        title: str,
        contexts: Sequence[RequestedContext],
        *,
        services: Services | None = None,
        host: str | None = None,
        port: int | None = None,
    ) -> Association:
        """Open an association to ``title`` (looked up in the registry unless ``host``/``port`` given).

        Use as ``async with await base.dicom_request.associate("ORTHANC", contexts) as assoc:``.
        ``services`` answers what the peer sends back on it (C-GET C-STOREs, N-EVENT-REPORTs).
        """
        context = None
        if host is None or port is None:
            ae = self.resolve(title)
            host, port = ae.host, ae.port
            if ae.tls:
                if self._tls is None:
                    raise ConnectionFailed(f"{title} requires TLS and no TLS add-in is enabled")
                context = self._tls(ae)
        return await connect(
            host,
            port,
            called_ae=title,
            calling_ae=self.calling_ae,
            contexts=contexts,
            config=self.config,
            services=services,
            bus=self.bus,
            ssl=context,
        )

    async def echo(self, title: str) -> int:
        """C-ECHO ``title``; returns the status."""
        async with await self.associate(title, [RequestedContext(VERIFICATION_SOP_CLASS)]) as assoc:
            return await assoc.echo()
