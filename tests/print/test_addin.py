"""The print add-in's registration: an entry point like every built-in, off unless enabled, its
options checked."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path

import pytest

from pacskit.addins.print import PrintAddIn, PrintOptions
from pacskit.client.print import PrintFailed, PrintScu
from pacskit.dicom.printing import parse_display_format

from ._server import AE, print_server

ROOT = Path(__file__).resolve().parents[2]


def test_registered_as_an_entry_point_and_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pacskit.addins"]["print"] == "pacskit.addins.print:PrintAddIn"
    assert any(dep.startswith("reportlab") for dep in project["optional-dependencies"]["print"])
    assert "print" in project["optional-dependencies"]["all"][0]


def test_off_unless_enabled(tmp_path: Path) -> None:
    assert PrintOptions().enabled is False
    with print_server(tmp_path / "srv", enabled=False) as server:
        async def go() -> None:
            async with PrintScu(f"{AE}@127.0.0.1:{server.port}"):
                pass

        with pytest.raises(PrintFailed, match="does not accept Basic Grayscale Print Management"):
            asyncio.run(go())
        assert not [a for a in server.addins if isinstance(a, PrintAddIn)]


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown film sizes"):
        PrintOptions(film_sizes=["A4", "POSTCARD"])


@pytest.mark.parametrize(("text", "positions"), [
    ("STANDARD\\2,1", [(0, 0), (0.5, 0)]),
    ("STANDARD\\1,2", [(0, 0), (0, 0.5)]),
    ("ROW\\1,2", [(0, 0), (0, 0.5), (0.5, 0.5)]),
    ("COL\\1,2", [(0, 0), (0.5, 0), (0.5, 0.5)]),
])
def test_display_format_positions(text: str, positions: list[tuple[float, float]]) -> None:
    """PS3.3 C.13.8: STANDARD\\C,R is C columns by R rows; positions run left to right, top to bottom
    (ROW), top to bottom, left to right (COL)."""
    assert [(c.x, c.y) for c in parse_display_format(text).cells] == positions
