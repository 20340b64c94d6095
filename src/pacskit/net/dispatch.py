"""Requests to handlers: one request worker per association (asynchronous operations window 1/1)
finds the handler in :class:`~pacskit.net.services.Services`, runs it (coroutines on the loop, plain
functions and generators in the thread pool) and turns what it returns into responses.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TYPE_CHECKING, cast

from pacskit.dicom.codec import encode_dataset
from pacskit.dicom.status import PENDING_STATUSES, Status
from pacskit.net import dimse, watchdog
from pacskit.net import events as ev
from pacskit.net.assembly import fragments
from pacskit.net.base import CANCELLABLE, MULTI_RESPONSE, RELEASE, AssociationBase, address_text, log
from pacskit.net.dimse import Command, CommandField
from pacskit.net.errors import AssociationAborted, DimseError
from pacskit.net.presentation import PresentationContext
from pacskit.net.dul import open_connections
from pacskit.net.services import InlineHandler, OperationContext, Request, Response, current_operation, failure_status
from pacskit.net.sinks import DatasetTooLarge, ReceivedDataset

if TYPE_CHECKING:
    from pacskit.net.association import Association

#: answers a plain generator handler is asked for in the first hop to the thread pool, in each later
#: one, and per write; a hop also ends after BATCH_SECONDS (see Dispatch._send_from_thread)
FIRST_BATCH = 8
MAX_BATCH = 1024
SEND_EVERY = 32
BATCH_SECONDS = 0.02


def _pull(items: Iterator[Any], size: int, cancelled: asyncio.Event) -> tuple[list[Any], bool]:
    """Up to ``size`` responses from ``items`` (in the thread pool; lists are flattened): stops early
    after a final response, after :data:`BATCH_SECONDS`, or once the request was cancelled. Returns
    the responses and whether the generator ended (exhausted, or a final response)."""
    out: list[Any] = []
    deadline = time.monotonic() + BATCH_SECONDS
    while len(out) < size:
        try:
            item = next(items)
        except StopIteration:
            return out, True
        batch = item if type(item) is list else [item]
        out += batch
        for response in batch:
            status = response.status if isinstance(response, Response) else int(response)
            if status not in PENDING_STATUSES:
                return out, True
        if cancelled.is_set() or time.monotonic() > deadline:
            break
    return out, False


# responses that carry no Affected SOP Instance UID (PS3.7 9.3.2.2, 9.3.3.2, 9.3.4.2)
_NO_INSTANCE_IN_RESPONSE = frozenset({CommandField.C_FIND_RQ, CommandField.C_MOVE_RQ, CommandField.C_GET_RQ})


class Dispatch(AssociationBase):
    """The dispatch part of :class:`~pacskit.net.association.Association`."""

    # ------------------------------------------------------------------ request dispatch

    async def _serve_requests(self) -> None:
        queue = self._requests
        while True:
            item = await queue.get()
            if item is None:
                # drain anything left (association ended): remove temp files
                while not queue.empty():
                    leftover = queue.get_nowait()
                    if isinstance(leftover, tuple) and leftover[2] is not None:
                        leftover[2].discard()
                return
            if item is RELEASE:
                if self.dul.release_response():
                    self._finish_release()
                return
            ctx, command, received, error = item
            if command.command_field in CANCELLABLE:
                message_id = int(command.get("MessageID", 0))
                self._queued_ids[message_id] -= 1
                if self._queued_ids[message_id] <= 0:
                    del self._queued_ids[message_id]
            self._handling = True
            try:
                await self._handle(ctx, command, received, error)
            except AssociationAborted:
                pass
            except Exception:
                log.exception("%s: failure while answering a request", self.label)
            finally:
                self._handling = False
                if received is not None:
                    received.discard()

    async def _handle(
        self, ctx: PresentationContext, command: Command, received: ReceivedDataset | None, error: BaseException | None
    ) -> None:
        """Dispatch one request with the operation context set (log lines of the handler carry it), and
        tell ``operation-completed`` observers how it ended (only built when someone listens)."""
        try:
            service = CommandField(command.command_field).service
        except ValueError:
            service = f"0x{command.command_field:04X}"
        token = current_operation.set(
            OperationContext(self.id, self.remote_ae_title, self.local_ae_title, address_text(self.peer_address), service,
                             int(command.get("MessageID", 0)))
        )
        self._final_response = None
        started_wall = time.time()
        started = time.monotonic()
        sent_before = self.dataset_bytes_sent
        try:
            await self._dispatch(ctx, command, received, error)
        finally:
            if self._early_cancels:  # not honoured (refused before the handler ran): forget it
                self._early_cancels.discard(int(command.get("MessageID", 0)))
            current_operation.reset(token)
            if self.bus.wants(ev.OPERATION_COMPLETED):
                final = self._final_response
                self.bus.emit(
                    ev.OPERATION_COMPLETED,
                    cast("Association", self),
                    service=service,
                    command=command,
                    abstract_syntax=ctx.abstract_syntax,
                    transfer_syntax=ctx.transfer_syntax,
                    status=final.status if final is not None else None,
                    final_elements=dict(final.elements) if final is not None else {},
                    started=started_wall,
                    duration=time.monotonic() - started,
                    bytes_received=received.size if received is not None else 0,
                    bytes_sent=self.dataset_bytes_sent - sent_before,
                    identifier=received.data if received is not None else None,
                )

    async def _dispatch(
        self, ctx: PresentationContext, command: Command, received: ReceivedDataset | None, error: BaseException | None
    ) -> None:
        field = command.command_field
        try:
            service = CommandField(field).service
        except ValueError:
            log.warning("%s: unknown command field 0x%04X", self.label, field)
            await self._respond(ctx, command, Response(Status.UNRECOGNIZED_OPERATION, elements={"ErrorComment": "unrecognized operation"}))
            return
        if error is not None:
            status = Status.OUT_OF_RESOURCES if _is_resource_error(error) else failure_status(service)
            log.error("%s: %s %s could not be received: %s", self.label, service, command.get("AffectedSOPInstanceUID", ""), error)
            await self._respond(ctx, command, Response(status, elements={"ErrorComment": _comment(error)}))
            return
        entry = self.services.lookup(service, ctx.abstract_syntax)
        if entry is None or (service.startswith("C-") and not ctx.as_scp):
            log.warning("%s: no handler for %s on %s", self.label, service, ctx)
            await self._respond(ctx, command, Response(Status.UNRECOGNIZED_OPERATION, elements={"ErrorComment": f"{service} not served here"}))
            return
        handler, timeout = entry
        cancelled = asyncio.Event()
        message_id = int(command.get("MessageID", 0))
        request = Request(cast("Association", self), ctx, command, received, cancelled)
        authorizer = self.services.authorizer
        if authorizer is not None:
            try:
                refusal = authorizer(request)
            except Exception:
                log.exception("%s: request authorizer failed; refusing %s", self.label, service)
                refusal = Response(failure_status(service), elements={"ErrorComment": "authorization failed"})
            if refusal is not None:
                await self._respond(ctx, command, refusal)
                return
        if service in MULTI_RESPONSE:
            self._cancels[message_id] = cancelled
            if message_id in self._early_cancels:  # C-CANCEL came while the request waited (PS3.7 9.3.2.3)
                self._early_cancels.discard(message_id)
                cancelled.set()
        try:
            result = await self._call(handler, request, timeout)
            await self._send_results(request, result, timeout, service)
        except _AnsweredByWatchdog:
            pass  # the failure response was sent (or the connection cut) when the timeout passed
        except TimeoutError:
            log.error("%s: %s handler %r did not answer within %s s", self.label, service, handler, timeout)
            await self._respond(
                ctx, command, Response(failure_status(service), elements={"ErrorComment": f"processing timed out after {timeout} s"})
            )
        except AssociationAborted:
            raise
        except Exception as exc:
            log.exception("%s: %s handler failed", self.label, service)
            await self._respond(ctx, command, Response(failure_status(service), elements={"ErrorComment": _comment(exc)}))
        finally:
            self._cancels.pop(message_id, None)

    async def _call(self, handler: Callable[[Request], Any], request: Request, timeout: float | None) -> Any:
        if inspect.iscoroutinefunction(handler):
            coro = handler(request)
            return await (asyncio.wait_for(coro, timeout) if timeout else coro)
        if inspect.isasyncgenfunction(handler) or inspect.isgeneratorfunction(handler):
            return handler(request)
        if type(handler) is InlineHandler:
            if self._may_run_inline(handler, request):
                result = self._run_inline(handler.handler, request, timeout)
                if inspect.isawaitable(result):
                    result = await (asyncio.wait_for(result, timeout) if timeout else result)
                return result
            handler = handler.handler
        # the handler's thread sees the operation context (contextvars do not cross threads)
        future = self._in_thread(contextvars.copy_context().run, handler, request)
        if timeout:
            async with asyncio.timeout(timeout):
                result = await future
        else:
            result = await future
        if inspect.isawaitable(result):
            result = await (asyncio.wait_for(result, timeout) if timeout else result)
        return result

    def _may_run_inline(self, handler: InlineHandler, request: Request) -> bool:
        """Whether this request's :class:`InlineHandler` runs on the loop's thread: allowed by the
        config, a plain socket (the watchdog can answer on it), the handler's own ``when``, and either
        the association alone on its loop (nothing else waits for the loop meanwhile) or the
        handler's ``brief`` saying this call keeps the others waiting only briefly."""
        if not self.config.inline_handlers or not self.dul.plain_socket:
            return False
        try:
            if open_connections(self._loop) != 1 and (handler.brief is None or not handler.brief(request)):
                return False
            return handler.when is None or bool(handler.when(request))
        except Exception:
            log.exception("%s: the inline condition of %r failed; the handler runs in the thread pool", self.label, handler)
            return False

    def _run_inline(self, fn: Callable[[Request], Any], request: Request, timeout: float | None) -> Any:
        """Call ``fn`` on the loop's thread, under the watchdog when it has a timeout (see
        :class:`InlineHandler`). Raises :class:`_AnsweredByWatchdog` when the watchdog answered the
        request meanwhile (whatever ``fn`` returned or raised: it is logged and dropped)."""
        context = contextvars.copy_context()  # the handler's context variables stay its own, as in a thread
        if not timeout:
            return context.run(fn, request)
        call = watchdog.WATCHDOG.begin(timeout, lambda: self._overrun(fn, request, timeout))
        try:
            result = context.run(fn, request)
        except BaseException:
            if watchdog.WATCHDOG.end(call):
                log.warning("%s: %s handler %r raised after its timeout was answered", self.label, request.service, fn,
                            exc_info=True)
                raise _AnsweredByWatchdog from None
            raise
        if watchdog.WATCHDOG.end(call):
            log.warning("%s: %s handler %r returned after its timeout was answered; its result is dropped",
                        self.label, request.service, fn)
            _run_dropped(result, self.label)
            raise _AnsweredByWatchdog
        return result

    def _overrun(self, fn: Callable[[Request], Any], request: Request, timeout: float) -> None:
        """On the watchdog's thread: an inline handler is still running after ``timeout`` seconds. Its
        failure response goes straight to the socket (the loop's thread is in the handler), as the
        loop sends it for a handler in the pool that overruns; if it cannot, the connection is cut."""
        ctx, command = request.context, request.command
        service = request.service
        response = Response(failure_status(service), elements={"ErrorComment": f"processing timed out after {timeout} s"})
        data: bytes | None = None
        try:
            cmd = _response_command(command, response, has_dataset=False)
            data = b"".join(fragments(cmd.encode(), ctx.id, self._max_pdv_data(), command=True))
        except Exception:
            log.exception("%s: the timeout answer of %s could not be encoded", self.label, service)
        if self.dul.send_from_thread(data):
            self._final_response = response
            log.error("%s: %s handler %r did not answer within %s s (on the event loop's thread): answered 0x%04X",
                      self.label, service, fn, timeout, response.status)
        else:
            log.error("%s: %s handler %r did not answer within %s s (on the event loop's thread), and the answer "
                      "could not be sent: connection cut", self.label, service, fn, timeout)

    def _in_thread(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """``fn(*args)`` in the handler thread pool, its outcome in a future of the loop.

        What ``run_in_executor`` does, less its per-call machinery (a second future chained to the
        first, its state copied back by callbacks): one call per request on the C-STORE path. A
        handler that outlives its timeout still runs to its end; one that timed out while waiting for a thread
        never starts, as with ``run_in_executor``."""
        executor = self.executor
        if executor is None:
            return self._loop.run_in_executor(None, fn, *args)
        loop = self._loop
        future = loop.create_future()

        def run() -> None:
            if future.cancelled():  # timed out while queued for a thread: never started, as before
                return
            try:
                result = fn(*args)
            except BaseException as exc:
                outcome: tuple[Any, BaseException | None] = (None, exc)
            else:
                outcome = (result, None)
            try:
                loop.call_soon_threadsafe(_settle, future, outcome)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

        executor.submit(run)
        return future

    async def _send_results(self, request: Request, result: Any, timeout: float | None, service: str) -> None:
        ctx, command = request.context, request.command
        if isinstance(result, (int, Response)):
            await self._respond(ctx, command, result if isinstance(result, Response) else Response(int(result)))
            return
        if result is None:
            raise DimseError("handler returned no status")
        if hasattr(result, "__anext__"):
            aiter: AsyncIterator[Any] = result
            # One timeout scope for the whole stream (asyncio.wait_for per item would create a task
            # per response, most of the cost of a many-match C-FIND). Its deadline moves forward at
            # most once a second, so a handler gets between timeout - 1 and timeout seconds for each
            # item; it is disarmed while a slow peer holds up sending (that is not the handler's time).
            async with asyncio.timeout(None) as scope:
                while True:
                    if timeout:
                        deadline = self._loop.time() + timeout
                        when = scope.when()
                        if when is None or deadline - when > 1.0:
                            scope.reschedule(deadline)
                    try:
                        item = await aiter.__anext__()
                    except StopAsyncIteration:
                        break
                    if timeout and not self.dul.can_write:
                        scope.reschedule(None)
                    if await self._send_item(request, item):
                        await aiter.aclose() if hasattr(aiter, "aclose") else None
                        return
        elif hasattr(result, "__next__"):
            if await self._send_from_thread(request, result, timeout):
                return
        else:
            raise DimseError(f"handler returned {type(result).__name__}, not a status, Response or iterator")
        final = Status.CANCEL if request.cancelled.is_set() and service in MULTI_RESPONSE else Status.SUCCESS
        await self._respond(ctx, command, Response(final))

    async def _send_from_thread(self, request: Request, items: Iterator[Any], timeout: float | None) -> bool:
        """Send what a plain generator handler yields (C-FIND matches read from a database cursor):
        the generator runs in the thread pool, a batch per hop (:data:`FIRST_BATCH` answers first,
        so the first ones leave early and a peer that cancels after a few is heard while the next hop
        runs, then up to :data:`MAX_BATCH`, so a large result costs few hops; a hop also ends after
        :data:`BATCH_SECONDS`, so a slow generator's answers are not held back), and each batch is
        written :data:`SEND_EVERY` answers at a time with a turn of the event loop in between, where
        a C-CANCEL is read: no more is pulled once it has arrived. ``True`` when a final response
        was sent (the generator is then closed)."""
        step_context = contextvars.copy_context()  # the handler's log lines carry the operation
        cancelled = request.cancelled
        size = FIRST_BATCH
        ended = False
        try:
            while not ended and not cancelled.is_set():
                future = self._loop.run_in_executor(self.executor, step_context.run, _pull, items, size, cancelled)
                batch, ended = await (asyncio.wait_for(future, timeout) if timeout else future)
                size = MAX_BATCH
                for start in range(0, len(batch), SEND_EVERY):
                    if cancelled.is_set():
                        break
                    if await self._send_many(request, batch[start : start + SEND_EVERY]):
                        return True
                    await asyncio.sleep(0)  # the answers leave, and a C-CANCEL that arrived is read
            return False
        finally:
            if not ended and hasattr(items, "close"):
                # runs the generator's clean-up (closing a cursor) where it ran, off the event loop
                await self._loop.run_in_executor(self.executor, step_context.run, items.close)

    async def _send_item(self, request: Request, item: Any) -> bool:
        """Send one yielded response, or a list of them; ``True`` when one was final (not Pending)."""
        if type(item) is list:
            return await self._send_many(request, item)
        response = item if isinstance(item, Response) else Response(int(item))
        await self._respond(request.context, request.command, response)
        return response.status not in PENDING_STATUSES

    async def _send_many(self, request: Request, items: list[Any]) -> bool:
        """Responses yielded as one list (a page of C-FIND matches): the Pending ones with encoded
        datasets leave in one write, without a coroutine per answer; anything else is sent the usual
        way, in order. Items after a final response are ignored."""
        ctx, command = request.context, request.command
        max_data = self._max_pdv_data()
        pieces: list[bytes] = []
        for n, item in enumerate(items):
            response = item if isinstance(item, Response) else Response(int(item))
            data = response.dataset
            status = response.status
            if status in PENDING_STATUSES and type(data) is bytes and not response.elements:
                cmd, cmd_pdus = self._pending_command(ctx, command, status)
                pieces += self._message_start(ctx.id, cmd, len(data), cmd_pdus)
                pieces += fragments(data, ctx.id, max_data, command=False)
                continue
            if pieces:
                await self._send_pieces(pieces)
                pieces = []
            await self._respond(ctx, command, response)
            if status not in PENDING_STATUSES:
                if n + 1 < len(items):
                    log.warning("%s: %d responses after a final one ignored", self.label, len(items) - n - 1)
                return True
        if pieces:
            await self._send_pieces(pieces)
        return False

    def _pending_command(self, ctx: PresentationContext, request: Command, status: int) -> tuple[Command, list[bytes]]:
        """The Pending response command of ``request`` and its P-DATA pieces, built once per request:
        a stream of Pending answers (C-FIND matches) repeats one command set."""
        cached = self._pending_rsp
        if cached is None or cached[0] is not request or cached[1] != status:
            cmd = _response_command(request, Response(status), has_dataset=True)
            pdus = fragments(cmd.encode(), ctx.id, self._max_pdv_data(), command=True)
            cached = self._pending_rsp = (request, status, cmd, pdus)
        return cached[2], cached[3]

    async def _respond(self, ctx: PresentationContext, request: Command, response: Response) -> None:
        data: bytes | None = None
        if response.dataset is not None:
            data = response.dataset if isinstance(response.dataset, bytes) else encode_dataset(response.dataset, ctx.transfer_syntax)
        status = response.status
        if status in PENDING_STATUSES and data is not None and not response.elements:
            cmd, pdus = self._pending_command(ctx, request, status)
            await self.send_message(ctx.id, cmd, data, command_pdus=pdus)
            return
        cmd = _response_command(request, response, has_dataset=data is not None)
        if response.status not in PENDING_STATUSES:
            self._final_response = response
        await self.send_message(ctx.id, cmd, data)
        if response.status not in PENDING_STATUSES:
            self.dul.flush()  # a final answer: the peer waits for it, nothing more will be gathered


def _response_command(request: Command, response: Response, *, has_dataset: bool) -> Command:
    """The response command set to ``request`` (PS3.7 9.3 / 10.3): the Error Comment cut to its 64
    characters, and no Affected SOP Instance UID where the service's response has none. The one
    builder of the loop's answers, the cached Pending one and the watchdog's."""
    elements = dict(response.elements)
    if elements.get("ErrorComment"):
        elements["ErrorComment"] = str(elements["ErrorComment"])[:64]
    cmd = dimse.response_command(request, response.status, has_dataset=has_dataset, **elements)
    if request.command_field in _NO_INSTANCE_IN_RESPONSE:
        cmd.pop("AffectedSOPInstanceUID", None)
    return cmd


#: Awaitables that inline handlers returned after the watchdog had answered for them, run to their
#: end as tasks (the loop keeps only weak references to tasks).
_dropped_runs: set[asyncio.Task[Any]] = set()


def _run_dropped(result: Any, label: str) -> None:
    """Run an awaitable whose outcome nobody will answer with to its end: it may still have to settle
    what the handler began (the Storage add-in's ingest waiting for its flush), and a coroutine never
    awaited would do nothing at all. Its outcome is only logged."""
    if not inspect.isawaitable(result):
        return
    task = asyncio.ensure_future(result)
    _dropped_runs.add(task)

    def done(finished: asyncio.Task[Any]) -> None:
        _dropped_runs.discard(finished)
        if not finished.cancelled() and finished.exception() is not None:
            log.warning("%s: the dropped result of a handler failed: %s", label, finished.exception())

    task.add_done_callback(done)


class _AnsweredByWatchdog(Exception):
    """An inline handler overran its timeout and the watchdog answered the request."""


def _settle(future: asyncio.Future[Any], outcome: tuple[Any, BaseException | None]) -> None:
    """Give ``future`` the (result, exception) of :meth:`Dispatch._in_thread` unless it timed out."""
    if future.done():
        return
    result, exc = outcome
    if exc is None:
        future.set_result(result)
    else:
        future.set_exception(exc)


def _is_resource_error(exc: BaseException) -> bool:
    if isinstance(exc, DatasetTooLarge):
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE)


def _comment(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text.encode("ascii", "replace").decode("ascii")[:64]




