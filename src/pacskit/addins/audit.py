"""Audit add-in: the server's IHE ATNA audit trail (PS3.15 A.5 messages), driven by the event bus.

What is audited (docs/addins/audit.md has the participants and codes of each):

=====================================  ===========================================================
server start / stop                    Application Activity (110100), Application Start / Stop
association accepted / ended           Network Entry (110108), Attach / Detach (``network_entry``)
association with a user identity       User Authentication (110114), Login / Logout
association refused (calling or        Security Alert (110113), Node Authentication
called AE not accepted)
C-STORE received                       DICOM Instances Transferred (110104), action C, one message
                                       per patient at the end of the association, with its studies
                                       and SOP classes (the UIDs come from the index)
C-FIND                                 Query (110112), with the identifier in ParticipantObjectQuery
C-MOVE / C-GET                         Begin Transferring (110102) + DICOM Instances Transferred
                                       (110104, action R), study and patient from the identifier
=====================================  ===========================================================

Other add-ins add their own (Security Alert, User Authentication, Study Deleted, Instances Accessed)
through ``self.base.audit`` — this add-in attaches its trail to that base service.

Every message is stored in ``audit_records``; with ``syslog_host`` set it is also sent as RFC 5424
syslog over TLS (``syslog_protocol = "tls"``, RFC 5425, the ATNA default port 6514) or UDP (RFC
5426), spooled in ``spool_dir`` while the collector is unreachable (:mod:`pacskit.audit.trail`).

The observers only queue the spy event (the DIMSE path pays one ``put_nowait``; a C-STORE only a list
append, kept for the association's end); messages are built,
UIDs looked up and records written by writer threads.
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import os
import socket
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from pacskit.services import AddIn, AddInOptions
from pacskit.audit import messages as m
from pacskit.audit.trail import AuditTrail
from pacskit.net import SpyEvent
from pacskit.net import events as ev
from pacskit.dicom.status import status_category
from pacskit.records.background import BatchWriter

log = logging.getLogger("pacskit.addin.audit")

#: A-ASSOCIATE-RJ reasons (service-user source) that are about who is calling: PS3.8 9.3.4
_SECURITY_REJECT_REASONS = {3: "calling AE title not recognized", 7: "called AE title not recognized"}


class AuditOptions(AddInOptions):
    source_id: str = Field("", description="AuditSourceID; empty: the server's AE title")
    enterprise_site_id: str = Field("", description="AuditEnterpriseSiteID (optional)")
    network_entry: bool = Field(True, description="Network Entry Attach/Detach for every association")
    store_in_database: bool = Field(True, description="keep every message in the audit_records table")
    syslog_host: str = Field("", description="audit record repository (syslog collector); empty: none")
    syslog_port: int = Field(6514, ge=1, le=65535)
    syslog_protocol: Literal["tls", "udp", "tcp"] = "tls"
    ca_file: str | None = Field(None, description="CA certificates the collector's certificate must chain to")
    cert_file: str | None = Field(None, description="our client certificate (ATNA mutual authentication)")
    key_file: str | None = None
    server_name: str | None = Field(None, description="name checked in the collector's certificate; default syslog_host")
    spool_dir: str = Field("audit-spool", description="where messages wait for the collector (relative: data folder)")
    max_spool: int = Field(100_000, ge=1)
    retry_interval: float = Field(10.0, gt=0, description="seconds between attempts to send the spool")
    queue_size: int = Field(10_000, ge=1)
    database_linger: float = Field(
        1.0, ge=0, le=10,
        description="seconds the database writer waits to fill a batch (one transaction per batch, not per message)",
    )


@dataclass
class _AssociationAudit:
    stores: list[tuple[str, str, int | None]] = field(default_factory=list)  # (sop class, sop instance, status)
    user: str | None = None


class AuditAddIn(AddIn):
    name = "audit"
    description = "Audit trail (IHE ATNA, PS3.15 A.5): database + RFC 5424 syslog with spooling"
    Options = AuditOptions
    options: AuditOptions

    trail: AuditTrail | None = None

    @property
    def dropped(self) -> int:
        """Events or messages lost because a queue or the spool was full (admin API statistics)."""
        events = self._events.dropped if getattr(self, "_events", None) is not None else 0
        return events + (self.trail.dropped if self.trail is not None else 0)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        opts = self.options
        settings = self.base.settings
        self.ae_title = settings.ae_title
        self.host = settings.host if settings.host not in ("0.0.0.0", "::") else socket.gethostname()
        self.source = m.AuditSource(opts.source_id or settings.ae_title, opts.enterprise_site_id or None)
        self._engine = self._index_engine()
        sender = None
        spool = None
        if opts.syslog_host:
            from pacskit.records.syslog import SyslogSender

            sender = SyslogSender(opts.syslog_host, opts.syslog_port, opts.syslog_protocol, ca_file=opts.ca_file,
                                  cert_file=opts.cert_file, key_file=opts.key_file, server_name=opts.server_name)
            spool = Path(opts.spool_dir)
            spool = spool if spool.is_absolute() else self.base.data_dir / spool
        self.trail = AuditTrail(
            self.source,
            engine=self._engine if opts.store_in_database else None,
            sender=sender,
            spool_dir=spool,
            queue_size=opts.queue_size,
            retry_interval=opts.retry_interval,
            max_spool=opts.max_spool,
            database_linger=opts.database_linger,
        )
        self._associations: dict[int, _AssociationAudit] = defaultdict(_AssociationAudit)
        #: C-STORE outcomes per association id, appended by the thread that emits operation-completed
        #: (the event loop) and taken by the writer thread when the association ends: a C-STORE costs
        #: a list append, not a queue hand-off that wakes the writer thread once per instance
        self._stores: dict[int, list[tuple[str, str, int | None]]] = {}
        self._events: BatchWriter[tuple[str, SpyEvent]] = BatchWriter(
            "audit-events", self._process, queue_size=opts.queue_size, logger=log)
        self._events.start()
        self.base.audit.attach(self.trail, self.name)
        launcher = m.Participant(_os_user(), True, m.ROLE_APPLICATION_LAUNCHER)
        self.trail.emit(m.application_activity(self.source, self._me(m.ROLE_APPLICATION), start=True, launcher=launcher))
        self._subscriptions = [
            (ev.ASSOCIATION_ACCEPTED, "accepted"),
            (ev.ASSOCIATION_REJECTED, "rejected"),
            (ev.ASSOCIATION_RELEASED, "ended"),
            (ev.ASSOCIATION_ABORTED, "ended"),
            (ev.OPERATION_COMPLETED, "completed"),
        ]
        self._observers = []
        for kind, tag in self._subscriptions:
            observer = self._observer(tag)
            self._observers.append((kind, observer))
            self.base.events.subscribe(kind, observer)

    def _observer(self, tag: str) -> Any:
        submit = self._events.submit
        stores = self._stores

        def observe(event: SpyEvent) -> None:
            assoc = event.assoc
            if assoc is not None and getattr(assoc, "is_requestor", False):
                return  # our own outgoing associations (C-MOVE sub-operations) are audited by their operation
            d = event.detail
            if tag == "completed" and d["service"] == "C-STORE" and assoc is not None:
                # Reported at the end of the association (_on_ended, after this: the association
                # ends on the same thread, and its event is queued after every completion).
                command = d["command"]
                stores.setdefault(assoc.id, []).append(
                    (str(command.get("AffectedSOPClassUID", "")), str(command.get("AffectedSOPInstanceUID", "")),
                     d["status"]))
                return
            submit((tag, event))

        return observe

    async def stop(self) -> None:
        if self.trail is None:
            return
        for kind, observer in self._observers:
            self.base.events.unsubscribe(kind, observer)
        self._events.close()
        launcher = m.Participant(_os_user(), True, m.ROLE_APPLICATION_LAUNCHER)
        self.trail.emit(m.application_activity(self.source, self._me(m.ROLE_APPLICATION), start=False, launcher=launcher))
        self.base.audit.detach(self.trail)
        self.trail.close()
        if self.trail.dropped:
            self.base.log.warning("audit: %d messages were lost (queue or spool full)", self.trail.dropped)
        own = getattr(self, "_own_engine", None)
        if own is not None:
            own.dispose()
        self.trail = None

    def _index_engine(self) -> Any:
        store = self.base.store
        self._own_engine = None
        if store is not None and hasattr(store, "index"):
            return store.index.engine
        from pacskit.store import Index

        index = Index.open(self.base.settings.database_url)
        index.migrate()
        self._own_engine = index.engine
        return index.engine

    # ------------------------------------------------------------------ participants

    def _me(self, role: m.Code | None, requestor: bool = False) -> m.Participant:
        return m.application(self.ae_title, process_id=str(os.getpid()), host=self.host, role=role, requestor=requestor)

    # ------------------------------------------------------------------ the writer thread

    def _process(self, batch: Sequence[tuple[str, SpyEvent]]) -> None:
        assert self.trail is not None
        for tag, event in batch:
            try:
                for message in getattr(self, f"_on_{tag}")(event):
                    self.trail.emit(message)
            except Exception:
                log.exception("audit: could not build the message for %s", event.kind)

    def _on_accepted(self, event: SpyEvent) -> list[m.AuditMessage]:
        assoc = event.assoc
        state = self._associations[assoc.id]
        out = []
        caller = _peer(assoc, m.ROLE_SOURCE, requestor=True)
        if self.options.network_entry:
            out.append(m.network_entry(self.source, caller, attach=True, others=[self._me(m.ROLE_DESTINATION)]))
        user = _user_of(assoc)
        if user is not None:
            state.user = user
            person = m.peer(user, _host(assoc), role=None, requestor=True)
            out.append(m.user_authentication(self.source, person, login=True, node=self._me(None)))
        return out

    def _on_rejected(self, event: SpyEvent) -> list[m.AuditMessage]:
        assoc = event.assoc
        d = event.detail
        out = []
        reason = _SECURITY_REJECT_REASONS.get(d.get("reason")) if d.get("source") == 1 else None
        if reason is not None:
            caller = getattr(assoc, "remote_ae_title", "") or "?"
            subject = f"{caller}@{_host(assoc) or '?'}"
            out.append(m.security_alert(
                self.source, self._me(None), "node-authentication", subject,
                description=f"association refused: {reason} ({d.get('description', '')})",
                performer=_peer(assoc, None, requestor=True)))
        user = _user_of(assoc) if assoc is not None else None
        if user is not None:
            person = m.peer(user, _host(assoc), role=None, requestor=True)
            out.append(m.user_authentication(self.source, person, login=True, outcome=m.MINOR_FAILURE, node=self._me(None),
                                             outcome_description=f"association refused: {d.get('description', '')}"))
        return out

    def _on_ended(self, event: SpyEvent) -> list[m.AuditMessage]:
        assoc = event.assoc
        if assoc is None or not getattr(assoc, "is_established", False):
            return []
        state = self._associations.pop(assoc.id, _AssociationAudit())
        state.stores += self._stores.pop(assoc.id, [])
        out = self._stored_messages(assoc, state)
        if state.user is not None:
            out.append(m.user_authentication(self.source, m.peer(state.user, _host(assoc), role=None, requestor=True),
                                             login=False, node=self._me(None)))
        if self.options.network_entry:
            outcome = m.SUCCESS if event.kind == ev.ASSOCIATION_RELEASED else m.MINOR_FAILURE
            out.append(m.network_entry(self.source, _peer(assoc, m.ROLE_SOURCE, requestor=True), attach=False,
                                       others=[self._me(m.ROLE_DESTINATION)], outcome=outcome))
        return out

    def _on_completed(self, event: SpyEvent) -> list[m.AuditMessage]:
        d = event.detail
        service = d["service"]
        assoc = event.assoc
        status = d["status"]
        if service == "C-STORE":  # recorded by the observer (see _observer)
            return []
        at = dt.datetime.fromtimestamp(d["started"], dt.UTC)
        outcome, description = _outcome(status)
        if service == "C-FIND":
            return [m.query(self.source, _peer(assoc, m.ROLE_SOURCE, requestor=True), self._me(m.ROLE_DESTINATION),
                            d["abstract_syntax"], d.get("identifier") or b"", d.get("transfer_syntax", ""),
                            outcome=outcome, outcome_description=description, at=at)]
        if service in ("C-MOVE", "C-GET"):
            return self._retrieve_messages(event, at, outcome, description)
        return []

    # ------------------------------------------------------------------ transfers

    def _retrieve_messages(self, event: SpyEvent, at: dt.datetime, outcome: int, description: str | None) -> list[m.AuditMessage]:
        d = event.detail
        assoc = event.assoc
        ds = _decode(d.get("identifier"), d.get("transfer_syntax", ""))
        study = _single(ds, "StudyInstanceUID")
        patient = _single(ds, "PatientID")
        if study and not patient:
            patient = self._patient_of_study(study)
        studies = {study: {}} if study else {}
        sender = self._me(m.ROLE_SOURCE)
        others: list[m.Participant] = []
        if d["service"] == "C-MOVE":
            destination = str(d["command"].get("MoveDestination", "") or "").strip()
            known = self.base.ae_titles.get(destination) if destination else None
            receiver = m.peer(destination or "?", known.host if known is not None else None, role=m.ROLE_DESTINATION,
                              requestor=False)
            others.append(_peer(assoc, None, requestor=True))
        else:
            receiver = _peer(assoc, m.ROLE_DESTINATION, requestor=True)
        final = d.get("final_elements") or {}
        counts = [int(final.get(k) or 0) for k in ("NumberOfCompletedSuboperations", "NumberOfFailedSuboperations",
                                                      "NumberOfWarningSuboperations")]
        status = d["status"]
        attempted = any(counts) or (status is not None and status_category(status) in ("Success", "Warning", "Cancel"))
        if final.get("NumberOfCompletedSuboperations") is not None and outcome != m.SUCCESS:
            description = f"{description or 'failed'}: {counts[0]} completed, {counts[1]} failed, {counts[2]} warnings"
        transferred = m.instances_transferred(self.source, sender, receiver, studies, patient, action="R",
                                              others=others, outcome=outcome, outcome_description=description)
        if not attempted:  # refused before any sub-operation (unknown destination, bad identifier)
            return [transferred]
        return [m.begin_transferring(self.source, sender, receiver, studies, patient, others=others, at=at), transferred]

    def _stored_messages(self, assoc: Any, state: _AssociationAudit) -> list[m.AuditMessage]:
        if not state.stores:
            return []
        ok = [(cls, uid) for cls, uid, status in state.stores
              if status is not None and status_category(status) in ("Success", "Warning")]
        failed = len(state.stores) - len(ok)
        where = self._locate([uid for _, uid in ok])
        by_patient: dict[str | None, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
        for cls, uid in ok:
            study, patient = where.get(uid, (None, None))
            if study is not None:
                by_patient[patient][study][cls] += 1
        sender = _peer(assoc, m.ROLE_SOURCE, requestor=True)
        receiver = self._me(m.ROLE_DESTINATION)
        outcome = m.SUCCESS if not failed else m.MINOR_FAILURE
        description = f"{failed} of {len(state.stores)} instances not stored" if failed else None
        if not by_patient:
            return [m.instances_transferred(self.source, sender, receiver, {}, None, action="C", outcome=outcome,
                                            outcome_description=description)]
        return [
            m.instances_transferred(self.source, sender, receiver, {s: dict(c) for s, c in studies.items()}, patient,
                                    action="C", outcome=outcome, outcome_description=description)
            for patient, studies in by_patient.items()
        ]

    def _locate(self, sop_uids: list[str]) -> dict[str, tuple[str, str | None]]:
        from pacskit.store.index.locate import instances_to_studies

        if not sop_uids:
            return {}
        with self._engine.connect() as conn:
            return instances_to_studies(conn, sop_uids)

    def _patient_of_study(self, study_uid: str) -> str | None:
        from pacskit.store.index.locate import studies_to_patients

        with self._engine.connect() as conn:
            return studies_to_patients(conn, [study_uid]).get(study_uid)


def _outcome(status: int | None) -> tuple[int, str | None]:
    if status is None:
        return m.SERIOUS_FAILURE, "association ended before the final response"
    category = status_category(status)
    if category in ("Success", "Cancel"):
        return m.SUCCESS, None
    return m.MINOR_FAILURE, f"{category} 0x{status:04X}"


def _host(assoc: Any) -> str | None:
    peer = getattr(assoc, "peer_address", None)
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None if peer is None else str(peer)


def _peer(assoc: Any, role: m.Code | None, *, requestor: bool) -> m.Participant:
    return m.peer(getattr(assoc, "remote_ae_title", "") or "?", _host(assoc), role=role, requestor=requestor)


def _user_of(assoc: Any) -> str | None:
    identity = getattr(assoc, "user_identity", None)
    if identity is None:
        return None
    if identity.type in (1, 2):
        return identity.primary.decode("utf-8", "replace")[:128] or "?"
    return {3: "kerberos", 4: "saml", 5: "jwt"}.get(identity.type, f"identity-type-{identity.type}")


def _decode(data: bytes | None, transfer_syntax: str) -> Any:
    if not data:
        return None
    from pacskit.net import ReceivedDataset

    try:
        return ReceivedDataset(transfer_syntax, data=data, size=len(data)).decode()
    except Exception:
        return None


def _single(ds: Any, keyword: str) -> str | None:
    value = ds.get(keyword) if ds is not None else None
    if not value or not isinstance(value, str) or "\\" in value or "*" in value or "?" in value:
        return None
    return value.strip()[:64] or None


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return str(os.getuid())
