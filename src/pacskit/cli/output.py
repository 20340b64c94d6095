"""How listing commands print: a table for people, ``--json`` / ``--csv`` for scripts.

Every listing command (``ae list``, ``server list``, ``status``, ``clients``, ``addins``, ``find``,
``ls``, ``stats``, ``worklist list``, ``log``) prints through :func:`print_rows`, so they agree:

* a table never cuts a value: on a terminal long values (UIDs) wrap inside their column; into a pipe
  or a file the table is as wide as its values (no terminal width applies);
* ``--json`` prints one array of objects (keys as in the table, or the command's own field names);
* ``--csv`` prints a header line and one line per row.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON (one array of objects)")]
CsvOpt = Annotated[bool, typer.Option("--csv", help="print CSV with a header line")]

#: the width a table may take when stdout is not a terminal: whole values, whatever their length
PIPE_WIDTH = 100_000


def output_format(as_json: bool, as_csv: bool) -> str:
    """``"json"``, ``"csv"`` or ``"table"``; both flags at once is a usage error (exit 2)."""
    if as_json and as_csv:
        typer.echo("error: --json and --csv exclude each other", err=True)
        raise typer.Exit(2)
    return "json" if as_json else "csv" if as_csv else "table"


def console(*, stderr: bool = False) -> Any:
    """A rich console that does not cut lines when it writes into a pipe or a file."""
    from rich.console import Console

    probe = Console(stderr=stderr)
    if probe.is_terminal:
        return probe
    return Console(stderr=stderr, width=PIPE_WIDTH, highlight=False)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "\\".join(_text(v) for v in value)
    return str(value)


def print_rows(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    fmt: str = "table",
    *,
    keys: Sequence[str] | None = None,
    title: str | None = None,
) -> None:
    """Print ``rows`` as a table (``headers`` on top), JSON (objects keyed by ``keys``, default the
    headers; values as given, so numbers stay numbers) or CSV (a ``keys`` header line)."""
    names = list(keys or headers)
    if fmt == "json":
        typer.echo(json.dumps([dict(zip(names, row, strict=True)) for row in rows], indent=2, ensure_ascii=False,
                              default=str))
        return
    if fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(names)
        writer.writerows([[_text(v) for v in row] for row in rows])
        sys.stdout.flush()
        return
    from rich.table import Table

    table = Table(title=title)
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*(_text(v) for v in row))
    console().print(table)


def print_records(records: Sequence[dict[str, Any]], fmt: str = "table", *, columns: Sequence[str] | None = None,
                  empty: str = "no rows") -> None:
    """:func:`print_rows` for a list of dicts; ``columns`` default to the keys of the first record."""
    names = list(columns if columns is not None else (records[0] if records else []))
    if fmt == "json":
        typer.echo(json.dumps(list(records), indent=2, ensure_ascii=False, default=str))
        return
    if fmt == "table" and not names:
        names = [empty]
    print_rows(names, [[r.get(c) for c in names] for r in records], fmt)
