"""Service handlers: who answers a DIMSE request, and with what.

A handler is registered for a DIMSE service (``"C-STORE"``, ``"C-FIND"``, ``"N-ACTION"``…) and
optionally for specific abstract syntaxes; the engine calls it with a :class:`Request` and turns what it
returns into response messages:

================================  ===============================================================
handler returns                   engine sends
================================  ===============================================================
``int`` (a status)                one final response with that status
:class:`Response`                 one final response (status, optional dataset, extra elements)
an iterator / async iterator of   one response per item (Pending for C-FIND, C-GET, C-MOVE), then a
``Response`` or ``int``           final Success unless the last item was final, or Cancel (0xFE00)
                                  when the peer sent C-CANCEL and the handler stopped. An item may
                                  also be a *list* of responses: they are sent in order, and Pending
                                  ones with encoded ``bytes`` datasets leave in one write (a page of
                                  C-FIND matches costs one send, not one coroutine step per match)
================================  ===============================================================

A handler may be ``async def`` (runs on the event loop: must not block) or a plain function (runs in the
engine's thread pool, so a slow handler never stalls other associations). A plain *generator* runs in
the thread pool too, a batch of answers per hop (see :mod:`pacskit.net.dispatch`). A plain function
wrapped in :class:`InlineHandler` declares that it may also run on the event loop's own thread, which
the engine does when its association is the only connection of that loop (nothing else to serve), or
when its ``brief`` check says this call waits only briefly: that saves the two thread hand-offs of the
pool, most of the latency of a small C-STORE. Exceptions and timeouts become
the failure status :func:`failure_status` gives for the service (logged with the traceback); the
association goes on. Allowed statuses per service: PS3.4 B.2.3 (C-STORE), C.4.1.1.4 (C-FIND),
C.4.2.1.5 (C-MOVE), C.4.3.1.4 (C-GET), A.4.2 (C-ECHO), PS3.7 10.1 (N-services).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

from pacskit.dicom.status import Status
from pacskit.net import dimse
from pacskit.dicom.part10 import encode_file_meta
from pacskit.net.sinks import DatasetSink, MemorySink, Part10FileSink, ReceivedDataset

if TYPE_CHECKING:
    import asyncio

    from pydicom.dataset import Dataset

    from pacskit.net.association import Association
    from pacskit.net.presentation import PresentationContext


@dataclass(slots=True)
class Response:
    """One response message: a status, an optional dataset, extra command elements.

    ``dataset`` may be a pydicom ``Dataset`` (encoded in the context's transfer syntax by the engine) or
    already-encoded ``bytes``. ``elements`` adds command set elements by keyword, e.g.
    ``ErrorComment``, ``OffendingElement``, ``NumberOfRemainingSuboperations``, ``AffectedSOPInstanceUID``.
    """

    status: int
    dataset: Dataset | bytes | None = None
    elements: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OperationContext:
    """The DIMSE operation being handled, as :data:`current_operation` gives it to code it calls.

    Set by the engine around every handler invocation (also inside the handler thread of a plain
    function handler), so log records, audit events and the transaction log can say which association
    and which calling AE they belong to without the handler passing anything on.
    """

    association_id: int
    calling_ae: str
    called_ae: str
    peer_address: str
    service: str
    message_id: int


#: The operation the current code runs for, or ``None`` outside any handler.
current_operation: ContextVar[OperationContext | None] = ContextVar("pacskit_current_operation", default=None)


HandlerResult = Union[int, Response, Iterator[Any], AsyncIterator[Any], None]
Handler = Callable[["Request"], Union[HandlerResult, Awaitable[HandlerResult]]]

class InlineHandler:
    """A plain function handler that may run on the event loop's own thread.

    ``InlineHandler(fn)`` is registered (or returned from :meth:`pacskit.services.AddIn.handlers`) like
    ``fn`` and is called like it. The engine runs ``fn`` on the event loop's thread instead of the
    thread pool when the association is the only connection open on its loop (with
    :attr:`~pacskit.net.config.NetConfig.inline_handlers`, the default, over plain TCP, and when
    ``when(request)`` is true if given); otherwise in the pool, as any plain function. Running
    inline saves the hand-off to a pool thread and the one back (two thread wake-ups, and the loop's
    wake-up through its self-pipe): on a small C-STORE, where the handler itself takes well under a
    millisecond, that is a large part of the round trip. While it runs nothing else of the loop
    does, which is why it is done only when no other DICOM connection is open on the loop (a request
    of an HTTP listener on the same loop waits for the call to end). On a machine whose CPUs are
    busy with other processes the one thread doing all the work can lose time to the scheduler
    (several threads each running briefly fared better there); ``NetConfig.inline_handlers=False``
    (``inline_handlers = false`` in ``server.toml``) keeps every plain handler in the pool.

    What ``fn`` promises by being wrapped: it never waits for the event loop (no
    ``asyncio.run_coroutine_threadsafe(...).result()``, no requestor call on an association of
    this loop: that would deadlock), it is thread-safe (it may run in the pool at the same time),
    and it usually returns within milliseconds. ``when`` (called on the loop, must be quick) can
    withhold the inline run for a request, e.g. while code the handler calls makes no such promise.

    The timeout contract is the pool's: a call that is still running after the handler's timeout is
    answered with the service's failure status and an Error Comment, on time, by the watchdog thread
    (:mod:`pacskit.net.watchdog`), which writes the response straight to the socket (the loop is
    busy running the handler); if it cannot (something else is waiting to be sent), it cuts the
    connection instead, so the peer is never left waiting. What the handler returns afterwards is
    discarded, as for a handler in the pool that overran.

    ``brief`` (called on the loop, must be quick) lets a request run inline although other DICOM
    connections share the loop: it answers true when this call will wait only briefly (a local
    disk's flush, an uncontended local database write: well under a millisecond), so that the
    other connections lose less by waiting for it than every request pays for two thread hand-offs
    and the contention of the pool's threads for the GIL. Measured on the Storage add-in with eight
    storescu associations (``benchmarks/ingest_cpu.py``): server CPU per small instance 0.84-1.04 ms
    inline against 1.47-2.58 ms in the pool. Without ``brief`` (or when it answers false) the
    handler runs inline only on a loop with no other connection."""

    __slots__ = ("handler", "when", "brief", "__weakref__")

    def __init__(self, handler: Callable[[Request], Any], *, when: Callable[[Request], bool] | None = None,
                 brief: Callable[[Request], bool] | None = None) -> None:
        if inspect.iscoroutinefunction(handler) or inspect.isgeneratorfunction(handler) or inspect.isasyncgenfunction(handler):
            raise TypeError(f"{handler!r}: only a plain function handler may run inline (not async, not a generator)")
        self.handler = handler
        self.when = when
        self.brief = brief

    def __call__(self, request: Request) -> Any:
        return self.handler(request)

    def __repr__(self) -> str:
        return f"InlineHandler({self.handler!r})"


#: Called on the event loop for every incoming request that has a handler, before the handler: return
#: ``None`` to let it run, or the (final) :class:`Response` to answer instead, e.g. 0x0124 Refused: Not
#: Authorized. Must be quick and must not block (it runs on the event loop).
Authorizer = Callable[["Request"], Union["Response", None]]


class Request:
    """A DIMSE request as a handler sees it. Values are decoded lazily; nothing is parsed unless asked.

    - ``assoc``: the :class:`~pacskit.net.association.Association` (peer AE title, address, contexts,
      user identity; and the requestor API for sub-operations, e.g. C-GET's C-STOREs)
    - ``context``: the presentation context the request arrived on
    - ``command``: the :class:`~pacskit.net.dimse.Command`
    - ``received``: the dataset as it arrived (:class:`~pacskit.net.sinks.ReceivedDataset`), or ``None``
    - ``cancelled``: set when the peer sent C-CANCEL for this request (C-FIND, C-MOVE, C-GET)
    """

    __slots__ = ("assoc", "context", "command", "received", "cancelled", "_dataset")

    def __init__(
        self,
        assoc: Association,
        context: PresentationContext,
        command: dimse.Command,
        received: ReceivedDataset | None,
        cancelled: asyncio.Event,
    ) -> None:
        self.assoc = assoc
        self.context = context
        self.command = command
        self.received = received
        self.cancelled = cancelled
        self._dataset: Dataset | None = None

    @property
    def service(self) -> str:
        return dimse.CommandField(self.command.command_field).service

    @property
    def message_id(self) -> int:
        return int(self.command.get("MessageID", 0))

    @property
    def sop_class_uid(self) -> str:
        return str(self.command.get("AffectedSOPClassUID") or self.command.get("RequestedSOPClassUID") or "")

    @property
    def sop_instance_uid(self) -> str:
        return str(self.command.get("AffectedSOPInstanceUID") or self.command.get("RequestedSOPInstanceUID") or "")

    @property
    def dataset_path(self) -> str | None:
        """The received Part 10 file (C-STORE), for handlers that move or hash it without decoding."""
        return self.received.path if self.received is not None else None

    @property
    def dataset(self) -> Dataset | None:
        """The dataset (or identifier) decoded with pydicom on first access."""
        if self._dataset is None and self.received is not None:
            self._dataset = self.received.decode()
        return self._dataset


@dataclass(slots=True)
class _Entry:
    handler: Handler
    timeout: float | None
    owner: str


class DuplicateHandler(ValueError):
    """Two handlers claim the same (service, abstract syntax)."""


def failure_status(service: str) -> int:
    """The generic failure status for ``service`` used when a handler fails or times out."""
    if service in ("C-STORE", "C-FIND", "C-MOVE", "C-GET"):
        return Status.UNABLE_TO_PROCESS  # Error: cannot understand / unable to process
    return Status.PROCESSING_FAILURE  # Processing failure (PS3.7 C.4.8)


class Services:
    """The registry of handlers an acceptor (or a requestor, for C-GET and N-EVENT-REPORT) dispatches to.

    Registration is per service name and abstract syntax; ``abstract_syntaxes=None`` registers a
    fallback for every abstract syntax of that service. Exactly one handler owns each pair: a second
    registration raises :class:`DuplicateHandler` naming both owners.

    ``authorizer`` (an :data:`Authorizer`, default none) sees every request before its handler and may
    answer it instead: the one place where "may this peer do this?" is decided, so handlers never
    repeat it.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str | None], _Entry] = {}
        self.authorizer: Authorizer | None = None

    def register(
        self,
        service: str,
        handler: Handler,
        abstract_syntaxes: Iterable[str] | None = None,
        *,
        timeout: float | None = None,
        owner: str = "",
    ) -> None:
        service = service.upper()
        if service not in _SERVICES:
            raise ValueError(f"unknown DIMSE service {service!r}; one of {', '.join(sorted(_SERVICES))}")
        keys: list[str | None] = (
            [None if uid == "*" else uid for uid in abstract_syntaxes] if abstract_syntaxes is not None else [None]
        )
        owner = owner or getattr(handler, "__qualname__", repr(handler))
        for key in keys:
            existing = self._entries.get((service, key))
            if existing is not None:
                raise DuplicateHandler(
                    f"{service} for {key or 'any abstract syntax'} is claimed by both "
                    f"{existing.owner!r} and {owner!r}"
                )
        for key in keys:
            self._entries[(service, key)] = _Entry(handler, timeout, owner)

    def unregister(self, owner: str) -> None:
        """Remove every registration made under ``owner`` (for reloads and tests)."""
        for key in [k for k, e in self._entries.items() if e.owner == owner]:
            del self._entries[key]

    def lookup(self, service: str, abstract_syntax: str) -> tuple[Handler, float | None] | None:
        entry = self._entries.get((service, abstract_syntax)) or self._entries.get((service, None))
        return (entry.handler, entry.timeout) if entry is not None else None

    def open_sink(self, assoc: Association, context: PresentationContext, command: dimse.Command) -> DatasetSink:
        """Where an incoming dataset goes. Subclass or replace to store straight into a blob store."""
        config = assoc.config
        if command.command_field == dimse.CommandField.C_STORE_RQ:
            header = encode_file_meta(
                str(command.get("AffectedSOPClassUID", "")),
                str(command.get("AffectedSOPInstanceUID", "")),
                context.transfer_syntax,
                assoc.config.implementation_class_uid,
                assoc.config.implementation_version_name,
                assoc.remote_ae_title,
            )
            return Part10FileSink(
                config.temp_dir, header, context.transfer_syntax, config.max_dataset_size, config.fsync_received,
                config.spare_temp_files, source_ae=assoc.remote_ae_title,
            )
        return MemorySink(context.transfer_syntax, config.max_memory_dataset)


_SERVICES = {
    "C-STORE",
    "C-FIND",
    "C-GET",
    "C-MOVE",
    "C-ECHO",
    "N-EVENT-REPORT",
    "N-GET",
    "N-SET",
    "N-ACTION",
    "N-CREATE",
    "N-DELETE",
}
