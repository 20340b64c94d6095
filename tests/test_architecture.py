"""The package layers of docs/ARCHITECTURE.md, as import-linter contracts (pyproject.toml), hold.

A package cycle or an upward import (the store importing the server, an add-in importing another)
fails here, so it fails CI (``./run test``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
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


# ------------------------------------------------------------------ docs/ARCHITECTURE.md matches the code

DOC = ROOT / "docs" / "ARCHITECTURE.md"
PACKAGE_ROOT = ROOT / "src" / "pacskit"


def _packages() -> set[str]:
    return {
        "pacskit." + ".".join(init.parent.relative_to(PACKAGE_ROOT).parts)
        for init in PACKAGE_ROOT.rglob("__init__.py")
        if init.parent != PACKAGE_ROOT and "versions" not in init.parent.parts
    }


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            found = importlib.util.find_spec(module_name)
        except (ImportError, ValueError):
            found = None
        if found is None:
            continue
        obj: object = importlib.import_module(module_name)
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_package_is_in_the_architecture() -> None:
    text = DOC.read_text(encoding="utf-8")
    named = set(re.findall(r"pacskit(?:\.[a-z_0-9]+)+", text))
    missing = sorted(p for p in _packages() if p not in named)
    assert not missing, f"docs/ARCHITECTURE.md does not name {missing}"


def test_every_module_the_architecture_names_exists() -> None:
    text = DOC.read_text(encoding="utf-8")
    dotted = set(re.findall(r"`(pacskit(?:\.\w+)+)(?:\(\))?`", text))
    dotted |= set(re.findall(r"^\s*(pacskit(?:\.\w+)+)\s", text, flags=re.M))  # the module map
    stale = sorted(name for name in dotted if not _resolves(name))
    paths = set(re.findall(r"`((?:[a-z_]+/)+[a-z_0-9]+\.(?:py|md))`", text))
    stale += sorted(p for p in paths if not (PACKAGE_ROOT / p).exists() and not (ROOT / p).exists())
    assert not stale, f"docs/ARCHITECTURE.md names what does not exist: {stale}"
    assert len(dotted) > 40  # the check reads the names it should
