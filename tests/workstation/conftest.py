"""Fixtures of the workstation tests: one server per module (pacskit.testing.workstation)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pacskit.testing.workstation import Workstation, workstation


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workstation]:
    with workstation(Path(tmp_path_factory.mktemp("ws")), studies=3) as running:
        yield running
