"""``pacskit server install-service``: the unit runs the server as a non-root user, hardened.

The structural checks always run; ``systemd-analyze verify`` runs too wherever the tool exists (it is
on this project's machines), and must report nothing about our unit.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pacskit.admin.manager import ManagerError, ServiceManager
from pacskit.cli import app


def _unit_entries(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"entry outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line}"
        current.setdefault(key, []).append(value)
    return sections


@pytest.mark.parametrize("port", [11113, 104])
def test_unit_is_hardened_and_verifies(servers_root: Path, tmp_path: Path, port: int) -> None:
    manager = ServiceManager(servers_root)
    manager.create("STORE", port=port)
    unit_dir = tmp_path / "units"
    result = CliRunner().invoke(
        app, ["server", "install-service", "STORE", "--user", "pacskit", "--unit-dir", str(unit_dir)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    unit = unit_dir / "pacskit-STORE.service"
    entries = _unit_entries(unit.read_text())
    service = entries["Service"]
    folder = str((servers_root / "STORE").resolve())

    assert set(entries) == {"Unit", "Service", "Install"}
    assert service["User"] == ["pacskit"] and service["Group"] == ["pacskit"]
    assert service["ExecStart"] == [f"{sys.executable} -m pacskit serve --config {folder}"]
    assert service["WorkingDirectory"] == [folder]
    assert service["ReadWritePaths"] == [folder]
    for key, value in {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "read-only", "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes", "KillSignal": "SIGTERM",
    }.items():
        assert service[key] == [value], key
    # the folder is under /tmp here, so /tmp must stay shared for the service to see it
    assert service["PrivateTmp"] == ["no" if folder.startswith("/tmp/") else "yes"]
    caps = "CAP_NET_BIND_SERVICE" if port < 1024 else ""
    assert service["CapabilityBoundingSet"] == [caps] and service["AmbientCapabilities"] == [caps]
    assert entries["Install"]["WantedBy"] == ["multi-user.target"]

    tool = shutil.which("systemd-analyze")
    if tool is not None:
        verify = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
        ours = [line for line in (verify.stdout + verify.stderr).splitlines() if unit.name in line]
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert ours == [], ours


def test_unit_refuses_root_and_odd_names(servers_root: Path, tmp_path: Path) -> None:
    manager = ServiceManager(servers_root)
    manager.create("STORE", port=11113)
    for user in ("root", "bad user", "x;rm"):
        with pytest.raises(ManagerError):
            manager.install_service("STORE", user=user, unit_dir=tmp_path)
    assert not list(tmp_path.glob("*.service"))


def test_folder_names_from_ae_titles_are_validated(servers_root: Path) -> None:
    manager = ServiceManager(servers_root)
    for title in ("../ESCAPE", "A/B", ".HIDDEN", "-OPT", "WITH SPACE", ""):
        with pytest.raises(ManagerError):
            manager.create(title, port=11113)
    assert not servers_root.exists() or list(servers_root.iterdir()) == []
    manager.create("OK_1.x-2", port=11113)
    with pytest.raises(ManagerError, match="already uses port"):
        manager.create("OTHER", port=11113)
    with pytest.raises(ManagerError):
        manager.existing("../OK_1.x-2")
