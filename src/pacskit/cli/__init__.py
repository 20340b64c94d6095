"""The ``pacskit`` command line (typer): :func:`main` is the console script, :data:`app` the typer app.

This package imports nothing at start: a command pays only for what it uses. :func:`main` first
offers the arguments to :mod:`pacskit.cli.lean`, which runs ``pacskit echo`` and ``pacskit store``
without building the typer app (building it and converting the arguments with typer's pydantic
adapters costs more than the C-ECHO itself); anything else, and anything the lean path does not take
(``--help``, a usage error…), goes to the whole command line of :mod:`pacskit.cli.commands`, loaded
then. ``from pacskit.cli import app`` loads it too. The exit codes are in :mod:`pacskit.cli.common`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer

    app: typer.Typer


def main() -> None:
    """Console-script entry point (also ``python -m pacskit``).

    The cyclic garbage collector is off while the modules load and is turned on again once they are
    loaded (:func:`pacskit.cli.lean.start_collecting`, by the lean path or here), with what they made
    frozen (:func:`gc.freeze`): an import makes nothing collectable, and a run of ``pacskit store``
    then does not traverse the modules' objects at every collection (~15% of its CPU time with 1,000
    files)."""
    import gc

    gc.disable()
    try:
        from pacskit.cli.lean import run_lean, start_collecting

        code = run_lean(sys.argv[1:])
        if code is not None:
            sys.exit(code)
        from pacskit.cli.commands import app

        start_collecting()
        app()
    except KeyboardInterrupt:  # pragma: no cover - interactive
        sys.exit(130)
    finally:
        gc.enable()


def __getattr__(name: str) -> object:
    """``app`` (the whole command line) is loaded on first use (PEP 562)."""
    if name == "app":
        from pacskit.cli.commands import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["app", "main"]
