"""What every SCU shares: the target, the association request, client events and the sync bridge.

Events come in two kinds (the kind is part of the name, as in the add-in API):

- *interventions* ``before-*``: handlers may edit the object they get (an :class:`AssociationRequest`,
  a C-FIND identifier); they run in registration order and an exception propagates to the caller —
  an edit that fails must not be silently skipped;
- *notifications* (``sent``, ``response``, ``progress``…): observers; an exception is logged and
  isolated, it never stops a transfer.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pacskit.client.remote import Peer, RemoteSpec, resolve_remote
from pacskit.net import Association, EventBus, NetConfig, RequestedContext, Services, UserIdentityRQ, connect

if TYPE_CHECKING:
    import ssl as _ssl

    from pacskit.config.aetitles import AeTitles, RemoteAE

log = logging.getLogger("pacskit.client")

T = TypeVar("T")
Handler = Callable[[Any], Any]


@dataclass
class AssociationRequest:
    """The A-ASSOCIATE-RQ an SCU is about to send; ``before-associate`` handlers may edit any field.

    ``contexts`` is the proposed list (at most 128); removing a context the SCU needs makes the
    operations that need it fail with ``NoAcceptableContext``.
    """

    calling_ae: str
    called_ae: str
    host: str
    port: int
    contexts: list[RequestedContext]
    user_identity: UserIdentityRQ | None = None
    config: NetConfig = field(default_factory=NetConfig)


def user_identity(username: str, password: str | None = None, *, response: bool = False) -> UserIdentityRQ:
    """A User Identity item (PS3.7 D.3.3.7): type 1 (username) or 2 (username and passcode)."""
    return UserIdentityRQ(
        1 if password is None else 2, response, username.encode("utf-8"), (password or "").encode("utf-8")
    )


class ClientEvents:
    """Handlers per event kind. ``before-*`` kinds are interventions, every other kind a notification."""

    def __init__(self, kinds: Sequence[str]) -> None:
        self._handlers: dict[str, list[Handler]] = {k: [] for k in kinds}

    def on(self, kind: str, handler: Handler) -> Handler:
        if kind not in self._handlers:
            raise ValueError(f"unknown event {kind!r}; one of {', '.join(self._handlers)}")
        self._handlers[kind].append(handler)
        return handler

    def wants(self, kind: str) -> bool:
        return bool(self._handlers.get(kind))

    async def intervene(self, kind: str, subject: Any) -> None:
        for handler in self._handlers[kind]:
            result = handler(subject)
            if inspect.isawaitable(result):
                await result

    def notify(self, kind: str, event: Any) -> None:
        for handler in self._handlers[kind]:
            try:
                handler(event)
            except Exception:
                log.exception("%s observer %r failed (ignored)", kind, handler)


class Scu:
    """Base of the SCUs: one remote AE, our identity, timeouts, and how associations are opened.

    ``remote`` is a :class:`RemoteAE`, ``"AET@host:port"`` (kept as a :class:`Peer`) or a title looked
    up in ``registry``.
    ``ssl`` turns on TLS (required for registry entries marked ``tls``); the peer's certificate is
    checked against ``server_hostname`` (default: the host) when the context checks host names.
    """

    EVENTS: tuple[str, ...] = ("before-associate",)

    def __init__(
        self,
        remote: RemoteSpec,
        *,
        calling_ae: str = "PACSKIT",
        registry: AeTitles | None = None,
        config: NetConfig | None = None,
        user_identity: UserIdentityRQ | None = None,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        bus: EventBus | None = None,
    ) -> None:
        self.remote: RemoteAE | Peer = resolve_remote(remote, registry)
        self.calling_ae = calling_ae
        self.config = config or NetConfig()
        self.user_identity = user_identity
        self.ssl = ssl
        self.server_hostname = server_hostname
        self.bus = bus
        self.events = ClientEvents(self.EVENTS)

    def on(self, kind: str, handler: Handler | None = None) -> Any:
        """Register ``handler`` for ``kind``; without ``handler``, use as a decorator."""
        if handler is None:
            return lambda fn: self.events.on(kind, fn)
        return self.events.on(kind, handler)

    async def associate(
        self, contexts: Sequence[RequestedContext], *, services: Services | None = None, config: NetConfig | None = None
    ) -> Association:
        """Run ``before-associate`` handlers on the request, then connect. Raises the engine's
        :class:`~pacskit.net.NetError` subclasses (ConnectionFailed, AssociationRejected, NetTimeout).
        ``services`` answers what the peer sends on the association; ``config`` overrides ours."""
        request = AssociationRequest(
            calling_ae=self.calling_ae,
            called_ae=self.remote.title,
            host=self.remote.host,
            port=self.remote.port,
            contexts=list(contexts),
            user_identity=self.user_identity,
            config=config or self.config,
        )
        await self.events.intervene("before-associate", request)
        if self.remote.tls and self.ssl is None:
            raise ValueError(f"{self.remote.title} requires TLS: pass ssl=SSLContext")
        return await connect(
            request.host,
            request.port,
            called_ae=request.called_ae,
            calling_ae=request.calling_ae,
            contexts=request.contexts,
            config=request.config,
            ssl=self.ssl,
            server_hostname=self.server_hostname or request.host,
            services=services,
            bus=self.bus,
            user_identity=request.user_identity,
        )


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from plain (non-async) code.

    Raises ``RuntimeError`` inside a running event loop: there, ``await`` the async method instead.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    coro.close()
    raise RuntimeError("the *_sync methods cannot run inside an event loop; await the async method instead")
