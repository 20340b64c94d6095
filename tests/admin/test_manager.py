"""The service manager without processes: edits are validated, stale pid files ignored, settings kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pacskit.admin.manager import ManagerError, ServiceManager, parse_assignment
from pacskit.config.settings import update_settings_file
from pacskit.cli import app
from pacskit.config.settings import SettingsError, load_settings


def test_parse_assignment() -> None:
    assert parse_assignment("port=11114") == (["port"], 11114)
    assert parse_assignment("admin.enabled=false") == (["admin", "enabled"], False)
    assert parse_assignment('addins.storage.duplicate_policy="reject"') == (["addins", "storage", "duplicate_policy"], "reject")
    assert parse_assignment("addins.storage.duplicate_policy=reject") == (["addins", "storage", "duplicate_policy"], "reject")
    with pytest.raises(ManagerError):
        parse_assignment("no-equals-sign")


def test_edit_validates_and_keeps_the_file_on_error(servers_root: Path) -> None:
    manager = ServiceManager(servers_root)
    folder = manager.create("EDITME", port=11120, database_url="sqlite:///{data_dir}/other.db")
    before = (folder / "server.toml").read_text()
    assert 'url = "sqlite:///{data_dir}/other.db"' in before
    for bad in (["port=70000"], ["no_such_key=1"], ["ae_title=A\\B"], ["open_mode=maybe"],
                ["admin.tcp_port=8443", "admin.tcp_host=0.0.0.0"]):
        with pytest.raises(ManagerError):
            manager.edit("EDITME", bad)
        assert (folder / "server.toml").read_text() == before
    settings = manager.edit("EDITME", ["port=11121", "addins.storage.duplicate_policy=reject", "admin.statistics=false"])
    assert settings.port == 11121 and settings.admin.statistics is False
    assert settings.addins["storage"] == {"duplicate_policy": "reject"}
    assert load_settings(folder).database.url == "sqlite:///{data_dir}/other.db"  # untouched keys stay
    with pytest.raises(SettingsError):
        update_settings_file(folder, lambda data: data.update(max_associations=0))
    result = CliRunner().invoke(app, ["server", "edit", "EDITME", "--set", "port=-1"])
    assert result.exit_code == 2 and "port" in result.output


def test_stale_pid_file_is_not_a_running_server(servers_root: Path) -> None:
    manager = ServiceManager(servers_root)
    folder = manager.create("STALE", port=11122)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (folder / "server.pid").write_text(f"{other.pid}\n")  # alive, but not this server
        assert manager.pid(folder) is None
        assert not (folder / "server.pid").exists()
        (folder / "server.pid").write_text(f"{os.getpid() + 10_000_000}\n")  # no such process
        assert manager.list()[0].pid is None
        status = manager.status("STALE")
        assert status["running"] is False and "server" not in status
        assert manager.stop("STALE") is False
    finally:
        other.kill()
        other.wait()
    result = CliRunner().invoke(app, ["server", "status", "STALE"])
    assert result.exit_code == 3 and "stopped" in result.output


def test_cli_needs_a_running_server(servers_root: Path) -> None:
    ServiceManager(servers_root).create("IDLE", port=11123)
    result = CliRunner().invoke(app, ["clients"])
    assert result.exit_code == 3 and "not running" in result.output
    ServiceManager(servers_root).create("IDLE2", port=11124)
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 2 and "--server" in result.output
    # ae commands on a stopped server edit the registry file
    folder = servers_root / "IDLE"
    out = CliRunner().invoke(app, ["ae", "add", "OFFLINE", "--host", "127.0.0.1", "--port", "104", "--config", str(folder)])
    assert out.exit_code == 0, out.output
    assert "OFFLINE" in (folder / "ae-titles.toml").read_text()
