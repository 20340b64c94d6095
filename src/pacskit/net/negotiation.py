"""ACSE: association negotiation (both roles), release and abort (PS3.8 7.1-7.3).

Acceptor side an A-ASSOCIATE-RQ is checked (protocol version, application context, called AE,
association limit), then the ``on_associate`` hook decides, then the presentation contexts are
negotiated; requestor side the answer is matched with the proposal. Release waits for the requests
already received; an abort fails whatever waits.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, TYPE_CHECKING, Union, cast

from pacskit.net import events as ev
from pacskit.net import pdu
from pacskit.net.base import RELEASE, AssociationBase, address_text, log
from pacskit.net.errors import AssociationAborted, AssociationRejected
from pacskit.net.fsm import State
from pacskit.net.presentation import accepted_contexts, negotiate_as_acceptor

if TYPE_CHECKING:
    from pacskit.net.association import Association


class Reject(NamedTuple):
    """An A-ASSOCIATE-RJ decision: ``result`` 1 permanent / 2 transient, ``source`` and ``reason`` per PS3.8."""

    result: int
    source: int
    reason: int

    def describe(self) -> str:
        return pdu.AssociateRJ(*self).describe()


REJECT_CALLED_AE = Reject(pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, 7)
REJECT_CALLING_AE = Reject(pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, 3)
REJECT_NO_REASON = Reject(pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, 1)
REJECT_APPLICATION_CONTEXT = Reject(pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, 2)
REJECT_PROTOCOL_VERSION = Reject(pdu.RJ_PERMANENT, pdu.RJ_SOURCE_ACSE, 2)
REJECT_LOCAL_LIMIT = Reject(pdu.RJ_TRANSIENT, pdu.RJ_SOURCE_PRESENTATION, 2)
REJECT_CONGESTION = Reject(pdu.RJ_TRANSIENT, pdu.RJ_SOURCE_PRESENTATION, 1)

#: Acceptor decision hook: inspect the association (calling AE, address, user identity, proposed contexts)
#: and return a :class:`Reject` to refuse it, or ``None`` to go on. May fill
#: ``assoc.extended_negotiation_response`` and ``assoc.user_identity_response``.
AssociateHook = Callable[["Association"], Union[Reject, None, Awaitable[Union[Reject, None]]]]


class Negotiation(AssociationBase):
    """The ACSE part of :class:`~pacskit.net.association.Association`."""

    # ------------------------------------------------------------------ ACSE, acceptor side

    def on_associate_rq(self, rq: pdu.AssociateRQ) -> None:
        self.requested = rq
        self.remote_ae_title = rq.calling_ae_title
        self.peer_max_pdu = rq.user_info.max_pdu_length or 0
        self.peer_implementation_class_uid = rq.user_info.implementation_class_uid
        self.peer_implementation_version_name = rq.user_info.implementation_version_name
        self.user_identity = rq.user_info.user_identity
        self.extended_negotiation = dict(rq.user_info.extended_negotiation)
        self.common_extended_negotiation = list(rq.user_info.common_extended_negotiation)
        if self.bus.wants(ev.ASSOCIATION_REQUESTED):
            self.bus.emit(
                ev.ASSOCIATION_REQUESTED,
                cast("Association", self),
                calling_ae=rq.calling_ae_title,
                called_ae=rq.called_ae_title,
                contexts=rq.contexts,
            )
        task = self._loop.create_task(self._negotiate(rq))
        task.add_done_callback(self._log_task_error)

    async def _negotiate(self, rq: pdu.AssociateRQ) -> None:
        decision = self._check_request(rq)
        if decision is None and self._on_associate is not None:
            try:
                result = self._on_associate(cast("Association", self))
                if inspect.isawaitable(result):
                    result = await result
                decision = result
            except Exception:
                log.exception("%s: association hook failed; rejecting", self.label)
                decision = REJECT_NO_REASON
        if self.dul.state != State.STA3:
            return  # the peer gave up (abort / closed) while we were deciding
        if decision is not None:
            self._reject(decision)
            return
        negotiation = negotiate_as_acceptor(
            rq.contexts, self._supported, rq.user_info.roles, self.config.transfer_syntax_preference
        )
        self.contexts = negotiation.contexts
        info = pdu.UserInformation(
            max_pdu_length=self.config.max_pdu_length,
            implementation_class_uid=self.config.implementation_class_uid,
            implementation_version_name=self.config.implementation_version_name,
            async_ops=(1, 1) if rq.user_info.async_ops is not None else None,
            roles=negotiation.roles,
            extended_negotiation=self.extended_negotiation_response,
        )
        ui = rq.user_info.user_identity
        if self.user_identity_response is not None:
            info.user_identity_response = self.user_identity_response
        elif ui is not None and ui.positive_response_requested and ui.type in (1, 2):
            info.user_identity_response = b""  # username types: empty server response (PS3.7 D.3.3.7.2)
        ac = pdu.AssociateAC(rq.called_ae_title, rq.calling_ae_title, negotiation.ac_items, info)
        self.dul.associate_response(ac)
        self._became_established()
        if not self.accepted_contexts:
            log.warning("%s: no acceptable presentation context among %d proposed", self.label, len(rq.contexts))
        else:
            log.info(
                "%s: association accepted from %s (%d/%d contexts)",
                self.label,
                address_text(self.peer_address),
                len(self.accepted_contexts),
                len(rq.contexts),
            )

    def _check_request(self, rq: pdu.AssociateRQ) -> Reject | None:
        if not rq.protocol_version & 1:
            return REJECT_PROTOCOL_VERSION
        if rq.application_context != pdu.APPLICATION_CONTEXT_NAME:
            return REJECT_APPLICATION_CONTEXT
        if not pdu.is_valid_ae_title(rq.called_ae_title) or (
            self._require_called_ae and rq.called_ae_title != self.local_ae_title
        ):
            return REJECT_CALLED_AE
        if not pdu.is_valid_ae_title(rq.calling_ae_title):  # empty or not ASCII: cannot be echoed in an AC
            return REJECT_CALLING_AE
        if len(rq.contexts) > self.config.max_presentation_contexts:
            return REJECT_NO_REASON
        if self._acceptor is not None and self._acceptor.count_others(self) >= self.config.max_associations:
            return REJECT_LOCAL_LIMIT
        return None

    def _reject(self, decision: Reject) -> None:
        self.reject = decision
        self.dul.associate_response(pdu.AssociateRJ(*decision))
        called = self.requested.called_ae_title if self.requested is not None else self.local_ae_title
        log.warning(
            "association from %s@%s to %s rejected (%s)",
            self.remote_ae_title or "?",
            address_text(self.peer_address),
            called,
            decision.describe(),
        )
        if self.bus.wants(ev.ASSOCIATION_REJECTED):
            self.bus.emit(
                ev.ASSOCIATION_REJECTED,
                cast("Association", self),
                result=decision.result,
                source=decision.source,
                reason=decision.reason,
                description=decision.describe(),
            )

    def _became_established(self) -> None:
        self.is_established = True
        self._worker = self._loop.create_task(self._serve_requests())
        if self.bus.wants(ev.ASSOCIATION_ACCEPTED):
            self.bus.emit(
                ev.ASSOCIATION_ACCEPTED,
                cast("Association", self),
                calling_ae=self.local_ae_title if self.is_requestor else self.remote_ae_title,
                called_ae=self.remote_ae_title if self.is_requestor else self.local_ae_title,
                contexts=self.accepted_contexts,
            )

    # ------------------------------------------------------------------ ACSE, requestor side

    def on_associate_ac(self, ac: pdu.AssociateAC) -> None:
        assert self.requested is not None
        info = ac.user_info
        self.peer_max_pdu = info.max_pdu_length or 0
        self.peer_implementation_class_uid = info.implementation_class_uid
        self.peer_implementation_version_name = info.implementation_version_name
        self.user_identity_response = info.user_identity_response
        self.extended_negotiation_response = dict(info.extended_negotiation)
        self.contexts = accepted_contexts(
            self.requested.contexts, ac.contexts, self.requested.user_info.roles, info.roles
        )
        self._became_established()
        if not self._established.done():
            self._established.set_result(None)

    def on_associate_rj(self, rj: pdu.AssociateRJ) -> None:
        self.reject = Reject(rj.result, rj.source, rj.reason)
        if not self._established.done():
            self._established.set_exception(AssociationRejected(rj.result, rj.source, rj.reason, rj.describe()))

    # ------------------------------------------------------------------ release and abort

    def on_release_rq(self, collision: bool = False) -> None:
        if collision and self.is_requestor:
            self.dul.release_response()  # Sta9 -> AR-9; the RP from the peer completes it
            return
        if collision:
            return  # acceptor side of a collision: wait for the peer's RP (AR-10)
        # Answer after every request already received has been answered (PS3.8: responses may still
        # be sent in Sta8).
        self._requests.put_nowait(RELEASE)

    def on_release_rp(self, collision: bool = False) -> None:
        if collision:
            self.dul.release_response()  # Sta12 -> AR-4
        self._finish_release()

    def _finish_release(self) -> None:
        if self.is_released:
            return
        self.is_released = True
        self._stop_worker()
        self._fail_waiters(AssociationAborted("association released"))
        if not self._release_done.done():
            self._release_done.set_result(None)
        log.info("%s: association released", self.label)
        if self.bus.wants(ev.ASSOCIATION_RELEASED):
            self.bus.emit(ev.ASSOCIATION_RELEASED, cast("Association", self))

    def on_abort(self, source: int, reason: int, *, local: bool, connection_lost: bool = False) -> None:
        if self.is_aborted or self.is_released:
            return
        self.is_aborted = True
        if self._sink is not None:
            self._sink.abort()
            self._sink = None
        for cancelled in self._cancels.values():
            cancelled.set()
        if local and self.provider_abort_reason is not None:
            description = f"aborted by us: {self.provider_abort_reason[0]}"
        elif local:
            description = "aborted by the local user"
        elif connection_lost:
            description = "connection closed by the peer without release"
        else:
            description = pdu.Abort(source, reason).describe()
        error = AssociationAborted(description)
        if not self._established.done():
            self._established.set_exception(error)
            self._established.exception()  # mark retrieved: acceptors never await it (connect() still sees it)
        if not self._release_done.done():
            self._release_done.set_exception(error)
            self._release_done.exception()  # mark retrieved
        self._fail_waiters(error)
        self._stop_worker()
        if self.is_established:
            log.warning("%s: %s", self.label, description)
        else:
            log.info("%s (%s): %s", self.label, address_text(self.peer_address), description)
        if self.bus.wants(ev.ASSOCIATION_ABORTED):
            self.bus.emit(ev.ASSOCIATION_ABORTED, cast("Association", self), source=source, reason=reason, description=description)

    def _fail_waiters(self, error: BaseException) -> None:
        for queue in self._waiters.values():
            queue.put_nowait(error)

    def _stop_worker(self) -> None:
        if self._worker is not None and not self._worker.done():
            self._requests.put_nowait(None)

    @staticmethod
    def _log_task_error(task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("association task failed", exc_info=task.exception())


