"""/api/servers over a real servers root (pacskit.admin.manager.ServiceManager): list, create, start,
stop; 404 "not managed" for a standalone server; admin API passthrough edits an AE title and an
add-in option."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pacskit.admin.manager import ServiceManager
from pacskit.testing.workstation import Workstation, workstation


def test_standalone_server_is_not_managed(ws: Workstation) -> None:
    with ws.login("admin") as client:
        response = client.get("/api/servers")
        assert response.status_code == 404 and response.json()["detail"] == "not managed"


def test_admin_api_through_the_workstation(ws: Workstation) -> None:
    with ws.login("admin") as admin:
        created = admin.post("/api/admin/ae-titles", json={"title": "NEWAE", "host": "127.0.0.1", "port": 11113})
        assert created.status_code == 201, created.text
        edited = admin.put("/api/admin/ae-titles/NEWAE", json={"title": "NEWAE", "host": "127.0.0.1", "port": 11114,
                                                                "description": "edited"})
        assert edited.status_code == 200 and ws.server.ae_titles.get("NEWAE").port == 11114
        addin = admin.get("/api/admin/addins/workstation").json()
        assert addin["schema"]["properties"]["session_minutes"]
        patched = admin.patch("/api/admin/addins/workstation", json={"session_minutes": 45})
        assert patched.status_code == 200, patched.text
        assert "session_minutes = 45" in (ws.folder / "server.toml").read_text()
        assert admin.delete("/api/admin/ae-titles/NEWAE").status_code == 204
    with ws.login("operator") as operator:
        assert operator.get("/api/admin/status").json()["ae_title"] == "PACSKIT"
        assert operator.delete("/api/admin/ae-titles/ORTHANC").status_code == 403


@pytest.fixture
def servers_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ServiceManager:
    # the servers the manager starts run `python -m pacskit` from this checkout
    src = str(Path(__file__).resolve().parents[2] / "src")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))
    return ServiceManager(tmp_path / "servers")


def test_servers_root(tmp_path: Path, servers_root: ServiceManager) -> None:
    with workstation(tmp_path / "ws", studies=0, servers=servers_root) as ws:
        with ws.login("operator") as operator:
            assert operator.get("/api/servers").json() == []
            assert operator.post("/api/servers", json={"name": "SECOND", "port": 0}).status_code == 403
        with ws.login("admin") as admin:
            created = admin.post("/api/servers", json={"name": "SECOND", "port": 0})
            assert created.status_code == 201, created.text
            assert created.json() == {"name": "SECOND", "ae_title": "SECOND", "port": 0, "state": "stopped", "pid": None}
            assert admin.post("/api/servers", json={"name": "SECOND", "port": 0}).status_code == 409
            assert admin.post("/api/servers", json={"name": "../x", "port": 0}).status_code == 409
            started = admin.post("/api/servers/SECOND/start", timeout=90)
            assert started.status_code == 200, started.text
            assert started.json()["state"] == "running" and started.json()["pid"] > 0
            try:
                assert admin.get("/api/servers").json()[0]["state"] == "running"
            finally:
                stopped = admin.post("/api/servers/SECOND/stop", timeout=90)
            assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"
            assert admin.post("/api/servers/NOSUCH/start").status_code == 409


def test_refuses_worker_processes(tmp_path: Path) -> None:
    from pacskit.testing.server import running_server
    from pacskit.testing.workstation import ADDINS, write_server_folder

    folder = write_server_folder(tmp_path / "srv")
    (folder / "server.toml").write_text("workers = 2\n" + (folder / "server.toml").read_text())
    with pytest.raises(ValueError, match="workers = 1"), running_server(folder, addin_classes=ADDINS):
        pass
