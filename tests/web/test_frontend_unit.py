"""The front-end's Vitest suite (web/src/**/*.test.ts) and its strict type check, run by pytest so that
the one test command of the README covers them."""

from __future__ import annotations

import subprocess

from ._frontend import WEB, ensure_node_modules


def test_vitest_suite_passes() -> None:
    ensure_node_modules()
    proc = subprocess.run(["npx", "vitest", "run", "--reporter=dot"], cwd=WEB, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout


def test_typescript_is_strict_clean() -> None:
    ensure_node_modules()
    proc = subprocess.run(["npx", "tsc", "--noEmit"], cwd=WEB, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
