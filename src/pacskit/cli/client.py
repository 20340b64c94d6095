"""``pacskit store | find | move | get`` (and the remote-AE resolution ``echo`` shares).

The target is ``AET@host:port`` or an AE title registered with ``pacskit ae add`` (looked up in the
server folder given by ``--data-dir`` / ``--config``, default ``./pacs-data``). Exit codes are the
ones in :mod:`pacskit.cli`. Progress bars go to stderr (only on a terminal); results to stdout.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
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
    net_error_exit,
    network_options,
    resolve_target,
    run,
    scu_options,
    setup_logging,
)
from pacskit.client.remote import is_dicomweb_url

TargetArg = Annotated[str, typer.Argument(help="the peer: AET@host:port, an AE title from the registry, or http(s)://host:port/dicom-web")]
KeysOpt = Annotated[
    Optional[list[str]],
    typer.Option("--key", "-k", help="query key as in DCMTK: PatientName=DOE*, 0010,0020=ID, Seq[0].Modality=MR"),
]
LevelOpt = Annotated[str, typer.Option("--level", "-L", help="PATIENT, STUDY, SERIES or IMAGE")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="study (Study Root), patient (Patient Root) or worklist")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")]


class _NoProgress:
    """What :func:`_progress` gives when no bar is shown: the same calls, doing nothing."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: float | None = None) -> int:
        return 0

    def update(self, task: int, **fields: Any) -> None:
        return None


# The environment variables with which rich treats a pipe as a terminal (rich.console.Console.is_terminal).
_RICH_TERMINAL_ENV = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")


def _progress(quiet: bool) -> Any:
    """A rich progress bar on stderr, only on a terminal and not with --quiet. Without a bar rich is
    not imported at all (~0.05 s of every `pacskit store` in a script)."""
    isatty = getattr(sys.stderr, "isatty", None)
    if quiet or not ((isatty is not None and isatty()) or any(os.environ.get(k) for k in _RICH_TERMINAL_ENV)):
        return _NoProgress()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, disable=not console.is_terminal, transient=False,
    )


# ---------------------------------------------------------------------- store


@app.command()
@network_options(timeout=30.0)
def store(
    target: TargetArg,
    paths: Annotated[list[Path], typer.Argument(help="files and folders (recursive)")],
    associations: Annotated[int, typer.Option("--associations", "-n", help="parallel associations")] = 1,
    quiet: QuietOpt = False,
    *,
    net: NetOptions,
) -> None:
    """C-STORE files and folders to a peer (STOW-RS to an http(s)://.../dicom-web peer). Exit 1 if any
    instance failed (warnings are not failures)."""
    from pacskit.client import StoreScu

    setup_logging(net.verbose)
    if is_dicomweb_url(target):
        from pacskit.cli.dicomweb import web_store

        return web_store(target, paths, net.tls_ca, net.timeout)
    for path in paths:
        if not path.exists():
            raise fail(f"{path} does not exist", EXIT_USAGE)
    remote = resolve_target(target, net)
    scu = StoreScu(remote, associations=associations, **scu_options(remote, net))

    async def go() -> Any:
        with _progress(quiet) as progress:
            task = progress.add_task("storing", total=None)
            scu.on("progress", lambda p: progress.update(task, completed=p.done, total=p.total))
            return await scu.store(paths)

    report = run(go())
    for path, reason in report.skipped:
        typer.echo(f"skipped {path}: {reason}", err=True)
    for result in report.failed:
        typer.echo(f"failed {result.describe()}", err=True)
    for result in report.warnings:
        typer.echo(f"warning {result.describe()}", err=True)
    typer.echo(f"C-STORE to {remote.title}: {report.summary()}")
    if report.error is not None:
        raise typer.Exit(net_error_exit(report.error))
    raise typer.Exit(EXIT_FAILURE_STATUS if report.failed else EXIT_OK)


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


# ---------------------------------------------------------------------- echo


async def _echo_when_listening(scu: Any, repeat: int, wait: float) -> int:
    """``scu.echo(repeat)``; while the connection is refused, try again until ``wait`` seconds passed.

    ``./run serve &`` returns at once, and the server listens only after ``.venv`` is built and the
    add-ins are loaded: ``echo --wait 120`` is how a script waits for it to be ready."""
    from pacskit.net import ConnectionFailed

    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    delay = 0.05
    while True:
        try:
            return await scu.echo(repeat)
        except ConnectionFailed:
            if loop.time() + delay > deadline:
                raise
        await asyncio.sleep(delay)  # polling a port that is not open yet: nothing to wait on
        delay = min(delay * 2, 0.5)


@app.command()
@network_options(timeout=30.0)
def echo(
    target: TargetArg,
    repeat: Annotated[int, typer.Option(help="C-ECHOs to send on the association")] = 1,
    wait: Annotated[
        float,
        typer.Option("--wait", metavar="SECONDS", min=0,
                     help="retry for up to this long while the connection is refused (a server still starting)"),
    ] = 0.0,
    *,
    net: NetOptions,
) -> None:
    """Send C-ECHO (Verification) to a peer and report the outcome."""
    from pacskit.client import EchoScu

    setup_logging(net.verbose)
    remote = resolve_target(target, net)
    scu = EchoScu(remote, **scu_options(remote, net))
    status = run(_echo_when_listening(scu, repeat, wait))
    if status:
        raise fail(f"C-ECHO to {target} answered status 0x{status:04X}", EXIT_FAILURE_STATUS)
    typer.echo(f"C-ECHO to {target}: Success")
