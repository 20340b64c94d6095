"""``pacskit store | find | move | get`` (and the remote-AE resolution ``echo`` shares).

The target is ``AET@host:port`` or an AE title registered with ``pacskit ae add`` (looked up in the
server folder given by ``--data-dir`` / ``--config``, default ``./pacs-data``). Exit codes are the
ones in :mod:`pacskit.cli`. Progress bars go to stderr (only on a terminal); results to stdout.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from pacskit.cli.common import (
    EXIT_FAILURE_STATUS,
    EXIT_OK,
    EXIT_USAGE,
    NetOptions,
    app,
    fail,
    network_options,
    resolve_target,
    run,
    scu_options,
    setup_logging,
    typer_annotation,
    typer_signature,
)
from pacskit.cli import scu
from pacskit.cli.scu import progress as _progress
from pacskit.client.remote import is_dicomweb_url

TargetArg = typer_annotation(scu.TargetArg)
QuietOpt = typer_annotation(scu.QuietOpt)
KeysOpt = Annotated[
    Optional[list[str]],
    typer.Option("--key", "-k", help="query key as in DCMTK: PatientName=DOE*, 0010,0020=ID, Seq[0].Modality=MR"),
]
LevelOpt = Annotated[str, typer.Option("--level", "-L", help="PATIENT, STUDY, SERIES or IMAGE")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="study (Study Root), patient (Patient Root) or worklist")]


# ---------------------------------------------------------------------- store (and echo, at the end)

# Declared and run without typer (pacskit.cli.scu, the lean path's); registered here as typer sees them.
app.command("store")(typer_signature(scu.store))


# ---------------------------------------------------------------------- find


# The attributes each record type already shows as a typed field (pacskit.client.query): a -k key for one
# of them adds no second column.
_TYPED_KEYWORDS: dict[str, frozenset[str]] = {
    "PATIENT": frozenset({"PatientID", "PatientName", "PatientBirthDate", "PatientSex"}),
    "STUDY": frozenset({"StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
                        "StudyDescription", "PatientID", "PatientName", "ModalitiesInStudy"}),
    "SERIES": frozenset({"SeriesInstanceUID", "StudyInstanceUID", "Modality", "SeriesNumber", "SeriesDescription"}),
    "IMAGE": frozenset({"SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID", "InstanceNumber"}),
    "WORKLIST": frozenset({"PatientID", "PatientName", "AccessionNumber", "RequestedProcedureID",
                           "RequestedProcedureDescription"}),
}


def _rows(records: list[Any], keys: list[str] | None) -> list[dict[str, Any]]:
    """Typed fields, plus any attribute asked for with -k that the record type has no field for."""
    from pacskit.client import parse_key
    from pydicom.datadict import keyword_for_tag

    extra: list[tuple[str, int]] = []
    for text in keys or []:
        steps, _ = parse_key(text)
        if len(steps) == 1:
            tag = steps[0][0]
            name = keyword_for_tag(tag) or f"{tag >> 16:04X},{tag & 0xFFFF:04X}"
            if name not in [n for n, _ in extra]:
                extra.append((name, tag))
    rows = []
    for record in records:
        row = record.as_dict()
        typed = _TYPED_KEYWORDS.get(type(record).level, frozenset())
        for name, tag in extra:
            if name in typed:
                continue
            elem = record.dataset.get(tag)
            if elem is not None and elem.VR != "SQ":
                value = elem.value
                row.setdefault(name, "\\".join(map(str, value)) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else ("" if value is None else str(value)))
        rows.append(row)
    return rows


@app.command()
@network_options(timeout=30.0)
def find(
    target: TargetArg,
    key: KeysOpt = None,
    level: LevelOpt = "STUDY",
    model: ModelOpt = "study",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (one array of objects)")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="print CSV with a header line")] = False,
    limit: Annotated[Optional[int], typer.Option(help="C-CANCEL after this many matches")] = None,
    *,
    net: NetOptions,
) -> None:
    """C-FIND (Study Root, Patient Root or Modality Worklist), or QIDO-RS to an http(s)://.../dicom-web
    peer; prints a table, JSON or CSV."""
    from pacskit.client import QueryRetrieveScu

    setup_logging(net.verbose)
    if is_dicomweb_url(target):
        from pacskit.cli.dicomweb import web_find

        return web_find(target, key, level, as_json, limit, net.tls_ca, net.timeout)
    if as_json and as_csv:
        raise fail("--json and --csv exclude each other", EXIT_USAGE)
    remote = resolve_target(target, net)
    try:
        scu = QueryRetrieveScu(remote, model=model, **scu_options(remote, net))
        scu.identifier(key, level)  # validate level and keys before connecting
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    result = run(scu.find(key, level=level, limit=limit))
    rows = _rows(result.records, key)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    elif as_csv:
        columns = list(rows[0]) if rows else []
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        if columns:
            writer.writeheader()
            writer.writerows(rows)
    else:
        from pacskit.cli.output import print_records

        # Columns nobody filled are left out: the table has to fit a terminal.
        columns = [c for c in (rows[0] if rows else []) if any(r.get(c) not in (None, "") for r in rows)]
        print_records(rows, columns=columns, empty="no matches")
    from pacskit.dicom.status import status_category

    if status_category(result.status) == "Failure":
        raise fail(f"C-FIND failed with status 0x{result.status:04X}" + (f": {result.error_comment}" if result.error_comment else ""), EXIT_FAILURE_STATUS)
    typer.echo(f"{len(rows)} match(es)" + (" (cancelled after --limit)" if result.cancelled else ""), err=True)


# ---------------------------------------------------------------------- move / get


def _retrieve_exit(service: str, result: Any) -> None:
    from pacskit.dicom.status import status_category

    text = f"{service}: status 0x{result.status:04X} ({status_category(result.status)}), {result.completed} completed, {result.failed} failed, {result.warning} warning"
    if result.received:
        text += f", {len(result.received)} received"
    if result.error_comment:
        text += f": {result.error_comment}"
    typer.echo(text)
    for uid in result.failed_instances:
        typer.echo(f"failed instance {uid}", err=True)
    raise typer.Exit(EXIT_OK if result.ok else EXIT_FAILURE_STATUS)


def _progress_handler(progress: Any, task: Any) -> Any:
    """Feeds a C-MOVE / C-GET progress bar from the responses' sub-operation counts: a Pending response
    gives the total (done + remaining); the final one says that what was done is all there is (its
    remaining count is absent, and a fast retrieve may have had no Pending response at all)."""

    def update(p: Any) -> None:
        done = p.completed + p.failed + p.warning
        if p.remaining is not None:
            total: int | None = done + p.remaining
        elif p.status not in (0xFF00, 0xFF01):
            total = done
        else:
            total = None  # a Pending response without the remaining count: the total stays unknown
        progress.update(task, completed=done, total=total)

    return update


@app.command()
@network_options(timeout=60.0)
def move(
    target: TargetArg,
    key: KeysOpt = None,
    level: LevelOpt = "STUDY",
    model: ModelOpt = "study",
    dest: Annotated[Optional[str], typer.Option("--dest", help="the move destination AE (known to the peer)")] = None,
    into: Annotated[Optional[Path], typer.Option("--into", help="receive here ourselves (needs --port)")] = None,
    port: Annotated[Optional[int], typer.Option("--port", help="our Storage SCP port for --into (the peer must know it)", min=1, max=65535)] = None,
    listen_host: Annotated[str, typer.Option("--listen-host", help="address our Storage SCP binds for --into [all]")] = "",
    quiet: QuietOpt = False,
    *,
    net: NetOptions,
) -> None:
    """C-MOVE to another AE (--dest), or to ourselves (--into DIR --port P, our AE title is --calling)."""
    from pacskit.client import QueryRetrieveScu

    setup_logging(net.verbose)
    if (dest is None) == (into is None):
        raise fail("give either --dest AE or --into DIR (with --port)", EXIT_USAGE)
    if into is not None and port is None:
        raise fail("--into needs --port: the port the peer has for our AE title", EXIT_USAGE)
    remote = resolve_target(target, net)
    try:
        scu = QueryRetrieveScu(
            remote, model=model, receive_port=port, receive_host=listen_host, **scu_options(remote, net)
        )
        scu.identifier(key, level, "C-MOVE")
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None

    async def go() -> Any:
        with _progress(quiet) as progress:
            task = progress.add_task("moving", total=None)
            scu.on("progress", _progress_handler(progress, task))
            return await scu.move(key, level=level, destination=dest, into=into)

    try:
        result = run(go())
    except OSError as exc:  # our receiving port
        raise fail(f"cannot listen on port {port}: {exc.strerror or exc}", EXIT_USAGE) from None
    _retrieve_exit("C-MOVE", result)


@app.command()
@network_options(timeout=60.0)
def get(
    target: TargetArg,
    into: Annotated[Path, typer.Option("--into", help="folder for the received instances")],
    key: KeysOpt = None,
    level: LevelOpt = "STUDY",
    model: ModelOpt = "study",
    uncompressed: Annotated[
        bool,
        typer.Option("--uncompressed", help="propose uncompressed transfer syntaxes only (the peer must transcode)"),
    ] = False,
    quiet: QuietOpt = False,
    *,
    net: NetOptions,
) -> None:
    """C-GET: the instances come back on the same association into --into, stored as received
    (compressed syntaxes are proposed too unless --uncompressed); WADO-RS from an
    http(s)://.../dicom-web peer."""
    from pacskit.client import QueryRetrieveScu

    setup_logging(net.verbose)
    if is_dicomweb_url(target):
        from pacskit.cli.dicomweb import web_get

        return web_get(target, key, into, net.tls_ca, net.timeout)
    remote = resolve_target(target, net)
    try:
        scu = QueryRetrieveScu(remote, model=model, **scu_options(remote, net))
        scu.identifier(key, level, "C-GET")
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None

    async def go() -> Any:
        with _progress(quiet) as progress:
            task = progress.add_task("retrieving", total=None)
            scu.on("progress", _progress_handler(progress, task))
            return await scu.get(key, level=level, into=into, require_uncompressed=uncompressed)

    _retrieve_exit("C-GET", run(go()))


app.command("echo")(typer_signature(scu.echo))
