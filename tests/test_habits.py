"""Habits the build enforces: ruff's lint rules everywhere, mypy --strict where types are the contract
(pacskit.dicom, pacskit.net, the add-in API in pacskit.services). Configuration: pyproject.toml."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STRICT = ["src/pacskit/dicom", "src/pacskit/net", "src/pacskit/services"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing() -> None:
    proc = _run("ruff", "check", "--no-cache", "src", "tests", "benchmarks", "fuzz", "examples")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict_on_the_typed_core() -> None:
    proc = _run("mypy", *STRICT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout
