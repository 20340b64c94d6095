"""The requestor API: ``echo``, ``store``, ``find``, ``move``, ``get``, ``n_request``, ``cancel``,
``release``, ``abort`` on an association, and :func:`connect`, which opens one.
"""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, Self, Union

from pacskit.dicom.codec import encode_dataset
from pacskit.dicom.part10 import WHOLE_FILE_LIMIT, Part10Info, read_part10
from pacskit.dicom.uids import VERIFICATION_SOP_CLASS
from pacskit.dicom.status import PENDING_STATUSES
from pacskit.net import dimse, pdu
from pacskit.net import events as ev
from pacskit.net.base import AssociationBase
from pacskit.net.config import NetConfig
from pacskit.net.dimse import Command, CommandField
from pacskit.net.errors import AssociationAborted, AssociationRejected, ConnectionFailed, NetTimeout, NoAcceptableContext
from pacskit.net.presentation import PresentationContext, RequestedContext, build_requested
from pacskit.net.services import Services
from pacskit.net.sinks import ReceivedDataset

if TYPE_CHECKING:
    import ssl as _ssl

    from pydicom.dataset import Dataset

    from pacskit.net.association import Association


class _Responses:
    """The responses to one request as they arrive: what :class:`asyncio.Queue` does for one consumer
    (no task accounting, no event), a few microseconds less on every C-STORE sub-operation and on
    every C-FIND answer received."""

    __slots__ = ("_items", "_getter", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._getter: asyncio.Future[None] | None = None
        self._loop = loop

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def get_nowait(self) -> Any:
        return self._items.popleft()

    async def get(self) -> Any:
        while not self._items:
            self._getter = self._loop.create_future()
            try:
                await self._getter
            finally:
                self._getter = None
        return self._items.popleft()


DatasetSource = Union[str, os.PathLike[str], "Dataset"]



class Requestor(AssociationBase):
    """The requestor part of :class:`~pacskit.net.association.Association`."""

    # ------------------------------------------------------------------ requestor API

    def _new_message_id(self) -> int:
        self._next_message_id = self._next_message_id % 0xFFFF + 1
        return self._next_message_id

    def find_context(self, abstract_syntax: str, transfer_syntax: str | None = None, *, as_scu: bool = True) -> PresentationContext:
        """An accepted context for ``abstract_syntax`` (and ``transfer_syntax`` if given) where we may act
        as SCU (``as_scu``) or SCP; raises :class:`NoAcceptableContext`."""
        for pc in self.contexts.values():
            if (
                pc.accepted
                and pc.abstract_syntax == abstract_syntax
                and (transfer_syntax is None or pc.transfer_syntax == transfer_syntax)
                and (pc.as_scu if as_scu else pc.as_scp)
            ):
                return pc
        wanted = f"{abstract_syntax}" + (f" in {transfer_syntax}" if transfer_syntax else "")
        raise NoAcceptableContext(f"no accepted presentation context for {wanted}")

    async def request(
        self,
        command_field: CommandField,
        sop_class_uid: str,
        dataset: bytes | tuple[str | os.PathLike[str], int, int] | Dataset | None = None,
        *,
        context: PresentationContext | None = None,
        **elements: Any,
    ) -> AsyncIterator[tuple[Command, ReceivedDataset | None]]:
        """Send one request and yield its responses until the final one (the generic DIMSE call).

        Pending responses are yielded as they come; the iterator ends after the first non-Pending status.
        Raises :class:`NetTimeout` when a response takes longer than ``dimse_timeout``.
        """
        ctx = context or self.find_context(sop_class_uid)
        message_id = self._new_message_id()
        data: Any = dataset
        if dataset is not None and not isinstance(dataset, (bytes, tuple)):
            data = encode_dataset(dataset, ctx.transfer_syntax)
        command = dimse.request_command(command_field, message_id, sop_class_uid, has_dataset=data is not None, **elements)
        queue = _Responses(self._loop)
        self._waiters[message_id] = queue
        try:
            await self.send_message(ctx.id, command, data)
            self.dul.flush()  # nothing to gather before the answer comes: leave now, not next loop turn
            timeout = self.config.dimse_timeout
            while True:
                if not queue.empty():  # responses that arrived together: no timer, no task
                    item = queue.get_nowait()
                else:
                    try:
                        async with asyncio.timeout(timeout or None):
                            item = await queue.get()
                    except TimeoutError:
                        raise NetTimeout(f"no DIMSE response within {timeout} s") from None
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item[0].status not in PENDING_STATUSES:
                    return
        finally:
            self._waiters.pop(message_id, None)

    async def _single(self, command_field: CommandField, sop_class_uid: str, dataset: Any = None, **kw: Any) -> tuple[Command, ReceivedDataset | None]:
        last: tuple[Command, ReceivedDataset | None] | None = None
        async for last in self.request(command_field, sop_class_uid, dataset, **kw):
            pass
        assert last is not None
        return last

    async def echo(self) -> int:
        """C-ECHO; returns the status (0x0000 on success)."""
        rsp, _ = await self._single(CommandField.C_ECHO_RQ, VERIFICATION_SOP_CLASS)
        return rsp.status

    async def store(
        self,
        source: DatasetSource,
        *,
        priority: int = dimse.PRIORITY_MEDIUM,
        move_originator: tuple[str, int] | None = None,
        preread: tuple[Part10Info, bytes] | None = None,
    ) -> Command:
        """C-STORE a Part 10 file (streamed from disk in PDU-sized pieces) or a pydicom Dataset.

        The file is sent as stored: an accepted context must have its SOP class and transfer syntax
        (conversion belongs to the client framework). ``preread`` is what
        :func:`~pacskit.dicom.part10.read_part10` returned for this file with its dataset (a caller that
        read it while the previous C-STORE was in flight). Returns the C-STORE-RSP command set.
        """
        extra: dict[str, Any] = {"Priority": priority}
        if move_originator is not None:
            extra["MoveOriginatorApplicationEntityTitle"] = move_originator[0]
            extra["MoveOriginatorMessageID"] = move_originator[1]
        if isinstance(source, (str, os.PathLike)):
            # a small file is read whole, once; a bigger one is streamed from disk in blocks
            info, whole = preread if preread is not None else read_part10(source, whole_below=WHOLE_FILE_LIMIT)
            ctx = self.find_context(info.sop_class_uid, info.transfer_syntax)
            data: Any = whole if whole is not None else (source, info.dataset_offset, info.file_size - info.dataset_offset)
            sop_class, sop_instance = info.sop_class_uid, info.sop_instance_uid
        else:
            sop_class, sop_instance = str(source.SOPClassUID), str(source.SOPInstanceUID)
            ctx = self.find_context(sop_class)
            data = encode_dataset(source, ctx.transfer_syntax)
        rsp, _ = await self._single(
            CommandField.C_STORE_RQ, sop_class, data, context=ctx, AffectedSOPInstanceUID=sop_instance, **extra
        )
        return rsp

    async def find(self, sop_class_uid: str, identifier: Dataset, *, priority: int = 0) -> AsyncIterator[tuple[int, Dataset | None]]:
        """C-FIND: yields ``(status, identifier)`` for each response, ending with the final status."""
        async for rsp, received in self.request(CommandField.C_FIND_RQ, sop_class_uid, identifier, Priority=priority):
            yield rsp.status, received.decode() if received is not None else None

    async def move(self, sop_class_uid: str, identifier: Dataset, destination: str, *, priority: int = 0) -> AsyncIterator[Command]:
        """C-MOVE to ``destination``: yields each response command set (sub-operation counts, status)."""
        async for rsp, received in self.request(
            CommandField.C_MOVE_RQ, sop_class_uid, identifier, Priority=priority, MoveDestination=destination
        ):
            if received is not None:
                received.discard()
            yield rsp

    async def get(self, sop_class_uid: str, identifier: Dataset, *, priority: int = 0) -> AsyncIterator[Command]:
        """C-GET: the C-STORE sub-operations arrive on this association and go to this association's
        ``services`` ("C-STORE" handler); yields each C-GET response command set."""
        async for rsp, received in self.request(CommandField.C_GET_RQ, sop_class_uid, identifier, Priority=priority):
            if received is not None:
                received.discard()
            yield rsp

    async def cancel(self, message_id: int, context: PresentationContext) -> None:
        """Send C-CANCEL for an outstanding C-FIND / C-MOVE / C-GET."""
        cmd = Command({"CommandField": int(CommandField.C_CANCEL_RQ), "MessageIDBeingRespondedTo": message_id, "CommandDataSetType": dimse.NO_DATASET})
        await self.send_message(context.id, cmd)

    @property
    def last_message_id(self) -> int:
        """The message ID of the most recent request (for :meth:`cancel`)."""
        return self._next_message_id

    async def n_request(
        self,
        command_field: CommandField,
        sop_class_uid: str,
        dataset: Dataset | bytes | None = None,
        *,
        context: PresentationContext | None = None,
        **elements: Any,
    ) -> tuple[Command, Dataset | None]:
        """Any DIMSE-N request (N-EVENT-REPORT, N-GET, N-SET, N-ACTION, N-CREATE, N-DELETE); returns the
        response command set and its decoded dataset. Pass ``AffectedSOPInstanceUID`` /
        ``RequestedSOPInstanceUID``, ``EventTypeID``, ``ActionTypeID``, ``AttributeIdentifierList`` as
        keyword arguments.

        ``context``: the presentation context to send on. By default, an accepted context for
        ``sop_class_uid`` on which this side may act as SCU. An SCP that sends a request back to its
        requestor on the association the requestor opened — a storage commitment SCP's N-EVENT-REPORT
        (PS3.4 J.3.3), which needs no role negotiation — passes the context the original request
        arrived on (``request.context``). This works on both sides of an association: responses are
        matched by message ID, and requests the peer sends meanwhile are still served. Check
        :attr:`is_open` first: after the peer asked for release, nothing new may be sent."""
        rsp, received = await self._single(command_field, sop_class_uid, dataset, context=context, **elements)
        return rsp, received.decode() if received is not None else None

    async def release(self) -> None:
        """A-RELEASE; waits for A-RELEASE-RP (``acse_timeout``), aborting if it does not come."""
        if self.is_released or self.is_aborted or not self.is_established:
            return
        if not self.dul.release_request():
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._release_done), self.config.acse_timeout)
        except TimeoutError:
            self.abort()
            raise NetTimeout(f"no A-RELEASE-RP within {self.config.acse_timeout} s; aborted") from None
        except AssociationAborted:
            pass
        await self._wait_closed(self.config.artim_timeout)

    def abort(self) -> None:
        """A-ABORT (service-user source). Safe to call at any time."""
        self.dul.abort()

    async def _wait_closed(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self.dul.closed), timeout)
        except TimeoutError:
            if self.dul.transport is not None:
                self.dul.transport.abort()

    async def wait_closed(self) -> None:
        await asyncio.shield(self.dul.closed)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None or not issubclass(exc_type, BaseException) or exc_type is GeneratorExit:
            await self.release()
        else:
            self.abort()
            await self._wait_closed(2.0)



async def connect(
    host: str,
    port: int,
    *,
    called_ae: str,
    calling_ae: str = "PACSKIT",
    contexts: Sequence[RequestedContext],
    config: NetConfig | None = None,
    ssl: _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    services: Services | None = None,
    bus: ev.EventBus | None = None,
    user_identity: pdu.UserIdentityRQ | None = None,
    extended_negotiation: dict[str, bytes] | None = None,
    common_extended_negotiation: Sequence[pdu.CommonExtendedNegotiation] = (),
    async_ops: tuple[int, int] | None = None,
    executor: Executor | None = None,
) -> Association:
    """Open an association as requestor and return it once accepted.

    Raises :class:`ConnectionFailed` (refused, unreachable, TLS failure), :class:`AssociationRejected`
    (with the peer's result/source/reason), :class:`AssociationAborted`, or :class:`NetTimeout`
    (``acse_timeout``). Use as ``async with await connect(...) as assoc:`` to release on exit.
    ``services`` answers requests the peer sends us on this association (C-GET's C-STOREs,
    N-EVENT-REPORTs).
    """
    from pacskit.net.association import Association  # the whole association, made of this and its other parts

    config = config or NetConfig()
    assoc = Association(
        is_requestor=True,
        local_ae_title=calling_ae,
        config=config,
        bus=bus or ev.EventBus(),
        services=services or Services(),
        executor=executor,
    )
    assoc.remote_ae_title = called_ae
    items, roles = build_requested(contexts)
    rq = pdu.AssociateRQ(
        called_ae,
        calling_ae,
        items,
        pdu.UserInformation(
            max_pdu_length=config.max_pdu_length,
            implementation_class_uid=config.implementation_class_uid,
            implementation_version_name=config.implementation_version_name,
            async_ops=async_ops,
            roles=roles,
            extended_negotiation=dict(extended_negotiation or {}),
            common_extended_negotiation=list(common_extended_negotiation),
            user_identity=user_identity,
        ),
    )
    assoc.requested = rq
    assoc.dul.send_associate_rq(rq)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(
            loop.create_connection(lambda: assoc.dul, host, port, ssl=ssl, server_hostname=server_hostname if ssl else None),
            config.acse_timeout,
        )
    except TimeoutError:
        raise ConnectionFailed(f"cannot connect to {host}:{port}: timed out after {config.acse_timeout} s") from None
    except ConnectionRefusedError as exc:
        raise ConnectionFailed(f"cannot connect to {host}:{port}: connection refused") from exc
    except OSError as exc:
        raise ConnectionFailed(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
    try:
        await asyncio.wait_for(asyncio.shield(assoc._established), config.acse_timeout)
    except TimeoutError:
        assoc.abort()
        raise NetTimeout(f"no answer to A-ASSOCIATE-RQ from {host}:{port} within {config.acse_timeout} s") from None
    except AssociationRejected:
        await assoc._wait_closed(1.0)
        raise
    return assoc


