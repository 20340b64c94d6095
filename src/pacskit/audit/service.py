"""The audit trail as a base service: ``self.base.audit`` in every add-in.

One :class:`Audit` exists per server and every add-in's :class:`~pacskit.services.BaseServices` holds
it. The add-in that keeps the trail (the built-in audit add-in, or a replacement) attaches its sink
with :meth:`Audit.attach` when it starts and :meth:`Audit.detach` when it stops; everyone else reports
security-relevant events through the methods below, each of which returns ``False`` (and does
nothing) while no trail is attached. Example, from an access-control add-in refusing a service::

    self.base.audit.security_alert("use-of-restricted-function", f"{ae}@{host}",
                                   description="C-MOVE not allowed for this AE", peer_ae=ae, peer_address=host)
"""

from __future__ import annotations

import os
from typing import Protocol

from pacskit.audit import messages
from pacskit.audit.messages import MINOR_FAILURE, SUCCESS, AuditMessage, AuditSource, Code, Participant


class AuditSink(Protocol):
    """What an audit add-in attaches: where built messages go, and who the audit source is."""

    @property
    def source(self) -> AuditSource: ...

    def emit(self, message: AuditMessage) -> bool:
        """Queue ``message``; ``False`` when it was dropped (queue full). Never blocks."""
        ...


class AttachError(RuntimeError):
    """A second add-in tried to attach an audit trail while one is attached."""


class Audit:
    """See the module docstring."""

    __slots__ = ("_sink", "_owner")

    def __init__(self) -> None:
        self._sink: AuditSink | None = None
        self._owner = ""

    @property
    def active(self) -> bool:
        """A trail is attached (messages emitted now are kept)."""
        return self._sink is not None

    def attach(self, sink: AuditSink, owner: str) -> None:
        """Make ``sink`` the server's audit trail. ``owner`` is the add-in's name: after a reload the
        new instance of the same add-in takes over (the old one's :meth:`detach` is then a no-op);
        another add-in attaching while one is attached is an :class:`AttachError`."""
        if self._sink is not None and self._owner != owner:
            raise AttachError(f"add-in {owner!r} cannot keep the audit trail: {self._owner!r} keeps it")
        self._sink, self._owner = sink, owner

    def detach(self, sink: AuditSink) -> None:
        """Stop sending messages to ``sink`` (a no-op when another one is attached)."""
        if self._sink is sink:
            self._sink, self._owner = None, ""

    def emit(self, message: AuditMessage) -> bool:
        """Queue a message built with :mod:`pacskit.audit.messages`."""
        sink = self._sink
        return sink.emit(message) if sink is not None else False

    def _reporter(self, sink: AuditSink) -> Participant:
        return messages.application(sink.source.source_id, process_id=str(os.getpid()), requestor=False, role=None)

    def security_alert(
        self,
        alert_type: str | Code,
        subject: str,
        *,
        description: str | None = None,
        peer_ae: str | None = None,
        peer_address: str | None = None,
        outcome: int = MINOR_FAILURE,
    ) -> bool:
        """Security Alert (A.5.3.11): ``alert_type`` a key of
        :data:`~pacskit.audit.messages.SECURITY_ALERT_TYPES` (``"node-authentication"``,
        ``"use-of-restricted-function"``, ``"security-configuration"``...); ``subject`` what it is
        about; the peer, when given, is the performing participant."""
        sink = self._sink
        if sink is None:
            return False
        performer = messages.peer(peer_ae, peer_address, role=None, requestor=True) if peer_ae or peer_address else None
        return sink.emit(messages.security_alert(sink.source, self._reporter(sink), alert_type, subject,
                                                 description=description, performer=performer, outcome=outcome))

    def user_authentication(
        self,
        user: str,
        *,
        login: bool = True,
        success: bool = True,
        address: str | None = None,
        description: str | None = None,
    ) -> bool:
        """User Authentication (A.5.3.12): ``user`` logged in (or failed to, ``success=False``) or out."""
        sink = self._sink
        if sink is None:
            return False
        person = messages.peer(user, address, role=None, requestor=True)
        return sink.emit(messages.user_authentication(
            sink.source, person, login=login, outcome=SUCCESS if success else MINOR_FAILURE,
            node=self._reporter(sink), outcome_description=description))

    def study_deleted(
        self,
        study_instance_uid: str,
        patient_id: str | None,
        *,
        user: str,
        address: str | None = None,
        sop_classes: dict[str, int] | None = None,
    ) -> bool:
        """DICOM Study Deleted (A.5.3.6), by ``user`` (an operator, a retention job...)."""
        sink = self._sink
        if sink is None:
            return False
        who = messages.peer(user, address, role=None, requestor=True)
        return sink.emit(messages.study_deleted(sink.source, who, {study_instance_uid: sop_classes or {}}, patient_id))

    def instances_accessed(
        self,
        study_instance_uid: str,
        patient_id: str | None,
        *,
        user: str,
        action: str = "R",
        address: str | None = None,
        sop_classes: dict[str, int] | None = None,
    ) -> bool:
        """DICOM Instances Accessed (A.5.3.4): created (C), read (R), updated (U) or deleted (D) in place."""
        sink = self._sink
        if sink is None:
            return False
        who = messages.peer(user, address, role=None, requestor=True)
        return sink.emit(messages.instances_accessed(sink.source, who, {study_instance_uid: sop_classes or {}},
                                                     patient_id, action=action))

    def query(
        self,
        sop_class_uid: str,
        query_dataset: bytes,
        transfer_syntax: str,
        *,
        user: str,
        address: str | None = None,
    ) -> bool:
        """Query (A.5.3.10) by ``user``: ``query_dataset`` is the identifier encoded in
        ``transfer_syntax`` (a QIDO-RS search is reported as the C-FIND identifier it becomes)."""
        sink = self._sink
        if sink is None:
            return False
        who = messages.peer(user, address, role=None, requestor=True)
        return sink.emit(messages.query(sink.source, who, self._reporter(sink), sop_class_uid, query_dataset,
                                        transfer_syntax))


__all__ = ["AttachError", "Audit", "AuditSink"]
