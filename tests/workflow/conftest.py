"""Fixtures of the workflow tests (Modality Worklist, MPPS): DCMTK's worklist examples, a pacskit server
folder with them imported through ``pacskit worklist import``."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacskit.testing.peers import have_dcmtk


@pytest.fixture(scope="session")
def need_dcmtk() -> None:
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")


@pytest.fixture(scope="session")
def worklist_examples(need_dcmtk: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DCMTK's example worklist database converted with dump2dcm: ``<folder>/WLM/*.wl``."""
    from client._peers import worklist_db

    return worklist_db(tmp_path_factory.mktemp("wlistdb"), "WLM")
