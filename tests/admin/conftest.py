"""Fixtures of the admin tests: ``need_dcmtk`` and a servers root in the test's temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacskit.testing.peers import have_dcmtk


@pytest.fixture
def need_dcmtk() -> None:
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")


@pytest.fixture
def servers_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A servers root for the service manager; ``$PACSKIT_SERVERS`` points at it for the CLI."""
    root = tmp_path / "servers"
    monkeypatch.setenv("PACSKIT_SERVERS", str(root))
    monkeypatch.delenv("PACSKIT_SERVER", raising=False)
    return root
