"""DICOM audit messages (PS3.15 A.5, the RFC 3881 based schema of A.5.1) as XML.

:func:`build_message` assembles one ``<AuditMessage>`` in the schema's element order::

    AuditMessage
      EventIdentification  EventActionCode EventDateTime EventOutcomeIndicator
        EventID  EventTypeCode*  EventOutcomeDescription?
      ActiveParticipant+   UserID AlternativeUserID? UserName? UserIsRequestor NetworkAccessPointID? ...TypeCode?
        RoleIDCode*
      AuditSourceIdentification  AuditEnterpriseSiteID? AuditSourceID
        AuditSourceTypeCode*
      ParticipantObjectIdentification*  ParticipantObjectID ...TypeCode ...TypeCodeRole
        ParticipantObjectIDTypeCode  (ParticipantObjectName | ParticipantObjectQuery)?
        ParticipantObjectDetail*  ParticipantObjectDescription?  SOPClass*  Accession*

Coded values use the schema's attributes ``csd-code``, ``codeSystemName``, ``originalText``. The
functions below (one per A.5.3 message a PACS emits) fill in the codes and participants the standard
requires for that message; they take plain values so that any add-in can call them.

Codes: EventID from CID 400 (DCM 110100-110114), EventTypeCode from CID 401-403 and 412-413,
RoleIDCode from CID 402 (110150-110155), participant object ID types from RFC 3881 (``2`` Patient
Number, ``12`` URI) and DCM (110180 Study Instance UID, 110181 SOP Class UID, 110182 Node ID).
"""

from __future__ import annotations

import base64
import datetime as dt
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple


class Code(NamedTuple):
    """A coded value: ``csd-code``, ``codeSystemName``, ``originalText``."""

    code: str
    system: str
    meaning: str


def dcm(code: str, meaning: str) -> Code:
    return Code(code, "DCM", meaning)


def rfc3881(code: str, meaning: str) -> Code:
    return Code(code, "RFC-3881", meaning)


# EventID (CID 400)
APPLICATION_ACTIVITY = dcm("110100", "Application Activity")
AUDIT_LOG_USED = dcm("110101", "Audit Log Used")
BEGIN_TRANSFERRING = dcm("110102", "Begin Transferring DICOM Instances")
INSTANCES_ACCESSED = dcm("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = dcm("110104", "DICOM Instances Transferred")
STUDY_DELETED = dcm("110105", "DICOM Study Deleted")
NETWORK_ENTRY = dcm("110108", "Network Entry")
QUERY = dcm("110112", "Query")
SECURITY_ALERT = dcm("110113", "Security Alert")
USER_AUTHENTICATION = dcm("110114", "User Authentication")

# EventTypeCode
APPLICATION_START = dcm("110120", "Application Start")
APPLICATION_STOP = dcm("110121", "Application Stop")
LOGIN = dcm("110122", "Login")
LOGOUT = dcm("110123", "Logout")
ATTACH = dcm("110124", "Attach")
DETACH = dcm("110125", "Detach")
#: Security Alert types (CID 403)
SECURITY_ALERT_TYPES = {
    "node-authentication": dcm("110126", "Node Authentication"),
    "emergency-override": dcm("110127", "Emergency Override"),
    "network-configuration": dcm("110128", "Network Configuration"),
    "security-configuration": dcm("110129", "Security Configuration"),
    "hardware-configuration": dcm("110130", "Hardware Configuration"),
    "software-configuration": dcm("110131", "Software Configuration"),
    "use-of-restricted-function": dcm("110132", "Use of Restricted Function"),
    "audit-recording-stopped": dcm("110133", "Audit Recording Stopped"),
    "audit-recording-started": dcm("110134", "Audit Recording Started"),
    "object-security-attributes-changed": dcm("110135", "Object Security Attributes Changed"),
    "security-roles-changed": dcm("110136", "Security Roles Changed"),
    "user-security-attributes-changed": dcm("110137", "User security Attributes Changed"),
}

# RoleIDCode (CID 402)
ROLE_APPLICATION = dcm("110150", "Application")
ROLE_APPLICATION_LAUNCHER = dcm("110151", "Application Launcher")
ROLE_DESTINATION = dcm("110152", "Destination Role ID")
ROLE_SOURCE = dcm("110153", "Source Role ID")

# ParticipantObjectIDTypeCode
ID_PATIENT_NUMBER = rfc3881("2", "Patient Number")
ID_URI = rfc3881("12", "URI")
ID_STUDY_INSTANCE_UID = dcm("110180", "Study Instance UID")
ID_SOP_CLASS_UID = dcm("110181", "SOP Class UID")
ID_NODE_ID = dcm("110182", "Node ID")

#: AuditSourceTypeCode 4 (RFC 3881): an application server process
SOURCE_APPLICATION_SERVER = rfc3881("4", "Application Server process tier in a multi-tier system")

# ParticipantObjectTypeCode / Role (RFC 3881)
TYPE_PERSON = 1
TYPE_SYSTEM_OBJECT = 2
ROLE_PATIENT = 1
ROLE_REPORT = 3
ROLE_SECURITY_RESOURCE = 13

# EventOutcomeIndicator
SUCCESS = 0
MINOR_FAILURE = 4
SERIOUS_FAILURE = 8
MAJOR_FAILURE = 12

ACTIONS = frozenset("CRUDE")


@dataclass(slots=True)
class Participant:
    """An ActiveParticipant. ``network_access_point_type``: 1 machine name, 2 IP address."""

    user_id: str
    is_requestor: bool
    role: Code | None = None
    alternative_user_id: str | None = None
    user_name: str | None = None
    network_access_point_id: str | None = None
    network_access_point_type: int | None = None


@dataclass(slots=True)
class ParticipantObject:
    """A ParticipantObjectIdentification; ``sop_classes`` is (SOP Class UID, number of instances)."""

    object_id: str
    type_code: int
    role: int
    id_type: Code
    name: str | None = None
    query: bytes | None = None
    details: Sequence[tuple[str, str | bytes]] = ()
    description: str | None = None
    sop_classes: Sequence[tuple[str, int]] = ()
    accessions: Sequence[str] = ()
    lifecycle: int | None = None


@dataclass(slots=True)
class AuditSource:
    """AuditSourceIdentification: who reports (``source_id``: e.g. the AE title or host)."""

    source_id: str
    enterprise_site_id: str | None = None
    type_code: Code = SOURCE_APPLICATION_SERVER


@dataclass(slots=True)
class AuditMessage:
    """One built message: the XML and the values the ``audit_records`` table indexes."""

    xml: str
    event_id: Code
    event_type: Code | None
    action: str
    outcome: int
    at: dt.datetime
    requestor: str | None = None
    patient_id: str | None = None
    study_instance_uid: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def _coded(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code.code, "codeSystemName": code.system, "originalText": code.meaning})


def _clean(text: str) -> str:
    """XML 1.0 has no place for most control characters: replace them rather than emit bad XML."""
    return "".join(ch if ch in "\t\n\r" or ord(ch) >= 0x20 else "\ufffd" for ch in text)


def build_message(
    event_id: Code,
    action: str,
    outcome: int,
    participants: Sequence[Participant],
    source: AuditSource,
    objects: Sequence[ParticipantObject] = (),
    *,
    event_types: Sequence[Code] = (),
    outcome_description: str | None = None,
    at: dt.datetime | None = None,
) -> AuditMessage:
    """Assemble one message (see the module docstring for the element order)."""
    if action not in ACTIONS:
        raise ValueError(f"EventActionCode must be one of C R U D E, not {action!r}")
    if outcome not in (SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE):
        raise ValueError(f"EventOutcomeIndicator must be 0, 4, 8 or 12, not {outcome!r}")
    if not participants:
        raise ValueError("an audit message needs at least one ActiveParticipant")
    when = (at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": action,
        "EventDateTime": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "EventOutcomeIndicator": str(outcome),
    })
    _coded(ident, "EventID", event_id)
    for code in event_types:
        _coded(ident, "EventTypeCode", code)
    if outcome_description:
        ET.SubElement(ident, "EventOutcomeDescription").text = _clean(outcome_description)
    requestor = None
    for p in participants:
        attrs = {"UserID": _clean(p.user_id)}
        if p.alternative_user_id:
            attrs["AlternativeUserID"] = _clean(p.alternative_user_id)
        if p.user_name:
            attrs["UserName"] = _clean(p.user_name)
        attrs["UserIsRequestor"] = "true" if p.is_requestor else "false"
        if p.network_access_point_id:
            attrs["NetworkAccessPointID"] = _clean(p.network_access_point_id)
            attrs["NetworkAccessPointTypeCode"] = str(p.network_access_point_type or 2)
        ap = ET.SubElement(root, "ActiveParticipant", attrs)
        if p.role is not None:
            _coded(ap, "RoleIDCode", p.role)
        if p.is_requestor and requestor is None:
            requestor = p.user_id
    src_attrs = {}
    if source.enterprise_site_id:
        src_attrs["AuditEnterpriseSiteID"] = _clean(source.enterprise_site_id)
    src_attrs["AuditSourceID"] = _clean(source.source_id)
    src = ET.SubElement(root, "AuditSourceIdentification", src_attrs)
    _coded(src, "AuditSourceTypeCode", source.type_code)
    patient_id = study_uid = None
    for obj in objects:
        attrs = {
            "ParticipantObjectID": _clean(obj.object_id),
            "ParticipantObjectTypeCode": str(obj.type_code),
            "ParticipantObjectTypeCodeRole": str(obj.role),
        }
        if obj.lifecycle is not None:
            attrs["ParticipantObjectDataLifeCycle"] = str(obj.lifecycle)
        po = ET.SubElement(root, "ParticipantObjectIdentification", attrs)
        _coded(po, "ParticipantObjectIDTypeCode", obj.id_type)
        if obj.name is not None:
            ET.SubElement(po, "ParticipantObjectName").text = _clean(obj.name)
        elif obj.query is not None:
            ET.SubElement(po, "ParticipantObjectQuery").text = base64.b64encode(obj.query).decode("ascii")
        for kind, value in obj.details:
            raw = value.encode("utf-8") if isinstance(value, str) else value
            ET.SubElement(po, "ParticipantObjectDetail", {"type": kind, "value": base64.b64encode(raw).decode("ascii")})
        if obj.description:
            ET.SubElement(po, "ParticipantObjectDescription").text = _clean(obj.description)
        for uid, count in obj.sop_classes:
            ET.SubElement(po, "SOPClass", {"UID": uid, "NumberOfInstances": str(count)})
        for number in obj.accessions:
            ET.SubElement(po, "Accession", {"Number": _clean(number)})
        if obj.id_type == ID_PATIENT_NUMBER and patient_id is None:
            patient_id = obj.object_id
        if obj.id_type == ID_STUDY_INSTANCE_UID and study_uid is None:
            study_uid = obj.object_id
    xml = ET.tostring(root, encoding="unicode", xml_declaration=False)
    return AuditMessage(
        xml=xml, event_id=event_id, event_type=event_types[0] if event_types else None, action=action,
        outcome=outcome, at=when, requestor=requestor, patient_id=patient_id, study_instance_uid=study_uid,
    )


# ---------------------------------------------------------------------------------- participants


def application(ae_title: str, *, process_id: str | None = None, host: str | None = None,
                role: Code | None = ROLE_APPLICATION, requestor: bool = False) -> Participant:
    """This server as a participant: UserID the AE title, AlternativeUserID the process, NAP the host."""
    return Participant(
        ae_title, requestor, role, alternative_user_id=process_id,
        network_access_point_id=host, network_access_point_type=_nap_type(host) if host else None,
    )


def peer(ae_title: str, address: str | None, *, role: Code | None, requestor: bool,
         user_name: str | None = None) -> Participant:
    """A remote AE: UserID its AE title, NAP its IP address."""
    return Participant(ae_title or "?", requestor, role, user_name=user_name, network_access_point_id=address,
                       network_access_point_type=_nap_type(address) if address else None)


def _nap_type(address: str) -> int:
    import ipaddress

    try:
        ipaddress.ip_address(address)
        return 2
    except ValueError:
        return 1


def patient_object(patient_id: str, name: str | None = None) -> ParticipantObject:
    return ParticipantObject(patient_id, TYPE_PERSON, ROLE_PATIENT, ID_PATIENT_NUMBER, name=name)


def study_object(study_uid: str, sop_classes: Iterable[tuple[str, int]] = (), accessions: Sequence[str] = ()) -> ParticipantObject:
    return ParticipantObject(study_uid, TYPE_SYSTEM_OBJECT, ROLE_REPORT, ID_STUDY_INSTANCE_UID,
                             sop_classes=sorted(sop_classes), accessions=accessions)


def _objects(studies: dict[str, dict[str, int]], patient_id: str | None) -> list[ParticipantObject]:
    objs = [study_object(uid, classes.items()) for uid, classes in sorted(studies.items())]
    if patient_id:
        objs.append(patient_object(patient_id))
    return objs


# ---------------------------------------------------------------------------------- A.5.3 messages


def application_activity(source: AuditSource, app: Participant, *, start: bool,
                         launcher: Participant | None = None, outcome: int = SUCCESS) -> AuditMessage:
    """A.5.3.1: the application started or stopped."""
    return build_message(APPLICATION_ACTIVITY, "E", outcome, [app] + ([launcher] if launcher else []), source,
                         event_types=[APPLICATION_START if start else APPLICATION_STOP])


def network_entry(source: AuditSource, node: Participant, *, attach: bool, others: Sequence[Participant] = (),
                  outcome: int = SUCCESS) -> AuditMessage:
    """A.5.3.9: a node attached to or detached from the network (here: a DICOM association)."""
    return build_message(NETWORK_ENTRY, "E", outcome, [node, *others], source, event_types=[ATTACH if attach else DETACH])


def begin_transferring(source: AuditSource, sender: Participant, receiver: Participant,
                       studies: dict[str, dict[str, int]], patient_id: str | None, *,
                       others: Sequence[Participant] = (), outcome: int = SUCCESS, at: dt.datetime | None = None) -> AuditMessage:
    """A.5.3.3: a transfer of instances starts. ``studies``: Study UID -> {SOP Class UID: count}."""
    return build_message(BEGIN_TRANSFERRING, "E", outcome, [sender, receiver, *others], source,
                         _objects(studies, patient_id), at=at)


def instances_transferred(source: AuditSource, sender: Participant, receiver: Participant,
                          studies: dict[str, dict[str, int]], patient_id: str | None, *, action: str,
                          others: Sequence[Participant] = (), outcome: int = SUCCESS,
                          outcome_description: str | None = None, at: dt.datetime | None = None) -> AuditMessage:
    """A.5.3.5: instances were sent (``action`` R) or received (C, or U when they replaced stored ones)."""
    return build_message(INSTANCES_TRANSFERRED, action, outcome, [sender, receiver, *others], source,
                         _objects(studies, patient_id), outcome_description=outcome_description, at=at)


def query(source: AuditSource, requestor: Participant, responder: Participant, sop_class_uid: str,
          query_dataset: bytes, transfer_syntax: str, *, outcome: int = SUCCESS,
          outcome_description: str | None = None, at: dt.datetime | None = None) -> AuditMessage:
    """A.5.3.10: a C-FIND; the query identifier goes base64 into ParticipantObjectQuery."""
    obj = ParticipantObject(sop_class_uid, TYPE_SYSTEM_OBJECT, ROLE_REPORT, ID_SOP_CLASS_UID, query=query_dataset,
                            details=[("TransferSyntax", transfer_syntax)])
    return build_message(QUERY, "E", outcome, [requestor, responder], source, [obj],
                         outcome_description=outcome_description, at=at)


def instances_accessed(source: AuditSource, accessor: Participant, studies: dict[str, dict[str, int]],
                       patient_id: str | None, *, action: str = "R", outcome: int = SUCCESS) -> AuditMessage:
    """A.5.3.4: instances were created, read, updated or deleted without a transfer."""
    return build_message(INSTANCES_ACCESSED, action, outcome, [accessor], source, _objects(studies, patient_id))


def study_deleted(source: AuditSource, deleter: Participant, studies: dict[str, dict[str, int]],
                  patient_id: str | None, *, outcome: int = SUCCESS) -> AuditMessage:
    """A.5.3.6: a study (or part of it) was deleted."""
    return build_message(STUDY_DELETED, "D", outcome, [deleter], source, _objects(studies, patient_id))


def security_alert(source: AuditSource, reporter: Participant, alert_type: str | Code, subject: str, *,
                   description: str | None = None, performer: Participant | None = None,
                   outcome: int = MINOR_FAILURE, subject_id_type: Code = ID_NODE_ID) -> AuditMessage:
    """A.5.3.11: a security-relevant event (refused association, forbidden service, configuration change).

    ``alert_type`` is a key of :data:`SECURITY_ALERT_TYPES` or a :class:`Code`; ``subject`` what the
    alert is about (a node, an AE title, a URI) with ``description`` in an "Alert Description" detail.
    """
    code = SECURITY_ALERT_TYPES[alert_type] if isinstance(alert_type, str) else alert_type
    obj = ParticipantObject(subject, TYPE_SYSTEM_OBJECT, ROLE_SECURITY_RESOURCE, subject_id_type,
                            details=[("Alert Description", description)] if description else ())
    participants = [reporter] + ([performer] if performer else [])
    return build_message(SECURITY_ALERT, "E", outcome, participants, source, [obj], event_types=[code],
                         outcome_description=description)


def user_authentication(source: AuditSource, user: Participant, *, login: bool, outcome: int = SUCCESS,
                        node: Participant | None = None, outcome_description: str | None = None) -> AuditMessage:
    """A.5.3.12: a user logged in (or failed to) or out."""
    return build_message(USER_AUTHENTICATION, "E", outcome, [user] + ([node] if node else []), source,
                         event_types=[LOGIN if login else LOGOUT], outcome_description=outcome_description)
