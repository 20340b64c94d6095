"""The workstation's front-end (top-level ``web/``) for the tests: npm ci + vite build when the built
app (``src/pacskit/web_assets``) is missing or older than its sources, as ``./run test`` does; one
process at a time (a lock on web/package.json), so parallel test runs do not build twice."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
ASSETS = ROOT / "src" / "pacskit" / "web_assets"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: where the Playwright tests leave their screenshots: test-artifacts/screenshots (gitignored), or the
#: pictures of the user guides with PACSKIT_SCREENSHOT_DIR=docs/screenshots (so that running the suite
#: does not change tracked files; the docs' pictures are refreshed on purpose, by the same tests)
SCREENSHOTS = ROOT / os.environ.get("PACSKIT_SCREENSHOT_DIR", "test-artifacts/screenshots")

_SOURCES = ("src", "index.html", "viewer.html", "package.json", "package-lock.json", "vite.config.ts", "tsconfig.json")


def _newest_source() -> float:
    newest = 0.0
    for name in _SOURCES:
        path = WEB / name
        if path.is_dir():
            newest = max([newest, *(p.stat().st_mtime for p in path.rglob("*") if p.is_file())])
        elif path.exists():
            newest = max(newest, path.stat().st_mtime)
    return newest


def _npm(*args: str) -> None:
    proc = subprocess.run(["npm", *args], cwd=WEB, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"npm {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")


def need_npm() -> None:
    if shutil.which("npm") is None:
        pytest.skip("node/npm are not installed (apt-get install nodejs npm)")


def ensure_node_modules() -> None:
    """``npm ci`` when web/node_modules is missing or older than the lock file."""
    need_npm()
    with open(WEB / "package.json") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = WEB / "node_modules" / ".package-lock.json"
        if not marker.exists() or marker.stat().st_mtime < (WEB / "package-lock.json").stat().st_mtime:
            _npm("ci", "--no-audit", "--no-fund")


def ensure_built() -> Path:
    """The built app's folder, built first when missing or stale."""
    ensure_node_modules()
    with open(WEB / "package.json") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        index = ASSETS / "index.html"
        if not index.exists() or index.stat().st_mtime < _newest_source():
            _npm("run", "build")
    return ASSETS


def need_chromium() -> str:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return CHROMIUM
