"""pacskit.audit: the IHE ATNA audit trail (PS3.15 A.5 audit messages).

* :mod:`pacskit.audit.messages` builds the XML of each A.5.3 message a PACS emits;
* :mod:`pacskit.audit.trail` stores messages in the database and sends them to a syslog collector
  (RFC 5424 over TLS or UDP), spooling while it is unreachable;
* the audit add-in (:mod:`pacskit.addins.audit`) emits them for the server's own activity (start and
  stop, associations, stores, queries, retrieves, refused associations) and registers its trail.

Other add-ins report their own security-relevant events through the functions below; each returns
``False`` (and does nothing) when the server runs without the audit add-in. Example, from an
access-control add-in refusing a service::

    from pacskit import audit

    audit.security_alert(self.base, "use-of-restricted-function", f"{ae}@{host}",
                         description="C-MOVE not allowed for this AE", peer_ae=ae, peer_address=host)
"""

from __future__ import annotations

from typing import Any

from pacskit.audit import messages
from pacskit.audit.messages import (
    MAJOR_FAILURE,
    MINOR_FAILURE,
    ROLE_DESTINATION,
    ROLE_SOURCE,
    SECURITY_ALERT_TYPES,
    SERIOUS_FAILURE,
    SUCCESS,
    AuditMessage,
    AuditSource,
    Code,
    Participant,
    ParticipantObject,
    build_message,
)
from pacskit.audit.trail import AuditTrail, audit_trail_for, register


def emit(base: Any, message: AuditMessage) -> bool:
    """Queue a built message on the server's audit trail (``base``: an add-in's base services)."""
    trail = audit_trail_for(base)
    return trail.emit(message) if trail is not None else False


def _reporter(trail: AuditTrail, requestor: bool = False) -> Participant:
    return messages.application(trail.source.source_id, process_id=str(_pid()), requestor=requestor, role=None)


def _pid() -> int:
    import os

    return os.getpid()


def security_alert(
    base: Any,
    alert_type: str | Code,
    subject: str,
    *,
    description: str | None = None,
    peer_ae: str | None = None,
    peer_address: str | None = None,
    outcome: int = MINOR_FAILURE,
) -> bool:
    """Security Alert (A.5.3.11): ``alert_type`` a key of :data:`SECURITY_ALERT_TYPES`
    (``"node-authentication"``, ``"use-of-restricted-function"``, ``"security-configuration"``...);
    ``subject`` what it is about; the peer, when given, is the performing participant."""
    trail = audit_trail_for(base)
    if trail is None:
        return False
    performer = messages.peer(peer_ae, peer_address, role=None, requestor=True) if peer_ae or peer_address else None
    return trail.emit(messages.security_alert(trail.source, _reporter(trail), alert_type, subject,
                                              description=description, performer=performer, outcome=outcome))


def user_authentication(
    base: Any,
    user: str,
    *,
    login: bool = True,
    success: bool = True,
    address: str | None = None,
    description: str | None = None,
) -> bool:
    """User Authentication (A.5.3.12): ``user`` logged in (or failed to, ``success=False``) or out."""
    trail = audit_trail_for(base)
    if trail is None:
        return False
    person = messages.peer(user, address, role=None, requestor=True)
    return trail.emit(messages.user_authentication(
        trail.source, person, login=login, outcome=SUCCESS if success else MINOR_FAILURE,
        node=_reporter(trail), outcome_description=description))


def study_deleted(
    base: Any,
    study_instance_uid: str,
    patient_id: str | None,
    *,
    user: str,
    address: str | None = None,
    sop_classes: dict[str, int] | None = None,
) -> bool:
    """DICOM Study Deleted (A.5.3.6), by ``user`` (an operator, a retention job...)."""
    trail = audit_trail_for(base)
    if trail is None:
        return False
    who = messages.peer(user, address, role=None, requestor=True)
    return trail.emit(messages.study_deleted(trail.source, who, {study_instance_uid: sop_classes or {}}, patient_id))


def instances_accessed(
    base: Any,
    study_instance_uid: str,
    patient_id: str | None,
    *,
    user: str,
    action: str = "R",
    address: str | None = None,
    sop_classes: dict[str, int] | None = None,
) -> bool:
    """DICOM Instances Accessed (A.5.3.4): created (C), read (R), updated (U) or deleted (D) in place."""
    trail = audit_trail_for(base)
    if trail is None:
        return False
    who = messages.peer(user, address, role=None, requestor=True)
    return trail.emit(messages.instances_accessed(trail.source, who, {study_instance_uid: sop_classes or {}},
                                                  patient_id, action=action))


__all__ = [
    "MAJOR_FAILURE",
    "MINOR_FAILURE",
    "ROLE_DESTINATION",
    "ROLE_SOURCE",
    "SECURITY_ALERT_TYPES",
    "SERIOUS_FAILURE",
    "SUCCESS",
    "AuditMessage",
    "AuditSource",
    "AuditTrail",
    "Code",
    "Participant",
    "ParticipantObject",
    "audit_trail_for",
    "build_message",
    "emit",
    "instances_accessed",
    "messages",
    "register",
    "security_alert",
    "study_deleted",
    "user_authentication",
]
