"""The listening side: accept connections and run one :class:`Association` per connection."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pacskit.net import events as ev
from pacskit.net.association import Association
from pacskit.net.base import address_text
from pacskit.net.negotiation import AssociateHook
from pacskit.net.config import NetConfig
from pacskit.net.presentation import SupportedContext
from pacskit.net.proxy import ProxyProtocolError, read_header
from pacskit.net.services import Services

if TYPE_CHECKING:
    import ssl as _ssl

log = logging.getLogger("pacskit.net")

_connection_ids = itertools.count(1)  # process-wide: ids stay unique across several listeners

#: (the load balancer's address, the client's address its PROXY header named)
_Proxied = tuple[Any, tuple[str, int]]


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
    ``max_associations``). ``ssl`` turns on TLS for every connection of this listener: the handshake
    runs first (bounded by the ARTIM timeout), and only a connection that completed it gets an
    :class:`Association`; a failed handshake is logged with the peer's address and reason, closed, and
    reported to ``on_tls_failure(peer, error)`` when given.

    With ``config.proxy_protocol_from`` set, a connection from one of those load balancers must open
    with a PROXY protocol header (:mod:`pacskit.net.proxy`), read before TLS and before the ARTIM
    timer's association request, within the ARTIM timeout; the client it names is the association's
    ``peer_address`` (access control, logs, audit) and the balancer its ``proxy_address``. A balancer
    that sends none, or a malformed one, has its connection closed with a log line. Connections from
    other addresses are direct ones, read as usual.

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
        on_tls_failure: Callable[[Any, BaseException], None] | None = None,
    ) -> None:
        self.ae_title = ae_title
        self.contexts = list(contexts)
        self.services = services
        self.config = config or NetConfig()
        self.bus = bus or ev.EventBus()
        self.ssl = ssl
        self.on_associate = on_associate
        self.require_called_ae = require_called_ae
        self.on_tls_failure = on_tls_failure
        self.associations: set[Association] = set()
        self._connections: dict[int, Connection] = {}
        self._executor = ThreadPoolExecutor(self.config.handler_threads, thread_name_prefix=f"pacskit-{ae_title}")
        self._server: asyncio.Server | _ProxyListener | None = None
        self._handed: tuple[str, int] | None = None  # the address another process listens on for us
        self._closing = False
        self._handshakes: set[asyncio.Task[None]] = set()  # TLS connections still in their handshake

    def count_others(self, assoc: Association) -> int:
        """Associations other than ``assoc`` that are negotiating or established (for the limit)."""
        return sum(1 for a in self.associations if a is not assoc and not (a.is_released or a.is_aborted or a.reject))

    def _make_association(self, on_closed: Callable[[], None] | None = None, proxied: _Proxied | None = None) -> asyncio.Protocol:
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
        if proxied is not None:
            assoc.proxy_address, assoc.peer_address = proxied
        self.associations.add(assoc)
        connection = Connection(next(_connection_ids), assoc, time.time())
        self._connections[connection.id] = connection

        def closed(_: object) -> None:
            self.associations.discard(assoc)
            self._connections.pop(connection.id, None)
            if on_closed is not None:
                on_closed()

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

    def _make_protocol(self, on_closed: Callable[[], None] | None = None, proxied: _Proxied | None = None) -> asyncio.Protocol:
        return self._make_association(on_closed, proxied) if self.ssl is None else _TlsHandshake(self, on_closed, proxied)

    async def _serve_socket(self, sock: socket.socket, on_closed: Callable[[], None] | None = None) -> bool:
        """Give an accepted connection its protocol, after reading the PROXY header of a trusted load
        balancer's; ``False`` (the socket closed) when the connection ends before that."""
        loop = asyncio.get_running_loop()
        proxied: _Proxied | None = None
        try:
            peer = sock.getpeername()
        except OSError:  # the peer already gone
            sock.close()
            return False
        if self.config.proxy_protocol_from.trusts(peer):
            try:
                async with asyncio.timeout(self.config.artim_timeout):
                    client = await read_header(sock, loop)
            except (ProxyProtocolError, TimeoutError, OSError) as exc:
                why = "no PROXY header within the ARTIM timeout" if isinstance(exc, TimeoutError) else str(exc)
                log.warning("%s: connection from load balancer %s closed: %s", self.ae_title, address_text(peer), why)
                sock.close()
                return False
            if client is not None:
                proxied = (peer, client)
                log.debug("%s: connection from %s through load balancer %s", self.ae_title, address_text(client), address_text(peer))
        try:
            await loop.connect_accepted_socket(lambda: self._make_protocol(on_closed, proxied), sock)
        except (OSError, RuntimeError) as exc:  # the peer already gone, or the loop closing
            log.debug("%s: a connection could not be served: %s", self.ae_title, exc)
            sock.close()
            return False
        return True

    def _tls_failed(self, peer: Any, exc: BaseException) -> None:
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)
        reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        log.warning("%s: TLS handshake from %s failed: %s", self.ae_title, where, reason)
        if self.on_tls_failure is not None:
            try:
                self.on_tls_failure(peer, exc)
            except Exception:
                log.exception("on_tls_failure observer failed")

    async def start(self, host: str = "127.0.0.1", port: int = 11112, *, reuse_port: bool = False, sock: socket.socket | None = None) -> None:
        """Bind and start accepting. Raises ``OSError`` (e.g. address in use) with the OS message."""
        loop = asyncio.get_running_loop()
        self._closing = False
        if self.config.proxy_protocol_from:
            self._server = _ProxyListener(self, [sock] if sock is not None else _listening_sockets(host, port, reuse_port))
        elif sock is not None:
            self._server = await loop.create_server(self._make_protocol, sock=sock, backlog=128)
        else:
            self._server = await loop.create_server(
                self._make_protocol, host, port, reuse_address=True, reuse_port=reuse_port, backlog=128
            )
        log.debug("%s listening on %s", self.ae_title, ", ".join(f"{h}:{p}" for h, p, *_ in self.addresses))

    def serve_handed(self, host: str, port: int) -> None:
        """Serve connections that another process accepts on ``host:port`` and hands over (:meth:`adopt`).

        The parent of ``serve --workers N`` (:mod:`pacskit.server.workers`) owns the listening socket and
        passes each accepted connection to the least busy worker; this acceptor then binds nothing and
        reports ``host:port`` as its address."""
        self._handed = (host, port)
        self._closing = False

    async def adopt(self, sock: socket.socket) -> None:
        """Serve one connection that another process accepted; return once it has closed.

        The connection goes through the same path as one this acceptor accepted itself (TLS
        handshake, ARTIM, association negotiation and access control with the peer address from
        ``getpeername``, the administrative view), so a handed connection is indistinguishable from
        an accepted one. A closing acceptor closes the socket at once."""
        if self._closing:
            sock.close()
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def closed() -> None:
            if not done.done():
                done.set_result(None)

        sock.setblocking(False)
        if await self._serve_socket(sock, closed):
            await done

    @property
    def addresses(self) -> list[tuple[str, int]]:
        if self._server is None:
            return [self._handed] if self._handed is not None else []
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
        self._closing = True  # handed connections (adopt) are refused from now on
        if self._server is not None:
            self._server.close()
        for task in list(self._handshakes):
            task.cancel()
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


class _TlsHandshake(asyncio.Protocol):
    """A TLS connection until its handshake is done; then the DUL of a new association takes over.

    asyncio's own ``create_server(ssl=...)`` hands the protocol over before the handshake and drops
    handshake failures silently; doing the handshake here (``loop.start_tls``) gives every failure a
    log line with the peer's address, and creates no association for a peer that never completed it.
    """

    def __init__(self, acceptor: Acceptor, on_closed: Callable[[], None] | None = None, proxied: _Proxied | None = None) -> None:
        self.acceptor = acceptor
        self.on_closed = on_closed  # called once when the connection ends, whatever its fate
        self.proxied = proxied
        self.associated = False  # the association exists: its own close calls on_closed
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # the ClientHello is for the TLS layer start_tls puts in between
        self.task = task = asyncio.get_running_loop().create_task(self._upgrade(transport))
        self.acceptor._handshakes.add(task)
        task.add_done_callback(self.acceptor._handshakes.discard)
        task.add_done_callback(self._settle)

    def _settle(self, _: object) -> None:
        if not self.associated and self.on_closed is not None:  # cancelled before it made one
            self.on_closed()

    async def _upgrade(self, transport: asyncio.Transport) -> None:
        acceptor = self.acceptor
        peer = self.proxied[1] if self.proxied is not None else transport.get_extra_info("peername")
        loop = asyncio.get_running_loop()
        dul = acceptor._make_association(self.on_closed, self.proxied)
        self.associated = True
        held = _Held()  # what arrives between the end of the handshake and the DUL taking over
        try:
            tls = await loop.start_tls(
                transport, held, acceptor.ssl, server_side=True,  # type: ignore[arg-type]
                ssl_handshake_timeout=acceptor.config.artim_timeout,
            )
        except (OSError, TimeoutError, ConnectionError) as exc:
            transport.abort()
            _forget(dul)
            acceptor._tls_failed(peer, exc)
            return
        except asyncio.CancelledError:  # the acceptor is closing
            transport.abort()
            _forget(dul)
            raise
        if tls is None:  # closed during the handshake
            transport.abort()
            _forget(dul)
            return
        tls.set_protocol(dul)
        dul.connection_made(tls)
        # With TLS 1.3 the client's first PDU comes with its Finished message, and asyncio delivers it
        # before start_tls returns: hand it on in order.
        for chunk in held.data:
            dul.data_received(chunk)
        if held.lost:
            dul.connection_lost(held.error)

    def connection_lost(self, exc: Exception | None) -> None:
        pass  # start_tls owns the transport from the first moment; failures surface in _upgrade


class _Held(asyncio.Protocol):
    """Holds what a TLS connection delivers before the DUL is its protocol."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.lost = False
        self.error: Exception | None = None

    def data_received(self, data: bytes) -> None:
        self.data.append(bytes(data))

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost, self.error = True, exc


def _forget(dul: Any) -> None:
    """An association whose connection never got past TLS: mark it closed so the acceptor drops it."""
    if not dul.closed.done():
        dul.closed.set_result(None)


class _ProxyListener:
    """The listening sockets of an acceptor that reads PROXY headers: what ``asyncio.Server`` does for
    the others (accept, hand each connection to a protocol), with the header read from the socket
    itself first, so that not a byte after it is consumed before the transport (and TLS) take over."""

    def __init__(self, acceptor: Acceptor, sockets: list[socket.socket]) -> None:
        self.acceptor = acceptor
        self.sockets = sockets
        loop = asyncio.get_running_loop()
        for sock in sockets:
            sock.setblocking(False)
        self._accepting = [loop.create_task(self._accept(sock)) for sock in sockets]
        self._closed = loop.create_future()

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        pending = self.acceptor._handshakes  # cancelled by Acceptor.close like TLS handshakes
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except (ConnectionAbortedError, ConnectionResetError):
                continue
            except OSError as exc:  # EMFILE and the like: wait a little, as asyncio.Server does
                log.error("%s: accept failed: %s", self.acceptor.ae_title, exc)
                await asyncio.sleep(1.0)
                continue
            task = loop.create_task(self._start(sock))
            pending.add(task)
            task.add_done_callback(pending.discard)

    async def _start(self, sock: socket.socket) -> None:
        try:
            await self.acceptor._serve_socket(sock)
        except asyncio.CancelledError:
            sock.close()
            raise

    def close(self) -> None:
        for task in self._accepting:
            task.cancel()
        for sock in self.sockets:
            sock.close()
        if not self._closed.done():
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._accepting, return_exceptions=True)

    async def serve_forever(self) -> None:
        await asyncio.shield(self._closed)


def _listening_sockets(host: str, port: int, reuse_port: bool) -> list[socket.socket]:
    """Bound, listening sockets for every address ``host`` resolves to (as ``loop.create_server``)."""
    sockets: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(128)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets
