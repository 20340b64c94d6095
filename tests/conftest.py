"""Shared pytest configuration for the pacskit test suite.

* In CI (env ``CI`` is ``true``/``1``/``yes``) every skipped test or module makes the
  run fail: a skip there means a missing dependency (DCMTK, Orthanc, a database
  server, ...) silently hid a test. ``xfail`` does not count as a skip.
* Fixtures: ``free_port`` (a TCP port free on 127.0.0.1), ``need_dcmtk`` (skips where DCMTK is not
  installed; use with ``pytest.mark.usefixtures("need_dcmtk")``).
"""

from __future__ import annotations

import os

import pytest

from pacskit.testing.peers import free_port as _free_port
from pacskit.testing.peers import have_dcmtk


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        path, lineno, msg = longrepr
        where = f"{path}:{lineno + 1}" if isinstance(lineno, int) else str(path)
        return f"{str(msg).removeprefix('Skipped: ')} ({where})"
    return str(longrepr)


class SkipsFailCI:
    """Collects skipped tests/collectors; in CI turns a green run red if there are any."""

    def __init__(self) -> None:
        self.skips: list[tuple[str, str]] = []

    def _record(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skips.append((report.nodeid or "<session>", _skip_reason(report)))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._record(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._record(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if _in_ci() and self.skips and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
        if not (_in_ci() and self.skips):
            return
        tr = terminalreporter
        tr.write_sep("=", f"CI: {len(self.skips)} skipped - skips are failures when CI is set",
                     red=True, bold=True)
        for nodeid, reason in self.skips:
            tr.write_line(f"SKIPPED {nodeid}: {reason}")
        tr.write_line("Install what is missing (./run test installs DCMTK and Orthanc) "
                      "or make the test not skip.")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "orthanc: needs the Orthanc server binary")
    config.addinivalue_line("markers", "pynetdicom: starts a pynetdicom peer process")
    config.pluginmanager.register(SkipsFailCI(), "pacskit-skips-fail-ci")


@pytest.fixture
def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 (and on all interfaces) right now."""
    return _free_port()


@pytest.fixture
def need_dcmtk() -> None:
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")
