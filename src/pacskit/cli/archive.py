"""``pacskit delete``: archive management from the command line (docs/admin-guide.md).

When the server of the folder runs, the command goes through its admin API (the server owns the
folder: it deletes, and audits through its trail). Otherwise the command takes the data folder's
lock (refusing, with the holder's pid, when another process holds it), deletes itself with the same
crash-safe protocol, and writes the audit messages to the audit add-in's table.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer

from pacskit.cli import EXIT_FAILURE_STATUS, EXIT_OK, EXIT_USAGE, ConfigOpt, DataDirOpt, _server_settings, app


def _print_report(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    verb = "would delete" if report["dry_run"] else "deleted"
    for study in report["studies"]:
        part = "study" if study["whole_study"] else f"{len(study['series'])} series of study"
        typer.echo(f"{verb} {part} {study['study_instance_uid']} (patient {study['patient_id']!s}, "
                   f"{study['study_date'] or 'no date'}): {study['instances']} instances, {study['bytes']} bytes")
    for uid in report["not_found"]:
        typer.echo(f"not found: {uid}")
    patients = len({s["patient_id"] for s in report["studies"]})
    typer.echo(f"{verb} {report['instances']} instances ({report['bytes']} bytes) of {len(report['studies'])} "
               f"studies of {patients} patients")


@app.command("delete")
def delete_command(
    level: Annotated[str, typer.Argument(help="patient, study, series or instance")],
    identifiers: Annotated[list[str], typer.Argument(
        help="Patient IDs (ID|ISSUER to name the issuer), Study / Series / SOP Instance UIDs")],
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="say what would be deleted; change nothing")] = False,
    reason: Annotated[str, typer.Option("--reason", help="why (logged with the deletion)")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="the report as JSON")] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Delete patients, studies, series or instances: index rows and files, crash-safely, audited.

    Exit code 1 when an identifier matched nothing (what matched is still deleted)."""
    from pacskit.store.deletion import LEVELS

    if level not in LEVELS:
        typer.echo(f"error: level must be one of {', '.join(LEVELS)}, not {level!r}", err=True)
        raise typer.Exit(EXIT_USAGE)
    settings = _server_settings(config, data_dir)
    if not settings.folder.is_dir():
        typer.echo(f"error: data folder {settings.folder} does not exist", err=True)
        raise typer.Exit(EXIT_USAGE)
    from pacskit.admin.manager import admin_client, api_reachable
    from pacskit.server.admin_store import local_user

    body = {"level": level, "uids": identifiers, "dry_run": dry_run, "reason": reason, "user": local_user()}
    if api_reachable(settings.folder):
        from pacskit.cli.server import check

        with admin_client(settings.folder, timeout=3600.0) as client:
            report = check(client.post("/store/delete", json=body))
    else:
        report = _delete_offline(settings, body)
    _print_report(report, as_json)
    raise typer.Exit(EXIT_FAILURE_STATUS if report["not_found"] else EXIT_OK)


def _delete_offline(settings: Any, body: dict[str, Any]) -> dict[str, Any]:
    from pacskit.server.admin_store import DeleteRequest, delete, offline_audit
    from pacskit.server.datalock import DataFolderBusy, lock_data_folder
    from pacskit.server.server import open_store

    try:
        lock = lock_data_folder(settings.folder, "pacskit delete")
    except DataFolderBusy as exc:
        typer.echo(f"error: {exc}; stop it, or let it delete (its admin API is not reachable)", err=True)
        raise typer.Exit(EXIT_FAILURE_STATUS) from None
    with lock:
        store = open_store(settings)  # we hold the lock: recovery (interrupted deletions too) is safe
        try:
            with offline_audit(settings, store) as audit:
                try:
                    return delete(store, audit, DeleteRequest(**body), user=body["user"])
                except ValueError as exc:
                    typer.echo(f"error: {exc}", err=True)
                    raise typer.Exit(EXIT_USAGE) from None
        finally:
            store.close()
