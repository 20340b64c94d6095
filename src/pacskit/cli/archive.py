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

from pacskit.cli.common import (
    EXIT_FAILURE_STATUS,
    EXIT_OK,
    EXIT_USAGE,
    ConfigOpt,
    DataDirOpt,
    app,
    existing_server_settings,
    server_settings,
)


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
    settings = existing_server_settings(config, data_dir)
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


@app.command("merge-patients")
def merge_command(
    source: Annotated[str, typer.Argument(help="Patient ID merged away (ID|ISSUER to name the issuer)")],
    target: Annotated[str, typer.Argument(help="Patient ID that receives the studies")],
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="say what would move; change nothing")] = False,
    reason: Annotated[str, typer.Option("--reason", help="why (logged)")] = "",
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Merge patient SOURCE into TARGET: studies moved, files rewritten with TARGET's patient attributes."""
    from pacskit.admin.manager import admin_client, api_reachable
    from pacskit.server.admin_store import local_user

    settings = existing_server_settings(config, data_dir)
    body = {"source": source, "target": target, "dry_run": dry_run, "reason": reason, "user": local_user()}
    if api_reachable(settings.folder):
        from pacskit.cli.server import check

        with admin_client(settings.folder, timeout=3600.0) as client:
            report = check(client.post("/store/merge-patients", json=body))
    else:
        report = _offline(settings, body, "merge")
    verb = "would move" if report["dry_run"] else "moved"
    typer.echo(f"{verb} {len(report['studies'])} studies ({report['instances']} instances) of {source} to {target}")


@app.command("move-series")
def move_series_command(
    series: Annotated[str, typer.Argument(help="Series Instance UID")],
    study: Annotated[str, typer.Argument(help="Study Instance UID of the existing study that receives it")],
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n")] = False,
    reason: Annotated[str, typer.Option("--reason", help="why (logged)")] = "",
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """File a series under another study: files rewritten with that study's (and patient's) attributes."""
    from pacskit.admin.manager import admin_client, api_reachable
    from pacskit.server.admin_store import local_user

    settings = existing_server_settings(config, data_dir)
    body = {"series_instance_uid": series, "study_instance_uid": study, "dry_run": dry_run, "reason": reason,
            "user": local_user()}
    if api_reachable(settings.folder):
        from pacskit.cli.server import check

        with admin_client(settings.folder, timeout=3600.0) as client:
            report = check(client.post("/store/move-series", json=body))
    else:
        report = _offline(settings, body, "move-series")
    verb = "would move" if report["dry_run"] else "moved"
    typer.echo(f"{verb} series {series} ({report['instances']} instances) to study {study}")


@app.command("correct")
def correct_command(
    level: Annotated[str, typer.Argument(help="study or series")],
    uid: Annotated[str, typer.Argument(help="Study or Series Instance UID")],
    changes: Annotated[list[str], typer.Argument(help="Keyword=value pairs (Keyword= empties it)")],
    new_uids: Annotated[bool, typer.Option("--new-uids", help="give the study/series and its instances new UIDs")] = False,
    forward_to: Annotated[Optional[list[str]], typer.Option("--forward-to", help="AE title that gets the corrected instances (repeatable; the server must run)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="say what would change; change nothing")] = False,
    reason: Annotated[str, typer.Option("--reason", help="why (logged, audited)")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="the report as JSON")] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Correct attributes of a stored study or series: index and files, crash-safely, audited; the old
    values recorded in each file's Original Attributes Sequence (docs/corrections.md)."""
    from pacskit.admin.manager import admin_client, api_reachable
    from pacskit.server.admin_store import local_user

    if level not in ("study", "series"):
        typer.echo(f"error: level must be study or series, not {level!r}", err=True)
        raise typer.Exit(EXIT_USAGE)
    parsed: dict[str, str] = {}
    for change in changes:
        keyword, sep, value = change.partition("=")
        if not sep or not keyword.strip():
            typer.echo(f"error: {change!r} is not Keyword=value", err=True)
            raise typer.Exit(EXIT_USAGE)
        parsed[keyword.strip()] = value
    settings = existing_server_settings(config, data_dir)
    body = {"level": level, "uid": uid, "changes": parsed, "uid_policy": "new" if new_uids else "keep",
            "forward_to": forward_to or [], "dry_run": dry_run, "reason": reason, "user": local_user()}
    if api_reachable(settings.folder):
        from pacskit.cli.server import check

        with admin_client(settings.folder, timeout=3600.0) as client:
            report = check(client.post("/store/correct", json=body))
    else:
        if forward_to:
            typer.echo("error: --forward-to needs the running server (it sends through its AE registry)", err=True)
            raise typer.Exit(EXIT_USAGE)
        report = _offline(settings, body, "correct")
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    verb = "would change" if report["dry_run"] else "changed"
    typer.echo(f"{verb} {report['instances']} instances of {level} {uid}: "
               + ", ".join(f"{k}={v!r}" for k, v in report["changes"].items()))
    if report["new_uids"].get(uid):
        typer.echo(f"new {level} UID: {report['new_uids'][uid]}")
    for title, sent in (report.get("forwarded") or {}).items():
        typer.echo(f"forwarded to {title}: {sent['sent']} sent, {sent['failed']} failed")
    if any(sent["failed"] for sent in (report.get("forwarded") or {}).values()):
        raise typer.Exit(EXIT_FAILURE_STATUS)


@app.command("compress")
def compress_command(
    level: Annotated[str, typer.Argument(help="patient, study, series or instance")],
    identifiers: Annotated[list[str], typer.Argument(help="Patient IDs or UIDs")],
    syntax: Annotated[str, typer.Option("--syntax", help="rle, j2k (JPEG 2000 lossless) or jpeg-ls")] = "j2k",
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Compress stored uncompressed instances losslessly; each is kept only if its pixels decode identically."""
    from pacskit.admin.manager import admin_client, api_reachable
    from pacskit.store.deletion import LEVELS

    if level not in LEVELS:
        typer.echo(f"error: level must be one of {', '.join(LEVELS)}, not {level!r}", err=True)
        raise typer.Exit(EXIT_USAGE)
    settings = existing_server_settings(config, data_dir)
    body = {"level": level, "uids": identifiers, "syntax": syntax}
    if api_reachable(settings.folder):
        from pacskit.cli.server import check

        with admin_client(settings.folder, timeout=3600.0) as client:
            report = check(client.post("/store/compress", json=body))
    else:
        report = _offline(settings, body, "compress")
    for uid, why in report["skipped"]:
        typer.echo(f"left as it is: {uid}: {why}")
    typer.echo(f"compressed {report['compressed']} instances ({report['bytes_before']} -> {report['bytes_after']} bytes)")


def _offline(settings: Any, body: dict[str, Any], what: str) -> dict[str, Any]:
    from pacskit.server.admin_store import MergeRequest, MoveSeriesRequest, merge, move, offline_audit
    from pacskit.server.datalock import DataFolderBusy, lock_data_folder
    from pacskit.server.server import open_store
    from pacskit.store.correction import CorrectionError

    try:
        lock = lock_data_folder(settings.data_path, f"pacskit {what}")
    except DataFolderBusy as exc:
        typer.echo(f"error: {exc}; stop it, or let it do this (its admin API is not reachable)", err=True)
        raise typer.Exit(EXIT_FAILURE_STATUS) from None
    with lock:
        store = open_store(settings)
        try:
            with offline_audit(settings, store) as audit:
                try:
                    if what == "compress":
                        from pacskit.store.compression import CompressionError, compress

                        try:
                            return compress(store, body["level"], body["uids"], body["syntax"]).to_json()
                        except CompressionError as exc:
                            typer.echo(f"error: {exc}", err=True)
                            raise typer.Exit(EXIT_USAGE) from None
                    if what == "move-series":
                        return move(store, audit, MoveSeriesRequest(**body), user=body["user"])
                    if what == "correct":
                        from pacskit.server.admin_store import CorrectRequest, correct

                        return correct(store, audit, CorrectRequest(**body), user=body["user"])
                    return merge(store, audit, MergeRequest(**body), user=body["user"])
                except CorrectionError as exc:
                    typer.echo(f"error: {exc}", err=True)
                    raise typer.Exit(EXIT_FAILURE_STATUS) from None
        finally:
            store.close()


def _delete_offline(settings: Any, body: dict[str, Any]) -> dict[str, Any]:
    from pacskit.server.admin_store import DeleteRequest, delete, offline_audit
    from pacskit.server.datalock import DataFolderBusy, lock_data_folder
    from pacskit.server.server import open_store

    try:
        lock = lock_data_folder(settings.data_path, "pacskit delete")
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


def _project_key(folder: Any, project: str, key_file: str | None) -> bytes:
    """``--key-file``, else the project's key in the server folder (:func:`pacskit.dicom.anonymize.project_key`)."""
    from pathlib import Path

    from pacskit.dicom.anonymize import project_key

    if key_file is not None:
        data = Path(key_file).read_bytes().strip()
        if not data:
            raise ValueError(f"key file {key_file} is empty")
        return data
    return project_key(folder, project)


@app.command("anonymize")
def anonymize_command(
    level: Annotated[str, typer.Argument(help="patient, study, series, instance (from the archive) or files")],
    identifiers: Annotated[list[str], typer.Argument(help="Patient IDs, UIDs, or (files) paths of files and folders")],
    out: Annotated[str, typer.Option("--out", "-o", help="folder the de-identified files are written to")],
    project: Annotated[str, typer.Option("--project", help="project whose key maps UIDs and patients")] = "default",
    key_file: Annotated[Optional[str], typer.Option("--key-file", help="the secret, instead of the project's")] = None,
    retain_uids: Annotated[bool, typer.Option("--retain-uids")] = False,
    retain_device_identity: Annotated[bool, typer.Option("--retain-device-identity")] = False,
    retain_institution_identity: Annotated[bool, typer.Option("--retain-institution-identity")] = False,
    retain_patient_characteristics: Annotated[bool, typer.Option("--retain-patient-characteristics")] = False,
    retain_full_dates: Annotated[bool, typer.Option("--retain-full-dates")] = False,
    retain_modified_dates: Annotated[bool, typer.Option("--retain-modified-dates",
                                                        help="dates shifted by a per-patient offset")] = False,
    allow_burned_in: Annotated[bool, typer.Option("--allow-burned-in",
                                                  help="export instances with Burned In Annotation = YES")] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Export de-identified copies (PS3.15 E.1 Basic Profile and options): see docs/admin-guide.md.

    Only reads the archive (safe while the server runs). Exit code 1 when an instance was refused
    (burned-in annotation) or could not be read; the others are written."""
    from pathlib import Path

    from pacskit.dicom.anonymize import AnonymizeError, Anonymizer, Options
    from pacskit.store.deletion import LEVELS

    if level not in (*LEVELS, "files"):
        typer.echo(f"error: level must be one of {', '.join(LEVELS)}, files; not {level!r}", err=True)
        raise typer.Exit(EXIT_USAGE)
    # the archive, or the project key kept in the folder: the folder must exist (none is made up)
    settings = (server_settings(config, data_dir) if level == "files" and key_file is not None
                else existing_server_settings(config, data_dir))
    try:
        key = _project_key(settings.folder, project, key_file)
    except (ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    anonymizer = Anonymizer(key, Options(
        retain_uids=retain_uids, retain_device_identity=retain_device_identity,
        retain_institution_identity=retain_institution_identity,
        retain_patient_characteristics=retain_patient_characteristics, retain_full_dates=retain_full_dates,
        retain_modified_dates=retain_modified_dates, allow_burned_in=allow_burned_in))
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    written = 0
    failed: list[str] = []
    unknown_burned_in = 0

    def one(path: str, label: str) -> None:
        nonlocal written, unknown_burned_in
        try:
            result = anonymizer.anonymize_file(path, target / "tmp.dcm")
        except (AnonymizeError, OSError, ValueError) as exc:
            failed.append(f"{label}: {exc}")
            return
        except Exception as exc:  # pydicom's read errors
            failed.append(f"{label}: not readable as DICOM ({type(exc).__name__}: {exc})")
            return
        (target / "tmp.dcm").replace(target / f"{result.sop_instance_uid}.dcm")
        written += 1
        unknown_burned_in += result.burned_in == "unknown"

    if level == "files":
        for name in identifiers:
            p = Path(name)
            paths = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
            for q in paths:
                one(str(q), str(q))
    else:
        from pacskit.server.server import open_store
        from pacskit.store.deletion import Deleter

        store = open_store(settings, recover=False)  # only reads
        try:
            _studies, rows, not_found = Deleter(store).select(level, identifiers)  # type: ignore[arg-type]
            for study_rows in rows.values():
                for row in study_rows:
                    path = store.blobs.path(row.blob_key)
                    if path is None:
                        failed.append(f"instance of blob {row.blob_key}: the blob store has no local files")
                        continue
                    one(path, f"blob {row.blob_key}")
            failed.extend(f"not found: {uid}" for uid in not_found)
        finally:
            store.close()
    for line in failed:
        typer.echo(f"not exported: {line}", err=True)
    typer.echo(f"wrote {written} de-identified instances to {target} (project {project if key_file is None else key_file})")
    if unknown_burned_in:
        typer.echo(f"check {unknown_burned_in} instances for burned-in annotation: they do not say "
                   "(Burned In Annotation absent)")
    raise typer.Exit(EXIT_FAILURE_STATUS if failed else EXIT_OK)


route_app = typer.Typer(help="The routing add-in's forward queue: list, retry, purge (docs/addins/routing.md).",
                        no_args_is_help=True)
app.add_typer(route_app, name="route")


def _queue_call(addin: str, data_dir: str | None, config: str | None, method: str, path: str,
                body: dict[str, Any] | None, offline: Any) -> Any:
    """An add-in queue's operation: through the running server's admin API (``/addins/<addin><path>``),
    else ``offline(queue)`` on the add-in's queue file (the server is stopped: what is queued is done at
    its next start). The routing and prefetch queues share this."""
    from pacskit.admin.manager import admin_client, api_reachable

    settings = existing_server_settings(config, data_dir)
    if api_reachable(settings.folder):
        from pacskit.cli.server import check

        with admin_client(settings.folder) as client:
            return check(client.request(method, f"/addins/{addin}{path}", json=body))
    from pathlib import Path

    if addin == "routing":
        from pacskit.addins.routing.queue import ForwardQueue as queue_class
    else:
        from pacskit.addins.prefetch import PrefetchQueue as queue_class  # type: ignore[assignment]

    section = settings.addin_section(addin)
    file = Path(section.get("queue_file", f"{addin}/queue.db"))
    file = file if file.is_absolute() else settings.data_path / file
    if not file.exists():
        typer.echo(f"error: no {addin} queue at {file} (is the {addin} add-in enabled?)", err=True)
        raise typer.Exit(EXIT_USAGE)
    queue = queue_class(file)
    try:
        return offline(queue)
    finally:
        queue.close()


def _route_call(data_dir: str | None, config: str | None, method: str, path: str, body: dict[str, Any] | None,
                offline: Any) -> Any:
    return _queue_call("routing", data_dir, config, method, path, body, offline)


@route_app.command("list")
def route_list(
    state: Annotated[Optional[str], typer.Option(help="queued or failed")] = None,
    destination: Annotated[Optional[str], typer.Option(help="an AE title")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """The jobs waiting (or failed), oldest first."""
    params = "&".join(f"{k}={v}" for k, v in (("state", state), ("destination", destination)) if v)
    jobs = _route_call(data_dir, config, "GET", "/queue" + (f"?{params}" if params else ""), None,
                       lambda q: [j.to_json() for j in q.list(state=state, destination=destination)])
    if as_json:
        typer.echo(json.dumps(jobs, indent=2))
        return
    for job in jobs:
        typer.echo(f"{job['id']:>8} {job['state']:<7} {job['destination']:<16} {job['sop_instance_uid']} "
                   f"attempts {job['attempts']}{': ' + job['last_error'] if job['last_error'] else ''}")
    typer.echo(f"{len(jobs)} jobs")


@route_app.command("retry")
def route_retry(
    ids: Annotated[Optional[list[int]], typer.Argument(help="job ids (default: every failed job)")] = None,
    destination: Annotated[Optional[str], typer.Option(help="only this AE title's jobs")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Send failed (or postponed) jobs again now."""
    body = {"destination": destination, "ids": ids or None}
    result = _route_call(data_dir, config, "POST", "/retry", body,
                         lambda q: {"retried": q.retry(destination=destination, ids=ids)})
    typer.echo(f"retried {result['retried']} jobs")


@route_app.command("purge")
def route_purge(
    destination: Annotated[Optional[str], typer.Option(help="only this AE title's jobs")] = None,
    state: Annotated[Optional[str], typer.Option(help="only queued or failed jobs")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Remove jobs from the queue (they are not sent)."""
    body = {"destination": destination, "state": state}
    result = _route_call(data_dir, config, "POST", "/purge", body,
                         lambda q: {"purged": q.purge(destination=destination, state=state)})
    typer.echo(f"purged {result['purged']} jobs")


prefetch_app = typer.Typer(help="The prefetch add-in's queue: list, request, retry (docs/addins/prefetch.md).",
                           no_args_is_help=True)
app.add_typer(prefetch_app, name="prefetch")


def _prefetch_call(data_dir: str | None, config: str | None, method: str, path: str, body: dict[str, Any] | None,
                   offline: Any) -> Any:
    return _queue_call("prefetch", data_dir, config, method, path, body, offline)


@prefetch_app.command("list")
def prefetch_list(
    state: Annotated[Optional[str], typer.Option(help="queued, done or failed")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """The prefetch jobs, oldest first: patient, trigger, state, attempts, what was fetched."""
    jobs = _prefetch_call(data_dir, config, "GET", "/jobs" + (f"?state={state}" if state else ""), None,
                          lambda q: [j.to_json() for j in q.jobs(state)])
    if as_json:
        typer.echo(json.dumps(jobs, indent=2))
        return
    for job in jobs:
        typer.echo(f"{job['id']:>8} {job['state']:<6} {job['patient_id']:<20} {job['trigger']:<8} "
                   f"attempts {job['attempts']}, {job['studies_fetched']} studies, {job['instances_fetched']} instances"
                   f"{': ' + job['last_error'] if job['last_error'] else ''}")
    typer.echo(f"{len(jobs)} jobs")


@prefetch_app.command("request")
def prefetch_request(
    patient_id: Annotated[str, typer.Argument(help="the patient's ID")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Prefetch a patient's prior studies now (or at the server's next start when it is stopped)."""
    result = _prefetch_call(data_dir, config, "POST", "/request", {"patient_id": patient_id},
                            lambda q: {"queued": q.enqueue([(patient_id, "request", "", "")]) > 0})
    typer.echo(f"queued a prefetch for {patient_id}" if result["queued"] else f"a prefetch for {patient_id} is already waiting")


@prefetch_app.command("retry")
def prefetch_retry(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """Queue the failed jobs again."""
    result = _prefetch_call(data_dir, config, "POST", "/retry", None, lambda q: {"retried": q.requeue_failed()})
    typer.echo(f"retried {result['retried']} jobs")
