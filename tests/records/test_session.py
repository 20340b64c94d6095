"""A scripted DCMTK session against ``pacskit`` with the txlog and audit add-ins (as installed: entry
points), the audit trail sent over TLS to a collector started here: the transaction log holds exactly
the operations run with their statuses, the audit trail the A.5 messages they call for (in the
database and at the collector, the same XML), and ``pacskit log`` filters them."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import subprocess
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from pacskit.cli import app
from pacskit.config.aetitles import AE_FILE, FileAeRegistry, RemoteAE
from pacskit.server.server import Server
from pacskit.config.settings import load_settings
from pacskit.testing.peers import dcmtk_env, dcmtk_tool, storescp
from pacskit.testing.synth import make_series

from .conftest import TlsCollector, make_certificate, parse_syslog

pytestmark = [pytest.mark.dcmtk, pytest.mark.usefixtures("need_dcmtk")]

PACS = "RECPACS"
SCU = "SESSIONSCU"
PATIENT = "PAT-REC-1"
CT = "1.2.840.10008.5.1.4.1.1.2"


async def dcmtk(tool: str, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        dcmtk_tool(tool), *args, env=dcmtk_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(errors="replace")


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from pacskit.testing.peers import have_dcmtk

    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")
    tmp = tmp_path_factory.mktemp("session")
    cert, key = make_certificate(tmp / "certs")
    collector = TlsCollector(cert, key).start()
    folder = tmp / "srv"
    folder.mkdir()
    (folder / "server.toml").write_text(
        f'ae_title = "{PACS}"\nport = 0\ndata_dir = "data"\n'
        "[logging]\nconsole = false\n"
        "[addins.audit]\n"
        f'syslog_host = "127.0.0.1"\nsyslog_port = {collector.port}\nsyslog_protocol = "tls"\n'
        f'ca_file = "{cert}"\n'
    )
    files = make_series(tmp / "in", 3, patient_id=PATIENT, transfer_syntax=ExplicitVRLittleEndian)
    from pydicom import dcmread

    study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    outputs: dict[str, tuple[int, str]] = {}
    before = dt.datetime.now(dt.UTC)

    async def run() -> None:
        settings = load_settings(folder)
        with storescp(tmp / "scp") as scp:
            FileAeRegistry(folder / AE_FILE).add(RemoteAE(title="STORESCP", host="127.0.0.1", port=scp.port))
            async with Server(settings) as server:
                port = str(server.port)
                common = ["-aet", SCU, "-aec", PACS]
                outputs["echo"] = await dcmtk("echoscu", "-v", *common, "127.0.0.1", port)
                outputs["store"] = await dcmtk("storescu", "-v", *common, "127.0.0.1", port, *map(str, files))
                outputs["find"] = await dcmtk("findscu", "-v", "-S", *common, "-k", "QueryRetrieveLevel=STUDY",
                                              "-k", f"PatientID={PATIENT}", "-k", "StudyInstanceUID",
                                              "127.0.0.1", port)
                move_keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
                outputs["move"] = await dcmtk("movescu", "-v", "-S", *common, "-aem", "STORESCP", *move_keys,
                                              "127.0.0.1", port)
                outputs["move-unknown"] = await dcmtk("movescu", "-v", "-S", *common, "-aem", "NOWHERE",
                                                      *move_keys, "127.0.0.1", port)
                outputs["get"] = await dcmtk("getscu", "-v", "-S", *common, "-od", str(tmp / "got"), *move_keys,
                                             "127.0.0.1", port)
                addins = {a.name: a for a in server.addins}
                assert {"txlog", "audit"} <= set(addins)
                outputs["txlog-dropped"] = (addins["txlog"].dropped, "")

    (tmp / "got").mkdir()
    asyncio.run(run())
    engine = create_engine(f"sqlite:///{folder / 'data' / 'index.db'}")
    with engine.connect() as conn:
        txlog = [dict(r._mapping) for r in conn.execute(text("SELECT * FROM transaction_log ORDER BY pk"))]
        audit = [dict(r._mapping) for r in conn.execute(text("SELECT * FROM audit_records ORDER BY pk"))]
    engine.dispose()
    received = collector.wait_for(len(audit))
    collector.stop()
    yield {"folder": folder, "study": study, "files": files, "outputs": outputs, "txlog": txlog, "audit": audit,
           "received": received, "collector": collector, "before": before}


def test_transaction_log_has_exactly_the_operations_run(session: dict[str, Any]) -> None:
    out = session["outputs"]
    assert "Received Final Move Response (Success)" in out["move"][1], out["move"][1]
    assert "MoveDestinationUnknown" in out["move-unknown"][1], out["move-unknown"][1]
    rows = session["txlog"]
    assert [(r["service"], r["status"]) for r in rows] == [
        ("C-ECHO", 0x0000),
        ("C-STORE", 0x0000), ("C-STORE", 0x0000), ("C-STORE", 0x0000),
        ("C-FIND", 0x0000),
        ("C-MOVE", 0x0000),
        ("C-MOVE", 0xA801),  # Move Destination unknown
        ("C-GET", 0x0000),
    ]
    assert {r["calling_ae"] for r in rows} == {SCU}
    assert {r["called_ae"] for r in rows} == {PACS}
    assert {r["server_ae"] for r in rows} == {PACS}
    assert all(r["peer_address"].startswith("127.0.0.1:") for r in rows)
    assert len({r["association_id"] for r in rows}) == 6  # one association per tool; the 3 stores share one
    stores = rows[1:4]
    assert len({r["association_id"] for r in stores}) == 1
    from pydicom import dcmread

    sent_uids = [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in session["files"]]
    assert [r["sop_instance_uid"] for r in stores] == sent_uids
    for r in stores:
        assert r["sop_class_uid"] == CT
        assert r["patient_id"] == PATIENT and r["study_instance_uid"] == session["study"]
        assert r["bytes_received"] > 8000 and r["bytes_sent"] == 0
    find = rows[4]
    assert find["patient_id"] == PATIENT and find["bytes_sent"] > 0  # the match
    move_ok, move_bad, get = rows[5], rows[6], rows[7]
    assert move_ok["move_destination"] == "STORESCP" and move_ok["study_instance_uid"] == session["study"]
    assert move_bad["move_destination"] == "NOWHERE" and move_bad["completed"] is None
    assert get["completed"] == 3 and get["failed"] == 0 and get["bytes_sent"] > 3 * 8000  # the sub-operations
    assert all(r["duration_ms"] >= 0 for r in rows)
    assert out["txlog-dropped"][0] == 0


def _parse(xml: str) -> ET.Element:
    root = ET.fromstring(xml)
    assert root.tag == "AuditMessage"
    return root


def _event(root: ET.Element) -> tuple[str, str | None, str, str]:
    ident = root.find("EventIdentification")
    assert ident is not None
    event_id = ident.find("EventID")
    assert event_id is not None and event_id.get("codeSystemName") == "DCM"
    etype = ident.find("EventTypeCode")
    return (event_id.get("csd-code") or "", etype.get("csd-code") if etype is not None else None,
            ident.get("EventActionCode") or "", ident.get("EventOutcomeIndicator") or "")


def test_audit_trail_of_the_session(session: dict[str, Any]) -> None:
    audit = session["audit"]
    events = [_event(_parse(r["xml"])) for r in audit]
    counts = Counter((e[0], e[1], e[2]) for e in events)
    assert counts == {
        ("110100", "110120", "E"): 1,  # Application Activity: start
        ("110100", "110121", "E"): 1,  # ... stop
        ("110108", "110124", "E"): 6,  # Network Entry: attach, one per association
        ("110108", "110125", "E"): 6,  # ... detach
        ("110104", None, "C"): 1,  # Instances Transferred: the 3 stored instances (one patient)
        ("110112", None, "E"): 1,  # Query
        ("110102", None, "E"): 2,  # Begin Transferring: C-MOVE and C-GET (not the refused C-MOVE)
        ("110104", None, "R"): 3,  # Instances Transferred: both C-MOVEs and the C-GET
    }, counts
    assert events[0][:2] == ("110100", "110120") and events[-1][:2] == ("110100", "110121")
    # the refused C-MOVE: minor failure; everything else succeeded
    assert sorted(e[3] for e in events if e[:3] == ("110104", None, "R")) == ["0", "0", "4"]
    assert {e[3] for e in events if e[:3] != ("110104", None, "R")} == {"0"}

    stored = next(_parse(r["xml"]) for r in audit if r["event_id"] == "110104" and r["event_action"] == "C")
    parts = stored.findall("ActiveParticipant")
    source = [p for p in parts if p.find("RoleIDCode").get("csd-code") == "110153"]
    dest = [p for p in parts if p.find("RoleIDCode").get("csd-code") == "110152"]
    assert len(source) == 1 and source[0].get("UserID") == SCU and source[0].get("UserIsRequestor") == "true"
    assert source[0].get("NetworkAccessPointID") == "127.0.0.1" and source[0].get("NetworkAccessPointTypeCode") == "2"
    assert len(dest) == 1 and dest[0].get("UserID") == PACS and dest[0].get("UserIsRequestor") == "false"
    objects = {o.find("ParticipantObjectIDTypeCode").get("csd-code"): o
               for o in stored.findall("ParticipantObjectIdentification")}
    assert objects["110180"].get("ParticipantObjectID") == session["study"]
    assert [(c.get("UID"), c.get("NumberOfInstances")) for c in objects["110180"].findall("SOPClass")] == [(CT, "3")]
    assert objects["2"].get("ParticipantObjectID") == PATIENT and objects["2"].get("ParticipantObjectTypeCode") == "1"

    query = next(_parse(r["xml"]) for r in audit if r["event_id"] == "110112")
    obj = query.find("ParticipantObjectIdentification")
    assert obj.find("ParticipantObjectIDTypeCode").get("csd-code") == "110181"
    assert obj.get("ParticipantObjectID") == "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root FIND
    raw = base64.b64decode(obj.find("ParticipantObjectQuery").text)
    from pacskit.net import ReceivedDataset

    ds = ReceivedDataset("1.2.840.10008.1.2.1", data=raw, size=len(raw)).decode()
    assert ds.PatientID == PATIENT and ds.QueryRetrieveLevel == "STUDY"

    db_rows = {(r["event_id"], r["requestor"]) for r in audit}
    assert ("110112", SCU) in db_rows


def test_collector_received_the_same_messages_over_tls(session: dict[str, Any]) -> None:
    collector = session["collector"]
    assert collector.errors == []
    parsed = [parse_syslog(m) for m in session["received"]]
    assert {p["pri"] for p in parsed} == {10 * 8 + 5}  # authpriv.notice
    assert {p["msgid"] for p in parsed} == {"IHE+RFC-3881"}
    assert {p["app"] for p in parsed} == {"pacskit"}
    assert [p["msg"] for p in parsed] == [r["xml"] for r in session["audit"]]


def _log(folder: Path, *args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(app, ["log", "--config", str(folder), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_pacskit_log_filters(session: dict[str, Any]) -> None:
    folder = session["folder"]
    everything = _log(folder)
    assert [r["service"] for r in everything] == [r["service"] for r in reversed(session["txlog"])]  # newest first
    assert len(_log(folder, "--ae", SCU)) == 8
    assert _log(folder, "--ae", "SOMEONE-ELSE") == []
    assert len(_log(folder, "--ae", "STORESCP")) == 1  # as move destination
    assert [r["service"] for r in _log(folder, "-o", "store")] == ["C-STORE"] * 3
    assert [r["service"] for r in _log(folder, "--operation", "C-MOVE")] == ["C-MOVE"] * 2
    failures = _log(folder, "--status", "failure")
    assert [(r["service"], r["status"]) for r in failures] == [("C-MOVE", 0xA801)]
    assert _log(folder, "--status", "0xA801") == failures
    assert len(_log(folder, "--status", "success")) == 7
    assert _log(folder, "--status", "warning") == []
    assert len(_log(folder, "--patient", PATIENT)) == 7  # not the C-ECHO
    assert {r["service"] for r in _log(folder, "--study", session["study"])} == {"C-STORE", "C-MOVE", "C-GET"}
    assert len(_log(folder, "--since", session["before"].isoformat())) == 8
    assert _log(folder, "--until", session["before"].isoformat()) == []
    assert _log(folder, "--since", "1d", "--until", "1d") == []
    assert len(_log(folder, "--since", "1h", "-n", "2")) == 2
    assert len(_log(folder, "-o", "store", "--patient", PATIENT, "--status", "success", "--ae", SCU)) == 3
    table = CliRunner().invoke(app, ["log", "--config", str(folder), "--status", "failure"])
    assert table.exit_code == 0 and "0xA801 Failure" in table.output and "NOWHERE" in table.output
    bad = CliRunner().invoke(app, ["log", "--config", str(folder), "--status", "sometimes"])
    assert bad.exit_code == 2
