"""Fixtures of the DICOMweb tests: a server with the DICOMweb add-in on free ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pacskit.testing.dicomweb import Running, start_server, write_folder


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Running]:
    with start_server(write_folder(tmp_path)) as running:
        yield running
