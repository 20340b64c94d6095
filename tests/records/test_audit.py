"""Audit messages (structure and codes per PS3.15 A.5), the audit trail's syslog transports with real
collectors (UDP; TLS with a test certificate), spool-then-deliver when the collector starts late, and
the public API other add-ins call."""

from __future__ import annotations

import asyncio
import base64
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from pacskit.services import AddIn, BaseServices
from pacskit.audit import messages as m
from pacskit.audit.trail import AuditTrail
from pacskit.net import SupportedContext
from pacskit.server.server import Server
from pacskit.config.settings import load_settings
from pacskit.records.syslog import SyslogSender
from pacskit.testing.peers import free_port, run_echoscu

from .conftest import TlsCollector, UdpCollector, parse_syslog

SOURCE = m.AuditSource("PACS1", "SITE")
APP = m.application("PACS1", process_id="42", host="127.0.0.1", role=m.ROLE_DESTINATION)
CALLER = m.peer("CT1", "10.0.0.5", role=m.ROLE_SOURCE, requestor=True)

# PS3.15 A.5.1: element order of the top level and inside ParticipantObjectIdentification
TOP_ORDER = ["EventIdentification", "ActiveParticipant", "AuditSourceIdentification", "ParticipantObjectIdentification"]
OBJECT_ORDER = ["ParticipantObjectIDTypeCode", "ParticipantObjectName", "ParticipantObjectQuery",
                "ParticipantObjectDetail", "ParticipantObjectDescription", "SOPClass", "Accession"]


def check_structure(xml: str) -> ET.Element:
    """The structural rules of the A.5.1 schema every message must follow."""
    root = ET.fromstring(xml)
    assert root.tag == "AuditMessage"
    tags = [child.tag for child in root]
    assert tags == sorted(tags, key=TOP_ORDER.index), tags
    assert tags.count("EventIdentification") == 1 and tags.count("AuditSourceIdentification") == 1
    assert "ActiveParticipant" in tags
    ident = root.find("EventIdentification")
    assert ident.get("EventActionCode") in {"C", "R", "U", "D", "E"}
    assert ident.get("EventOutcomeIndicator") in {"0", "4", "8", "12"}
    assert ident.get("EventDateTime", "").endswith("Z")
    assert [c.tag for c in ident][0] == "EventID"
    for coded in root.iter():
        if coded.tag in ("EventID", "EventTypeCode", "RoleIDCode", "AuditSourceTypeCode", "ParticipantObjectIDTypeCode"):
            assert coded.get("csd-code") and coded.get("codeSystemName") and coded.get("originalText"), coded.attrib
    for ap in root.findall("ActiveParticipant"):
        assert ap.get("UserID") and ap.get("UserIsRequestor") in ("true", "false")
        if ap.get("NetworkAccessPointID"):
            assert ap.get("NetworkAccessPointTypeCode") in ("1", "2")
    assert sum(ap.get("UserIsRequestor") == "true" for ap in root.findall("ActiveParticipant")) >= 1
    src = root.find("AuditSourceIdentification")
    assert src.get("AuditSourceID") and src.find("AuditSourceTypeCode") is not None
    for obj in root.findall("ParticipantObjectIdentification"):
        assert obj.get("ParticipantObjectID") and obj.get("ParticipantObjectTypeCode") in {"1", "2", "3", "4"}
        assert obj.get("ParticipantObjectTypeCodeRole")
        children = [c.tag for c in obj]
        assert children[0] == "ParticipantObjectIDTypeCode"
        assert children == sorted(children, key=OBJECT_ORDER.index), children
        assert not ("ParticipantObjectName" in children and "ParticipantObjectQuery" in children)
    return root


def codes(root: ET.Element) -> tuple[str, list[str], list[tuple[str, str]]]:
    ident = root.find("EventIdentification")
    return (ident.find("EventID").get("csd-code"), [c.get("csd-code") for c in ident.findall("EventTypeCode")],
            [(ap.get("UserID"), (ap.find("RoleIDCode").get("csd-code") if ap.find("RoleIDCode") is not None else ""))
             for ap in root.findall("ActiveParticipant")])


def test_every_message_kind_is_well_formed_with_its_codes() -> None:
    studies = {"1.2.3": {"1.2.840.10008.5.1.4.1.1.2": 3}}
    cases = [
        (m.application_activity(SOURCE, m.application("PACS1", role=m.ROLE_APPLICATION), start=True,
                                 launcher=m.Participant("alice", True, m.ROLE_APPLICATION_LAUNCHER)),
         ("110100", ["110120"], [("PACS1", "110150"), ("alice", "110151")])),
        (m.application_activity(SOURCE, m.application("PACS1", role=m.ROLE_APPLICATION, requestor=True), start=False),
         ("110100", ["110121"], [("PACS1", "110150")])),
        (m.network_entry(SOURCE, CALLER, attach=True, others=[APP]), ("110108", ["110124"], [("CT1", "110153"), ("PACS1", "110152")])),
        (m.network_entry(SOURCE, CALLER, attach=False), ("110108", ["110125"], [("CT1", "110153")])),
        (m.begin_transferring(SOURCE, CALLER, APP, studies, "P1"), ("110102", [], [("CT1", "110153"), ("PACS1", "110152")])),
        (m.instances_transferred(SOURCE, CALLER, APP, studies, "P1", action="C"), ("110104", [], [("CT1", "110153"), ("PACS1", "110152")])),
        (m.query(SOURCE, CALLER, APP, "1.2.840.10008.5.1.4.1.2.2.1", b"\x08\x00\x52\x00", "1.2.840.10008.1.2"),
         ("110112", [], [("CT1", "110153"), ("PACS1", "110152")])),
        (m.instances_accessed(SOURCE, CALLER, studies, "P1", action="U"), ("110103", [], [("CT1", "110153")])),
        (m.study_deleted(SOURCE, m.peer("admin", None, role=None, requestor=True), studies, "P1"), ("110105", [], [("admin", "")])),
        (m.security_alert(SOURCE, m.application("PACS1", role=None), "node-authentication", "EVIL@10.0.0.9",
                          description="calling AE not recognized", performer=m.peer("EVIL", "10.0.0.9", role=None, requestor=True)),
         ("110113", ["110126"], [("PACS1", ""), ("EVIL", "")])),
        (m.user_authentication(SOURCE, m.peer("bob", "10.0.0.7", role=None, requestor=True), login=True),
         ("110114", ["110122"], [("bob", "")])),
        (m.user_authentication(SOURCE, m.peer("bob", "10.0.0.7", role=None, requestor=True), login=False,
                               outcome=m.MINOR_FAILURE), ("110114", ["110123"], [("bob", "")])),
    ]
    for message, expected in cases:
        root = check_structure(message.xml)
        assert codes(root) == expected, message.xml
        assert message.event_id.code == expected[0]
        src = root.find("AuditSourceIdentification")
        assert src.get("AuditSourceID") == "PACS1" and src.get("AuditEnterpriseSiteID") == "SITE"
        assert src.find("AuditSourceTypeCode").get("csd-code") == "4"


def test_transfer_objects_study_and_patient() -> None:
    msg = m.instances_transferred(SOURCE, CALLER, APP, {"1.2.3": {"1.2.840.10008.5.1.4.1.1.2": 3, "1.2.840.10008.5.1.4.1.1.4": 1}},
                                  "P<&>1", action="R", outcome=m.MINOR_FAILURE, outcome_description="1 failed")
    root = check_structure(msg.xml)
    assert root.find("EventIdentification").get("EventActionCode") == "R"
    assert root.find("EventIdentification/EventOutcomeDescription").text == "1 failed"
    study, patient = root.findall("ParticipantObjectIdentification")
    assert (study.get("ParticipantObjectTypeCode"), study.get("ParticipantObjectTypeCodeRole")) == ("2", "3")
    assert study.find("ParticipantObjectIDTypeCode").attrib == {"csd-code": "110180", "codeSystemName": "DCM",
                                                                 "originalText": "Study Instance UID"}
    assert [(c.get("UID"), c.get("NumberOfInstances")) for c in study.findall("SOPClass")] == [
        ("1.2.840.10008.5.1.4.1.1.2", "3"), ("1.2.840.10008.5.1.4.1.1.4", "1")]
    assert (patient.get("ParticipantObjectTypeCode"), patient.get("ParticipantObjectTypeCodeRole")) == ("1", "1")
    assert patient.get("ParticipantObjectID") == "P<&>1"  # escaped in XML, intact after parsing
    assert patient.find("ParticipantObjectIDTypeCode").get("codeSystemName") == "RFC-3881"
    assert (msg.patient_id, msg.study_instance_uid, msg.requestor) == ("P<&>1", "1.2.3", "CT1")


def test_query_carries_the_identifier_and_transfer_syntax() -> None:
    msg = m.query(SOURCE, CALLER, APP, "1.2.840.10008.5.1.4.1.2.1.1", b"\x01\x02\x03", "1.2.840.10008.1.2.1")
    obj = check_structure(msg.xml).find("ParticipantObjectIdentification")
    assert base64.b64decode(obj.find("ParticipantObjectQuery").text) == b"\x01\x02\x03"
    detail = obj.find("ParticipantObjectDetail")
    assert detail.get("type") == "TransferSyntax" and base64.b64decode(detail.get("value")) == b"1.2.840.10008.1.2.1"


def test_bad_values_are_refused_or_cleaned() -> None:
    with pytest.raises(ValueError):
        m.build_message(m.QUERY, "X", 0, [CALLER], SOURCE)
    with pytest.raises(ValueError):
        m.build_message(m.QUERY, "E", 3, [CALLER], SOURCE)
    with pytest.raises(ValueError):
        m.build_message(m.QUERY, "E", 0, [], SOURCE)
    msg = m.network_entry(SOURCE, m.peer("A\x00B\x1b", None, role=None, requestor=True), attach=True)
    assert check_structure(msg.xml).find("ActiveParticipant").get("UserID") == "A\ufffdB\ufffd"


# ----------------------------------------------------------------------------- transports + spool


def test_udp_collector_receives_rfc5426_datagrams(udp_collector: UdpCollector, tmp_path: Path) -> None:
    trail = AuditTrail(SOURCE, sender=SyslogSender("127.0.0.1", udp_collector.port, "udp"), spool_dir=tmp_path / "spool")
    try:
        sent = [m.network_entry(SOURCE, CALLER, attach=attach) for attach in (True, False)]
        for msg in sent:
            assert trail.emit(msg)
        got = udp_collector.wait_for(2)
    finally:
        trail.close()
    parsed = [parse_syslog(g) for g in got]
    assert [p["msg"] for p in parsed] == [msg.xml for msg in sent]
    assert {p["pri"] for p in parsed} == {85} and {p["msgid"] for p in parsed} == {"IHE+RFC-3881"}
    assert trail.spooled == 0


def test_spool_then_deliver_in_order(certificate: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = certificate
    port = free_port()
    sender = SyslogSender("127.0.0.1", port, "tls", ca_file=str(cert), timeout=2)
    trail = AuditTrail(SOURCE, sender=sender, spool_dir=tmp_path / "spool", retry_interval=3600)  # retries by hand
    collector = TlsCollector(cert, key)
    try:
        sent = [m.network_entry(SOURCE, m.peer(f"AE{n}", None, role=None, requestor=True), attach=True) for n in range(5)]
        for msg in sent[:3]:
            trail.emit(msg)
        assert trail.flush()
        assert trail.spooled == 3 and trail.sent == 0  # nobody listens: all spooled
        assert trail.retry_spool() == 0 and trail.spooled == 3
        collector.start(port)
        assert trail.retry_spool() == 3 and trail.spooled == 0
        for msg in sent[3:]:
            trail.emit(msg)
        got = collector.wait_for(5)
    finally:
        trail.close()
        collector.stop()
    assert collector.errors == []
    assert [parse_syslog(g)["msg"] for g in got] == [msg.xml for msg in sent]  # spooled ones first, in order


def test_untrusted_collector_certificate_is_refused_and_spooled(certificate: tuple[Path, Path], tmp_path: Path) -> None:
    from .conftest import make_certificate

    cert, key = certificate
    other_ca, _ = make_certificate(tmp_path / "other")
    collector = TlsCollector(cert, key).start()
    trail = AuditTrail(SOURCE, sender=SyslogSender("127.0.0.1", collector.port, "tls", ca_file=str(other_ca)),
                       spool_dir=tmp_path / "spool", retry_interval=3600)
    try:
        trail.emit(m.network_entry(SOURCE, CALLER, attach=True))
        assert trail.flush()
        assert trail.spooled == 1 and collector.messages == []
    finally:
        trail.close()
        collector.stop()


def test_spool_limit_counts_what_it_cannot_keep(tmp_path: Path) -> None:
    trail = AuditTrail(SOURCE, sender=SyslogSender("127.0.0.1", free_port(), "tcp", timeout=1),
                       spool_dir=tmp_path / "spool", max_spool=2, retry_interval=3600)
    try:
        for _ in range(4):
            trail.emit(m.network_entry(SOURCE, CALLER, attach=True))
        assert trail.flush()
        assert trail.spooled == 2 and trail.dropped == 2
    finally:
        trail.close()


def _server_folder(tmp_path: Path, audit_options: str) -> Path:
    folder = tmp_path / "srv"
    folder.mkdir()
    (folder / "server.toml").write_text(
        'ae_title = "AUDITED"\nport = 0\ndata_dir = "data"\n[logging]\nconsole = false\n'
        f"[addins.audit]\n{audit_options}\n"
    )
    return folder


def _audit_rows(folder: Path) -> list[tuple[str, str | None]]:
    engine = create_engine(f"sqlite:///{folder / 'data' / 'index.db'}")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT event_id, event_type FROM audit_records ORDER BY pk")).all()
    engine.dispose()
    return [tuple(r) for r in rows]


@pytest.mark.dcmtk
@pytest.mark.usefixtures("need_dcmtk")
def test_server_audits_to_udp(udp_collector: UdpCollector, tmp_path: Path) -> None:
    folder = _server_folder(tmp_path, f'syslog_host = "127.0.0.1"\nsyslog_port = {udp_collector.port}\nsyslog_protocol = "udp"')

    async def run() -> None:
        async with Server(load_settings(folder)) as server:
            out = await asyncio.to_thread(run_echoscu, "127.0.0.1", server.port, "AUDITED", "ECHOER")
            assert out.returncode == 0, out.stdout
            out = await asyncio.to_thread(run_echoscu, "127.0.0.1", server.port, "WRONG", "ECHOER")
            assert out.returncode != 0  # called AE not recognized: refused -> Security Alert

    asyncio.run(run())
    expected = [("110100", "110120"), ("110108", "110124"), ("110108", "110125"), ("110113", "110126"),
                ("110100", "110121")]
    assert _audit_rows(folder) == expected
    got = udp_collector.wait_for(5)
    events = [codes(check_structure(parse_syslog(g)["msg"]))[:2] for g in got]
    assert [(e, t[0] if t else None) for e, t in events] == expected
    alert = check_structure(parse_syslog(got[3])["msg"])
    subject = alert.find("ParticipantObjectIdentification")
    assert subject.get("ParticipantObjectID") == "ECHOER@127.0.0.1"
    assert subject.get("ParticipantObjectTypeCodeRole") == "13"
    assert "called AE title not recognized" in alert.find("EventIdentification/EventOutcomeDescription").text


@pytest.mark.dcmtk
@pytest.mark.usefixtures("need_dcmtk")
def test_server_spools_while_the_collector_is_down_then_delivers(certificate: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = certificate
    port = free_port()
    folder = _server_folder(tmp_path, f'syslog_host = "127.0.0.1"\nsyslog_port = {port}\nca_file = "{cert}"\n'
                                      "retry_interval = 0.1")
    collector = TlsCollector(cert, key)
    spool = folder / "data" / "audit-spool"

    async def run() -> None:
        async with Server(load_settings(folder)) as server:
            out = await asyncio.to_thread(run_echoscu, "127.0.0.1", server.port, "AUDITED", "ECHOER")
            assert out.returncode == 0, out.stdout
            deadline = time.monotonic() + 15
            while len(list(spool.glob("*.syslog"))) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert len(list(spool.glob("*.syslog"))) == 3  # start, attach, detach: collector down
            collector.start(port)
            await asyncio.to_thread(collector.wait_for, 3)
            assert list(spool.glob("*.syslog")) == []

    try:
        asyncio.run(run())
        got = collector.wait_for(4)  # + Application Stop, sent directly
    finally:
        collector.stop()
    events = [codes(check_structure(parse_syslog(g)["msg"]))[0] for g in got]
    assert events == ["110100", "110108", "110108", "110100"]
    assert [e for e, _ in _audit_rows(folder)] == events


# ----------------------------------------------------------------------------- the public API


class _Guard(AddIn):
    """An access-control stand-in: reports a Security Alert through pacskit.audit on every C-ECHO."""

    name = "guard"

    def presentation_contexts(self) -> list[SupportedContext]:
        return [SupportedContext("1.2.840.10008.1.1")]

    def handlers(self) -> dict[str, Any]:
        return {"C-ECHO": self.on_echo}

    def on_echo(self, request: Any) -> int:
        ok = self.base.audit.security_alert("use-of-restricted-function", request.assoc.remote_ae_title,
                                            description="C-ECHO is not allowed", peer_ae=request.assoc.remote_ae_title,
                                            peer_address=request.assoc.peer_address[0])
        return 0x0000 if ok else 0x0110


@pytest.mark.dcmtk
@pytest.mark.usefixtures("need_dcmtk")
def test_other_addins_emit_through_the_public_api(tmp_path: Path) -> None:
    from pacskit.addins.audit import AuditAddIn

    folder = _server_folder(tmp_path, "network_entry = false")

    async def run() -> None:
        async with Server(load_settings(folder), addin_classes=[_Guard, AuditAddIn]) as server:
            out = await asyncio.to_thread(run_echoscu, "127.0.0.1", server.port, "AUDITED", "ECHOER")
            assert out.returncode == 0, out.stdout  # 0x0000: the alert was queued

    asyncio.run(run())
    assert _audit_rows(folder) == [("110100", "110120"), ("110113", "110132"), ("110100", "110121")]


def test_the_api_without_an_audit_addin_does_nothing() -> None:
    base = BaseServices(None, None, None, None, object(), None, Path("."))  # type: ignore[arg-type]
    assert base.audit.security_alert("node-authentication", "X") is False
    assert base.audit.user_authentication("bob") is False
    assert base.audit.study_deleted("1.2.3", "P", user="admin") is False
    assert base.audit.instances_accessed("1.2.3", "P", user="admin") is False
