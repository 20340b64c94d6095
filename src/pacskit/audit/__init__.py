"""pacskit.audit: the IHE ATNA audit trail (PS3.15 A.5 audit messages).

* :mod:`pacskit.audit.messages` builds the XML of each A.5.3 message a PACS emits;
* :mod:`pacskit.audit.trail` stores messages in the database and sends them to a syslog collector
  (RFC 5424 over TLS or UDP), spooling while it is unreachable;
* :mod:`pacskit.audit.service`: :class:`Audit`, the base service every add-in has as
  ``self.base.audit``: the audit add-in (:mod:`pacskit.addins.audit`) attaches its trail to it, and
  any add-in reports its own security-relevant events through it (a no-op returning ``False`` when
  the server runs without an audit trail). Example, from an access-control add-in refusing a service::

    self.base.audit.security_alert("use-of-restricted-function", f"{ae}@{host}",
                                   description="C-MOVE not allowed for this AE", peer_ae=ae, peer_address=host)
"""

from __future__ import annotations

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
from pacskit.audit.service import AttachError, Audit, AuditSink
from pacskit.audit.trail import AuditTrail


__all__ = [
    "MAJOR_FAILURE",
    "MINOR_FAILURE",
    "ROLE_DESTINATION",
    "ROLE_SOURCE",
    "SECURITY_ALERT_TYPES",
    "SERIOUS_FAILURE",
    "SUCCESS",
    "AttachError",
    "Audit",
    "AuditMessage",
    "AuditSink",
    "AuditSource",
    "AuditTrail",
    "Code",
    "Participant",
    "ParticipantObject",
    "build_message",
    "messages",
]
