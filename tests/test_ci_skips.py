"""The conftest makes skipped tests fail the run when CI is set (xfail doesn't count)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

SKIPPING = """
import pytest

def test_ok():
    pass

def test_needs_db():
    pytest.skip("no PostgreSQL server on 127.0.0.1:5432")

@pytest.mark.skipif(True, reason="marker skip")
def test_marked():
    pass
"""

XFAIL_ONLY = """
import pytest

def test_ok():
    pass

@pytest.mark.xfail(reason="known bug", strict=True)
def test_known_bug():
    assert False
"""

MODULE_SKIP = """
import pytest
pytest.importorskip("no_such_module_pacskit")

def test_never():
    pass
"""


def _run(tmp_path: Path, source: str, ci: str | None, **more: str) -> subprocess.CompletedProcess[str]:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_sample.py").write_text(source)
    for name, text in more.items():
        (tmp_path / f"{name}.py").write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         "-c", os.devnull, str(tmp_path)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120,
    )


@pytest.mark.parametrize("ci", ["true", "1"])
def test_skip_fails_in_ci(tmp_path: Path, ci: str) -> None:
    res = _run(tmp_path, SKIPPING, ci)
    assert res.returncode == 1, res.stdout
    assert "skips are failures when CI is set" in res.stdout
    assert "test_sample.py::test_needs_db: no PostgreSQL server on 127.0.0.1:5432" in res.stdout
    assert "test_sample.py::test_marked: marker skip" in res.stdout


def test_skip_is_fine_outside_ci(tmp_path: Path) -> None:
    res = _run(tmp_path, SKIPPING, None)
    assert res.returncode == 0, res.stdout
    assert "2 skipped" in res.stdout
    res = _run(tmp_path, SKIPPING, "false")
    assert res.returncode == 0, res.stdout


def test_xfail_is_not_a_skip(tmp_path: Path) -> None:
    res = _run(tmp_path, XFAIL_ONLY, "true")
    assert res.returncode == 0, res.stdout
    assert "1 xfailed" in res.stdout


def test_module_level_skip_fails_in_ci(tmp_path: Path) -> None:
    res = _run(tmp_path, MODULE_SKIP, "true", test_other="def test_fine():\n    pass\n")
    assert res.returncode == 1, res.stdout
    assert "1 passed" in res.stdout
    assert "SKIPPED test_sample.py: could not import 'no_such_module_pacskit'" in res.stdout
    res = _run(tmp_path, MODULE_SKIP, None)
    assert res.returncode == 0, res.stdout


def test_no_tests_collected_is_a_failure(tmp_path: Path) -> None:
    res = _run(tmp_path, "", None)
    assert res.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, res.stdout


def test_real_failures_keep_their_exit_code(tmp_path: Path) -> None:
    res = _run(tmp_path, SKIPPING + "\ndef test_bad():\n    assert False\n", "true")
    assert res.returncode == 1, res.stdout
    assert "1 failed" in res.stdout
