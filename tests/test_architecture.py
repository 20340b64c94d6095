"""The package layers of docs/ARCHITECTURE.md, as import-linter contracts (pyproject.toml), hold.

A package cycle or an upward import (the store importing the server, an add-in importing another)
fails here, so it fails CI (``./run test``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )


def test_import_contracts_are_kept() -> None:
    proc = _lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_an_upward_import_breaks_the_layers(tmp_path: Path) -> None:
    """The contracts can fail: the same tree with one upward import (the engine importing the store)."""
    shutil.copytree(ROOT / "src" / "pacskit", tmp_path / "src" / "pacskit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "src" / "pacskit" / "net" / "sinks.py"
    target.write_text(target.read_text() + "\nfrom pacskit.store import DataStore  # an upward import\n")
    proc = _lint_imports(tmp_path)
    assert proc.returncode != 0
    assert "pacskit layers (docs/ARCHITECTURE.md) BROKEN" in proc.stdout
    assert "pacskit.net.sinks -> pacskit.store" in proc.stdout
