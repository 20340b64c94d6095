"""A pacskit server with the print add-in, running in a thread (tests drive it with SCUs and DCMTK)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pacskit.addins.print import PrintAddIn
from pacskit.addins.verification import VerificationAddIn
from pacskit.server.server import Server
from pacskit.testing.server import running_server, toml_line

AE = "PRINTSCP"


def write_settings(folder: Path, **print_options: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    print_options.setdefault("enabled", True)
    lines = [f'ae_title = "{AE}"', "port = 0", 'data_dir = "data"', "[addins.verification]", "[addins.print]"]
    lines += [toml_line(key, value) for key, value in print_options.items()]
    (folder / "server.toml").write_text("\n".join(lines) + "\n")
    return folder


@contextmanager
def print_server(folder: Path, **print_options: Any) -> Iterator[Server]:
    """``Server`` with the verification and print add-ins (given as classes: the editable install's
    entry points may predate the print add-in) in a thread; stopped at the end."""
    write_settings(folder, **print_options)
    with running_server(folder, addin_classes=[VerificationAddIn, PrintAddIn], name="print-server") as server:
        yield server


def print_addin(server: Server) -> PrintAddIn:
    return next(a for a in server.addins if isinstance(a, PrintAddIn))
