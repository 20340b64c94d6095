"""The listening side: accept connections and run one :class:`Association` per connection."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pacskit.net import events as ev
from pacskit.net.association import Association, AssociateHook
from pacskit.net.config import NetConfig
from pacskit.net.presentation import SupportedContext
from pacskit.net.services import Services

if TYPE_CHECKING:
    import ssl as _ssl

log = logging.getLogger("pacskit.net")

_connection_ids = itertools.count(1)  # process-wide: ids stay unique across several listeners


@dataclass(frozen=True, slots=True)
class Connection:
    """One open connection of an acceptor, as administrators see it.

    ``id`` is unique in the process (never reused, shared by all acceptors), so an operator's
    "disconnect 12" cannot hit a newer connection; ``since`` is wall-clock time (``time.time()``).
    """

    id: int
    association: Association
    since: float


class Acceptor:
    """A DICOM acceptor for one AE title.

    ``contexts`` lists what we accept (abstract syntax → transfer syntaxes in our preference order);
    ``services`` holds the handlers; ``on_associate`` may refuse an association after the built-in
    checks (protocol version, application context, called AE title when ``require_called_ae``,
    ``max_associations``). ``ssl`` turns on TLS for every connection of this listener.

    ``contexts`` and ``services`` may be replaced while serving (a server reload): each association
    keeps the ones it was created with, new connections get the new ones. :meth:`connections` and
    :meth:`abort_connection` are the administrative view of what is open.

    Example::

        services = Services()
        services.register("C-ECHO", lambda req: 0x0000)
        acceptor = Acceptor("PACSKIT", [SupportedContext(VERIFICATION_SOP_CLASS)], services)
        await acceptor.start("127.0.0.1", 11112)
        await acceptor.serve_forever()
    """

    def __init__(
        self,
        ae_title: str,
        contexts: Sequence[SupportedContext],
        services: Services,
        *,
        config: NetConfig | None = None,
        bus: ev.EventBus | None = None,
        ssl: _ssl.SSLContext | None = None,
        on_associate: AssociateHook | None = None,
        require_called_ae: bool = True,
    ) -> None:
        self.ae_title = ae_title
        self.contexts = list(contexts)
        self.services = services
        self.config = config or NetConfig()
        self.bus = bus or ev.EventBus()
        self.ssl = ssl
        self.on_associate = on_associate
        self.require_called_ae = require_called_ae
        self.associations: set[Association] = set()
        self._connections: dict[int, Connection] = {}
        self._executor = ThreadPoolExecutor(self.config.handler_threads, thread_name_prefix=f"pacskit-{ae_title}")
        self._server: asyncio.Server | None = None

    def count_others(self, assoc: Association) -> int:
        """Associations other than ``assoc`` that are negotiating or established (for the limit)."""
        return sum(1 for a in self.associations if a is not assoc and not (a.is_released or a.is_aborted or a.reject))

    def _make_association(self) -> asyncio.Protocol:
        assoc = Association(
            is_requestor=False,
            local_ae_title=self.ae_title,
            config=self.config,
            bus=self.bus,
            services=self.services,
            executor=self._executor,
            supported=self.contexts,
            on_associate=self.on_associate,
            acceptor=self,
            require_called_ae=self.require_called_ae,
        )
        self.associations.add(assoc)
        connection = Connection(next(_connection_ids), assoc, time.time())
        self._connections[connection.id] = connection

        def closed(_: object) -> None:
            self.associations.discard(assoc)
            self._connections.pop(connection.id, None)

        assoc.dul.closed.add_done_callback(closed)
        return assoc.dul

    def connections(self) -> list[Connection]:
        """The open connections, oldest first (negotiating, established or closing)."""
        return list(self._connections.values())

    def connection_of(self, assoc: Association) -> Connection | None:
        for connection in self._connections.values():
            if connection.association is assoc:
                return connection
        return None

    def abort_connection(self, connection_id: int) -> bool:
        """Send A-ABORT (service-user source) on one connection; ``False`` if no such connection is open."""
        connection = self._connections.get(connection_id)
        if connection is None:
            return False
        log.warning("%s: aborted by the administrator", connection.association.label)
        connection.association.abort()
        return True

    async def start(self, host: str = "127.0.0.1", port: int = 11112, *, reuse_port: bool = False, sock: socket.socket | None = None) -> None:
        """Bind and start accepting. Raises ``OSError`` (e.g. address in use) with the OS message."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(self._make_association, sock=sock, ssl=self.ssl, backlog=128)
        else:
            self._server = await loop.create_server(
                self._make_association, host, port, ssl=self.ssl, reuse_address=True, reuse_port=reuse_port, backlog=128
            )
        log.info("%s listening on %s", self.ae_title, ", ".join(f"{h}:{p}" for h, p, *_ in self.addresses))

    @property
    def addresses(self) -> list[tuple[str, int]]:
        if self._server is None:
            return []
        return [s.getsockname()[:2] for s in self._server.sockets]

    @property
    def port(self) -> int:
        """The bound port (useful after binding port 0)."""
        return self.addresses[0][1]

    async def serve_forever(self) -> None:
        assert self._server is not None, "call start() first"
        await self._server.serve_forever()

    async def close(self, grace: float = 10.0) -> None:
        """Stop listening; let running requests finish for up to ``grace`` seconds, then abort the rest."""
        if self._server is not None:
            self._server.close()
        deadline = asyncio.get_running_loop().time() + grace
        while any(a.busy for a in self.associations) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for assoc in list(self.associations):
            assoc.abort()
        pending = [a.dul.closed for a in self.associations]
        if pending:
            await asyncio.wait(pending, timeout=2.0)
        for assoc in list(self.associations):
            if assoc.dul.transport is not None:
                assoc.dul.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> Acceptor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
