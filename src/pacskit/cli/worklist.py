"""``pacskit worklist add | list | update | remove | import``: the Modality Worklist of a server folder.

Works on the folder's database directly (``--data-dir`` / ``--config``, default ``./pacs-data``), like
``pacskit ae``: no running server needed, and a running server answers the changes at its next C-FIND.
Entries are given as query-style keys (``-k PatientName=DOE^JOHN -k
ScheduledProcedureStepSequence[0].Modality=MR``), as JSON (``--json FILE``, ``-`` for stdin: the DICOM
JSON model or keywords), or imported from DICOM worklist files (DCMTK's ``.wl``) and JSON files.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from pacskit.cli.common import EXIT_FAILURE_STATUS, EXIT_USAGE, ConfigOpt, DataDirOpt, existing_server_settings, app

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from pacskit.store.workflow.worklist import WorklistStore

worklist_app = typer.Typer(help="Manage the Modality Worklist of a server folder (no running server needed).",
                           no_args_is_help=True)
app.add_typer(worklist_app, name="worklist")

KeysOpt = Annotated[
    Optional[list[str]],
    typer.Option("--key", "-k", help="an attribute: PatientName=DOE^JOHN, ScheduledProcedureStepSequence[0].Modality=MR"),
]
JsonOpt = Annotated[Optional[str], typer.Option("--json", help="the entry as JSON (a file, or - for stdin)")]


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def _worklist(config: str | None, data_dir: str | None, *, create: bool = False) -> Iterator[WorklistStore]:
    """The folder's worklist: its index database, migrated (only the index: no recovery of blobs, so
    this is safe while the server runs)."""
    from pacskit.store import Index
    from pacskit.store.workflow.worklist import WorklistStore

    settings = existing_server_settings(config, data_dir, create=create)  # create: add and import
    index = Index.open(settings.database_url)
    try:
        index.migrate()
        yield WorklistStore(index)
    finally:
        index.close()


def _entry(keys: list[str] | None, json_source: str | None, *, need: bool = True) -> Dataset:
    from pydicom.config import disable_value_validation
    from pydicom.dataset import Dataset

    from pacskit.client.keys import KeyError_, apply_keys
    from pacskit.store.workflow.worklist import InvalidEntry, entry_from_json

    ds = Dataset()
    try:
        # pydicom would print its own multi-line warning for a bad value: the store checks the values
        # and says in one line which attribute is wrong (check_entry_values)
        with disable_value_validation():
            if json_source is not None:
                text = sys.stdin.read() if json_source == "-" else Path(json_source).read_text(encoding="utf-8")
                ds = entry_from_json(json.loads(text))
            if keys:
                apply_keys(ds, keys)
    except (KeyError_, InvalidEntry, ValueError, OSError) as exc:
        raise _fail(str(exc)) from None
    if need and len(ds) == 0:
        raise _fail("give the entry with -k KEY=VALUE or --json FILE")
    return ds


@worklist_app.command("add")
def worklist_add(
    key: KeysOpt = None,
    json_source: JsonOpt = None,
    replace: Annotated[bool, typer.Option("--replace", help="replace a step with the same accession, "
                                          "requested procedure and SPS ID")] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Add a worklist entry (one scheduled step per Scheduled Procedure Step Sequence item)."""
    from pacskit.store.workflow.worklist import InvalidEntry

    entry = _entry(key, json_source)
    with _worklist(config, data_dir, create=True) as worklist:
        try:
            ids = worklist.add(entry, replace=replace)
        except InvalidEntry as exc:
            raise _fail(str(exc)) from None
    typer.echo("added " + ", ".join(str(i) for i in ids))


@worklist_app.command("list")
def worklist_list(
    status: Annotated[Optional[str], typer.Option(help="only steps with this status (SCHEDULED, COMPLETED...)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (with the whole entries)")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="print CSV (the table's columns) with a header line")] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """List the scheduled steps."""
    from pacskit.cli.output import output_format, print_rows

    fmt = output_format(as_json, as_csv)
    with _worklist(config, data_dir) as worklist:
        entries = worklist.entries(status=status)
    if fmt == "json":
        typer.echo(json.dumps([e.to_json() for e in entries], indent=2, ensure_ascii=False))
        return
    columns = ("id", "patient_id", "patient_name", "accession_number", "modality", "station_ae_title",
               "start_date", "start_time", "step_id", "step_description", "status")
    rows = []
    for entry in entries:
        summary: dict[str, Any] = entry.summary()
        rows.append([summary[c] for c in columns])
    print_rows(columns, rows, fmt)


@worklist_app.command("update")
def worklist_update(
    entry_id: Annotated[int, typer.Argument(help="the step's id (see list)")],
    key: KeysOpt = None,
    json_source: JsonOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Change attributes of a scheduled step (inside its Scheduled Procedure Step Sequence item key by key)."""
    from pacskit.store.workflow.worklist import InvalidEntry

    changes = _entry(key, json_source)
    with _worklist(config, data_dir) as worklist:
        try:
            entry = worklist.update(entry_id, changes)
        except InvalidEntry as exc:
            raise _fail(str(exc)) from None
    if entry is None:
        raise _fail(f"no worklist entry {entry_id}", EXIT_FAILURE_STATUS)
    typer.echo(f"updated {entry_id}")


@worklist_app.command("remove")
def worklist_remove(
    entry_ids: Annotated[list[int], typer.Argument(help="ids of the steps to remove")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Remove scheduled steps."""
    missing = []
    with _worklist(config, data_dir) as worklist:
        for entry_id in entry_ids:
            if worklist.remove(entry_id):
                typer.echo(f"removed {entry_id}")
            else:
                missing.append(entry_id)
    if missing:
        raise _fail("no worklist entry " + ", ".join(map(str, missing)), EXIT_FAILURE_STATUS)


@worklist_app.command("import")
def worklist_import(
    paths: Annotated[list[Path], typer.Argument(help="DICOM worklist files (.wl), JSON files, or folders of them")],
    replace: Annotated[bool, typer.Option("--replace/--no-replace", help="replace steps already stored "
                                          "(same accession, requested procedure and SPS ID)")] = True,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Import worklist entries, all or none (an unreadable file stops the import and names the file)."""
    from pydicom.config import disable_value_validation

    from pacskit.store.workflow.worklist import InvalidEntry

    with disable_value_validation():  # one line per problem (ours), not pydicom's warnings
        entries = _read_for_import(paths)
    with _worklist(config, data_dir, create=True) as worklist:
        try:
            ids = worklist.add_many(entries, replace=replace)
        except InvalidEntry as exc:
            raise _fail(str(exc)) from None
    typer.echo(f"imported {len(entries)} entries as {len(ids)} scheduled steps")


def _read_for_import(paths: list[Path]) -> list[Dataset]:
    """Every entry of ``paths``, each checked; the first problem exits 2 naming its file."""
    from pacskit.store.workflow.worklist import InvalidEntry, check_entry_values, read_entries, split_steps

    entries = []
    for path in paths:
        if not path.exists():
            raise _fail(f"{path} does not exist")
        try:
            for file, entry in read_entries([path]):
                try:
                    check_entry_values(entry)
                    split_steps(entry)
                except InvalidEntry as exc:
                    raise InvalidEntry(f"{file}: {exc}") from None
                entries.append(entry)
        except (InvalidEntry, OSError) as exc:
            text = str(exc)
            raise _fail(text if str(path) in text else f"{path}: {text}") from None
    return entries
