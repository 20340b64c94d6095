"""``pacskit commit AET@host:port FILES…``: Storage Commitment (Push Model) of files a peer should hold.

Sends one N-ACTION naming the files' SOP Class / Instance UIDs (read from their meta header; the
files are not sent) and waits for the peer's N-EVENT-REPORT: on the same association, or — with
``--port`` — on an association the peer opens to us (the peer must know our ``--calling`` AE title at
that port; Orthanc always reports that way). Prints one line per instance, ``committed`` or
``failed`` with the Failure Reason, then a summary.

Exit codes (see :mod:`pacskit.cli`): 0 every instance committed; 1 the N-ACTION failed or some
instance was not committed; 2 usage (bad address, a file that is not DICOM); 5 no report within
``--report-timeout``; 3/4/6 connection refused / association rejected / aborted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pacskit.cli.client import TargetArg
from pacskit.cli.common import (
    EXIT_FAILURE_STATUS,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    NetOptions,
    app,
    fail,
    network_options,
    resolve_target,
    run,
    scu_options,
    setup_logging,
)


@app.command()
@network_options(timeout=30.0)
def commit(
    target: TargetArg,
    paths: Annotated[list[Path], typer.Argument(help="DICOM files and folders (recursive) the peer should hold")],
    port: Annotated[
        Optional[int], typer.Option("--port", "-p", help="accept the report on a new association on this port")
    ] = None,
    host: Annotated[str, typer.Option("--host", help="address the --port listener binds")] = "",
    release: Annotated[
        bool, typer.Option("--release", help="release the N-ACTION association at once (needs --port)")
    ] = False,
    report_timeout: Annotated[float, typer.Option(help="seconds to wait for the report")] = 60.0,
    *,
    net: NetOptions,
) -> None:
    """Storage commitment: ask a peer whether it keeps FILES; prints committed / failed with reasons."""
    from rich.console import Console

    from pacskit.client.commitment import StorageCommitmentScu, files_under, references_from_files

    setup_logging(net.verbose)
    if release and port is None:
        raise fail("--release needs --port (the report then comes on a new association)", EXIT_USAGE)
    for path in paths:
        if not path.exists():
            raise fail(f"{path} does not exist", EXIT_USAGE)
    try:
        references = references_from_files(files_under(paths))
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    if not references:
        raise fail("no files found", EXIT_USAGE)
    remote = resolve_target(target, net)
    scu = StorageCommitmentScu(
        remote,
        receive_port=port,
        receive_host=host,
        report_timeout=report_timeout,
        release_after_request=release,
        **scu_options(remote, net),
    )
    result = run(scu.commit(references))
    console = Console(highlight=False)
    if result.action_status != 0:
        comment = f": {result.action_comment}" if result.action_comment else ""
        raise fail(f"N-ACTION refused with status 0x{result.action_status:04X}{comment}", EXIT_FAILURE_STATUS)
    if not result.reported:
        raise fail(
            f"transaction {result.transaction_uid}: no report from {remote.title} within {report_timeout:g} s",
            EXIT_TIMEOUT,
        )
    for ref in result.committed:
        console.print(f"[green]committed[/green] {ref.sop_instance_uid}")
    for failure in result.failed:
        console.print(
            f"[red]failed[/red]    {failure.reference.sop_instance_uid}: 0x{failure.reason:04X} {failure.description}"
        )
    for ref in result.missing:
        console.print(f"[red]failed[/red]    {ref.sop_instance_uid}: not named in the report")
    how = "same association" if result.same_association else "new association"
    console.print(
        f"storage commitment {result.transaction_uid} by {remote.title} ({how}): "
        f"{len(result.committed)} committed, {len(result.failed) + len(result.missing)} failed"
    )
    raise typer.Exit(EXIT_OK if result.ok else EXIT_FAILURE_STATUS)
