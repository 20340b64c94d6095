"""The log viewer's API (transaction log + audit trail: filters, paging, CSV, SSE tail), the local
search (sort, page, total, filters), `pacskit users`, and `pacskit serve --web`."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from typing import Any

from pacskit.client import EchoScu, QueryRetrieveScu
from pacskit.testing.workstation import Workstation


def _flush_logs(ws: Workstation) -> None:
    """The txlog and audit writers commit in batches: wait until what happened so far is written."""
    for addin in ws.server.addins:
        recorder = getattr(addin, "recorder", None)
        if recorder is not None:
            assert recorder.flush(10)
    sink = ws.server.audit._sink
    if sink is not None:
        assert sink.flush(10)


def test_local_search_sorts_pages_and_filters(ws: Workstation) -> None:
    with ws.login("viewer") as client:
        page = client.get("/api/studies", params={"sort": "PatientName", "order": "asc", "limit": 2}).json()
        assert page["source"] == "local" and page["total"] == 3
        assert [i["00100010"]["Value"][0]["Alphabetic"] for i in page["items"]] == ["TEST^PATIENT1", "TEST^PATIENT2"]
        rest = client.get("/api/studies", params={"sort": "PatientName", "order": "asc", "limit": 2, "offset": 2}).json()
        assert rest["total"] == 3 and [i["00100020"]["Value"][0] for i in rest["items"]] == ["PID0003"]
        by_date = client.get("/api/studies", params={"sort": "StudyDate", "order": "desc"}).json()
        assert [i["00080020"]["Value"][0] for i in by_date["items"]] == ["20240303", "20240202", "20240101"]
        assert client.get("/api/studies", params={"PatientName": "test^patient2*"}).json()["total"] == 1
        assert client.get("/api/studies", params={"PatientName": "TEST*"}).json()["total"] == 3
        assert client.get("/api/studies", params={"StudyDate": "20240201-20240331"}).json()["total"] == 2
        assert client.get("/api/studies", params={"AccessionNumber": "ACC0003"}).json()["total"] == 1
        assert client.get("/api/studies", params={"ModalitiesInStudy": "MR"}).json()["total"] == 0
        assert client.get("/api/studies", params={"StudyDescription": "*study 1"}).json()["total"] == 1
        one = client.get("/api/studies", params={"StudyInstanceUID": ws.study_uids[1]}).json()
        assert one["total"] == 1 and one["items"][0]["0020000D"]["Value"] == [ws.study_uids[1]]
        item = page["items"][0]
        for tag in ("0020000D", "00100010", "00100020", "00080050", "00080020", "00080030", "00081030", "00080061",
                    "00201206", "00201208"):
            assert tag in item
        assert item["00201208"]["Value"] == [5] and "00080052" not in item
        series = client.get(f"/api/studies/{ws.study_uids[0]}/series").json()["items"]
        assert len(series) == 1 and series[0]["00201209"]["Value"] == [5]
        assert client.get("/api/studies", params={"limit": 0}).status_code == 422


def test_transaction_log_filters_paging_and_csv(ws: Workstation) -> None:
    EchoScu(f"PACSKIT@127.0.0.1:{ws.dicom_port}", calling_ae="LOGTEST").echo_sync()
    QueryRetrieveScu(f"PACSKIT@127.0.0.1:{ws.dicom_port}", calling_ae="LOGTEST").find_sync(
        {"PatientID": "PID0002", "StudyInstanceUID": ""}, level="STUDY")
    _flush_logs(ws)
    with ws.login("operator") as client:
        mine = client.get("/api/logs/transactions", params={"ae": "LOGTEST"}).json()
        assert mine["total"] == 2 and [i["operation"] for i in mine["items"]] == ["C-FIND", "C-ECHO"]  # newest first
        assert all(i["calling_ae"] == "LOGTEST" and i["status"] == 0 for i in mine["items"])
        assert client.get("/api/logs/transactions", params={"ae": "LOGTEST", "operation": "echo"}).json()["total"] == 1
        finds = client.get("/api/logs/transactions", params={"ae": "LOGTEST", "patient": "PID0002"}).json()
        assert finds["total"] == 1 and finds["items"][0]["patient_name"] == "TEST^PATIENT2"
        by_name = client.get("/api/logs/transactions", params={"ae": "LOGTEST", "patient": "patient2"}).json()
        assert by_name["total"] == 1
        assert client.get("/api/logs/transactions", params={"ae": "LOGTEST", "status": "failure"}).json()["total"] == 0
        future = client.get("/api/logs/transactions", params={"since": "2999-01-01T00:00:00Z"}).json()
        assert future["total"] == 0
        page = client.get("/api/logs/transactions", params={"ae": "LOGTEST", "limit": 1, "offset": 1}).json()
        assert page["total"] == 2 and page["items"][0]["operation"] == "C-ECHO"
        assert client.get("/api/logs/transactions", params={"since": "yesterday"}).status_code == 400
        exported = client.get("/api/logs/transactions", params={"ae": "LOGTEST", "format": "csv"})
        assert exported.headers["content-type"].startswith("text/csv")
        assert "attachment" in exported.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        assert [r["operation"] for r in rows] == ["C-FIND", "C-ECHO"] and rows[0]["calling_ae"] == "LOGTEST"


def test_audit_filters_and_csv(ws: Workstation) -> None:
    ws.login("admin").close()
    _flush_logs(ws)
    with ws.login("operator") as client:
        logins = client.get("/api/logs/audit", params={"event": "User Authentication", "user": "admin",
                                                       "outcome": "success"}).json()
        assert logins["total"] >= 1 and all(i["user"] == "admin" and i["outcome"] == 0 for i in logins["items"])
        assert client.get("/api/logs/audit", params={"outcome": "sometimes"}).status_code == 400
        exported = client.get("/api/logs/audit", params={"event": "110114", "format": "csv"})
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        assert rows and {r["event_id"] for r in rows} == {"110114"}


def test_audit_tail_streams_new_entries(ws: Workstation) -> None:
    with ws.login("operator") as client, client.stream("GET", "/api/logs/audit/tail", timeout=30) as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith(":")
        ws.login("viewer").close()  # a login: a User Authentication message
        _flush_logs(ws)
        deadline = time.monotonic() + 30
        for line in lines:
            assert time.monotonic() < deadline
            if line.startswith("data: "):
                entry = json.loads(line[6:])
                if entry["user"] == "viewer" and entry["event_id"] == "110114":
                    break


def test_log_tail_streams_new_entries(ws: Workstation) -> None:
    with ws.login("operator") as client, client.stream("GET", "/api/logs/transactions/tail", timeout=30) as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith(":")  # the stream is open: later rows are new
        EchoScu(f"PACSKIT@127.0.0.1:{ws.dicom_port}", calling_ae="TAILTEST").echo_sync()
        _flush_logs(ws)
        deadline = time.monotonic() + 30
        for line in lines:
            assert time.monotonic() < deadline
            if line.startswith("data: "):
                entry = json.loads(line[6:])
                if entry["calling_ae"] == "TAILTEST":
                    assert entry["operation"] == "C-ECHO"
                    break


def _pacskit(*args: str, stdin: str | None = None, cwd: Path) -> Any:
    from typer.testing import CliRunner

    from pacskit.cli.commands import app

    return CliRunner().invoke(app, list(args), input=stdin)


def test_users_cli(tmp_path: Path) -> None:
    folder = ["--data-dir", str(tmp_path / "srv")]
    added = _pacskit("users", "add", "alice", "--role", "operator", "--password-stdin", *folder,
                     stdin="alice-password\n", cwd=tmp_path)
    assert added.exit_code == 0, added.output
    text = (tmp_path / "srv" / "users.toml").read_text()
    assert "alice-password" not in text and "scrypt$" in text
    assert oct((tmp_path / "srv" / "users.toml").stat().st_mode & 0o777) == "0o600"
    assert _pacskit("users", "add", "alice", "--password-stdin", *folder, stdin="another-pass\n", cwd=tmp_path).exit_code == 2
    short = _pacskit("users", "add", "bob", "--password-stdin", *folder, stdin="short\n", cwd=tmp_path)
    assert short.exit_code == 2 and "too short" in short.output
    assert _pacskit("users", "add", "eve", "--role", "root", "--password-stdin", *folder, stdin="eve-password\n",
                    cwd=tmp_path).exit_code == 2
    assert _pacskit("users", "passwd", "alice", "--role", "admin", "--password-stdin", *folder,
                    stdin="new-password\n", cwd=tmp_path).exit_code == 0
    listed = json.loads(_pacskit("users", "list", "--json", *folder, cwd=tmp_path).output)
    assert listed == [{"username": "alice", "role": "admin"}]
    from pacskit.addins.workstation.users import UserFile

    users = UserFile(tmp_path / "srv" / "users.toml")
    assert users.authenticate("alice", "new-password") is not None and users.authenticate("alice", "alice-password") is None
    assert _pacskit("users", "remove", "alice", *folder, cwd=tmp_path).exit_code == 0
    assert _pacskit("users", "remove", "alice", *folder, cwd=tmp_path).exit_code == 2


def _entry_point_path(tmp_path: Path) -> str:
    """A folder to put on PYTHONPATH declaring the workstation's entry point when the installed
    pacskit metadata predates it (a checkout not re-installed since); empty when installed."""
    from importlib.metadata import entry_points

    if any(ep.name == "workstation" for ep in entry_points(group="pacskit.addins")):
        return ""
    info = tmp_path / "ep" / "pacskit_workstation_ep-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pacskit-workstation-ep\nVersion: 0\n")
    (info / "entry_points.txt").write_text(
        "[pacskit.addins]\nworkstation = pacskit.addins.workstation:WorkstationAddIn\n")
    return str(info.parent)


def test_serve_web_prints_the_url(tmp_path: Path) -> None:
    import httpx

    paths = [str(Path(__file__).resolve().parents[2] / "src"), _entry_point_path(tmp_path)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pacskit", "serve", "--web", "--port", "0", "--http-port", "0",
                             "--data-dir", str(tmp_path / "srv")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=tmp_path, env=env)
    try:
        assert proc.stdout is not None
        url = None
        for line in proc.stdout:
            if line.startswith("web workstation: open "):
                url = line.split("open ", 1)[1].strip()
                break
            assert not line.startswith("error"), line
        assert url is not None and url.startswith("http://127.0.0.1:") and url.endswith("/ui/")
        base = url.removesuffix("/ui/")
        assert httpx.get(base + "/api/session").status_code == 401
        assert httpx.get(base + "/dicom-web/studies").status_code == 401  # DICOMweb is on, behind the login
    finally:
        proc.terminate()
        proc.wait(30)
