"""The whole ``pacskit`` command line: the commands of this module (serve, ae, check, reindex…) and those
of the command modules, all registered on :data:`pacskit.cli.common.app`. The exit codes are in
:mod:`pacskit.cli.common`.

Loaded by :func:`pacskit.cli.main` (unless the lean path of :mod:`pacskit.cli.lean` ran the command)
and by ``from pacskit.cli import app``; ``import pacskit.cli`` alone loads none of it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from pacskit.cli.common import (
    EXIT_FAILURE_STATUS,
    EXIT_OK,
    EXIT_USAGE,
    ConfigOpt,
    DataDirOpt,
    app,
    existing_server_settings,
    one_line,
    server_settings,
)
from pacskit.cli.output import CsvOpt, JsonOpt

if TYPE_CHECKING:
    from pacskit.config.aetitles import FileAeRegistry

@app.command()
def serve(
    ae: Annotated[Optional[str], typer.Option("--ae", help="our AE title [PACSKIT]")] = None,
    host: Annotated[Optional[str], typer.Option(help="address to bind [127.0.0.1]")] = None,
    port: Annotated[Optional[int], typer.Option(help="port to listen on [11112]", min=0, max=65535)] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    open_mode: Annotated[
        Optional[bool], typer.Option("--open/--registered-only", help="accept any calling AE even off loopback")
    ] = None,
    workers: Annotated[
        Optional[int], typer.Option(help="processes serving the port, each a full server [1]", min=1, max=64)
    ] = None,
    http_port: Annotated[
        Optional[int], typer.Option("--http-port", help="port of the HTTP listener (DICOMweb) [http] port", min=0, max=65535)
    ] = None,
    dicomweb: Annotated[
        Optional[bool], typer.Option("--dicomweb/--no-dicomweb", help="serve DICOMweb at /dicom-web on the HTTP listener")
    ] = None,
    web: Annotated[
        Optional[bool], typer.Option("--web/--no-web", help="serve the web workstation at /ui (and DICOMweb) on the HTTP listener")
    ] = None,
) -> None:
    """Run the PACS server with its add-ins (Verification, Storage, Query, and any installed ones).

    The server folder (--data-dir, default ./pacs-data in the current folder) gets a server.toml with
    the defaults and this first start's flags when it has none; flags given later apply to that run only."""
    from pacskit.server.server import run_server

    if config is None:
        from pacskit.admin.manager import DEFAULT_SERVER_FOLDER, init_server_folder
        from pacskit.config.settings import SettingsError

        first = {"ae_title": ae, "host": host, "port": port, "open_mode": open_mode, "workers": workers}
        try:
            init_server_folder(Path(data_dir or DEFAULT_SERVER_FOLDER), first)
        except SettingsError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_USAGE) from None
        except OSError as exc:
            typer.echo(f"error: cannot make the server folder {data_dir or DEFAULT_SERVER_FOLDER}: {exc.strerror or exc}", err=True)
            raise typer.Exit(EXIT_USAGE) from None
    settings = server_settings(config, data_dir, ae_title=ae, host=host, port=port, open_mode=open_mode,
                                workers=workers)
    on_file = server_settings(config, data_dir)
    if settings.ae_title != on_file.ae_title and not settings.admin.socket:
        # The admin socket is named after the AE title in server.toml, where `status` & co. look for it:
        # an --ae for this run only must not move it.
        settings.admin.socket = on_file.admin_socket_path.name
    if http_port is not None:
        settings.http = settings.http.model_copy(update={"port": http_port})
    if dicomweb is not None:
        settings.addins.setdefault("dicomweb", {})["enabled"] = dicomweb
    if web is not None:
        settings.addins.setdefault("workstation", {})["enabled"] = web
        if web and dicomweb is None:
            settings.addins.setdefault("dicomweb", {})["enabled"] = True
    raise typer.Exit(run_server(settings, servers=_servers_root_of(settings.folder), announce=_announce_web))


def _servers_root_of(folder: Path) -> Any:
    """The service manager of the servers root ``folder`` is in ($PACSKIT_SERVERS or ./servers), or
    ``None`` for a standalone server (the workstation's ``/api/servers`` then answers 404)."""
    from pacskit.admin.manager import ServiceManager, servers_root

    root = servers_root()
    try:
        if root.is_dir() and folder.resolve().parent == root.resolve():
            return ServiceManager(root)
    except OSError:
        return None
    return None


def _announce_web(server: Any) -> None:
    """Print the URL to open when the web workstation runs (``pacskit serve --web``)."""
    http = getattr(server, "http", None)
    if http is None or http.address is None or not any(a.name == "workstation" for a in server.addins):
        return
    host, port = http.address
    scheme = "https" if server.settings.http.tls_cert else "http"
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else f"[{host}]" if ":" in host else host
    print(f"web workstation: open {scheme}://{shown}:{port}/ui/", flush=True)
    if not any(True for _ in _users_of(server)):
        print("  no users yet: pacskit users add <name> --role admin", flush=True)


def _users_of(server: Any) -> Any:
    addin = next((a for a in server.addins if a.name == "workstation"), None)
    return addin.users.list() if addin is not None else []


ae_app = typer.Typer(
    help="Manage the registry of remote AEs: through the admin API when the server runs (effective at once), "
    "else in its ae-titles.toml.",
    no_args_is_help=True,
)
app.add_typer(ae_app, name="ae")


def _registry(config: str | None, data_dir: str | None, *, create: bool = False) -> FileAeRegistry:
    from pacskit.config.aetitles import AE_FILE, FileAeRegistry

    settings = existing_server_settings(config, data_dir, create=create)
    return FileAeRegistry(settings.folder / AE_FILE)


def _running_api(config: str | None, data_dir: str | None, *, create: bool = False) -> Any | None:
    """An admin API client when the server of that folder is running, else ``None`` (edit the file)."""
    from pacskit.admin.manager import admin_client, api_reachable

    folder = existing_server_settings(config, data_dir, create=create).folder
    return admin_client(folder) if api_reachable(folder) else None


def _api_result(response: Any) -> Any:
    from pacskit.cli.server import check

    return check(response)


@ae_app.command("add")
def ae_add(
    name: Annotated[str, typer.Argument(help="the remote AE title")],
    host: Annotated[str, typer.Option(help="its host name or address")],
    port: Annotated[int, typer.Option(help="its port", min=1, max=65535)],
    tls: Annotated[bool, typer.Option(help="require TLS, both ways")] = False,
    description: Annotated[str, typer.Option(help="free text")] = "",
    services: Annotated[
        Optional[str], typer.Option(help="comma-separated services it may use (echo,store,find,move,get,...)")
    ] = None,
    source: Annotated[
        Optional[list[str]], typer.Option("--source", help="address, CIDR network or host name it may associate from (repeatable)")
    ] = None,
    tls_subject: Annotated[Optional[str], typer.Option(help="CN its TLS client certificate must carry")] = None,
    move_dest: Annotated[
        Optional[list[str]], typer.Option("--move-dest", help="a C-MOVE destination it may use (repeatable; default: any)")
    ] = None,
    user_identity: Annotated[str, typer.Option(help="none, password or jwt: the User Identity it must send")] = "none",
    username: Annotated[Optional[str], typer.Option(help="user name (password), or the 'sub' its JWTs must carry")] = None,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="read the password from stdin (stored hashed)")] = False,
    jwt_algorithm: Annotated[str, typer.Option(help="HS256 or RS256")] = "RS256",
    jwt_key_file: Annotated[Optional[Path], typer.Option(help="JWT key: HS256 secret or RS256 PEM public key")] = None,
    jwt_audience: Annotated[Optional[str], typer.Option(help="the 'aud' its JWTs must carry")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="overwrite an existing entry")] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Register a remote AE and its access rules (docs/security.md)."""
    from pydantic import ValidationError

    from pacskit.config.passwords import hash_password
    from pacskit.config.aetitles import RemoteAE

    password_hash = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            typer.echo("error: --password-stdin: no password on stdin", err=True)
            raise typer.Exit(EXIT_USAGE)
        password_hash = hash_password(password)
    try:
        jwt_key = jwt_key_file.read_text(encoding="utf-8").strip() if jwt_key_file is not None else None
        entry = RemoteAE(
            title=name,
            host=host,
            port=port,
            tls=tls,
            description=description,
            allowed_services=set(services.split(",")) if services else None,
            source_hosts=list(source or []),
            tls_subject=tls_subject,
            move_destinations=set(move_dest) if move_dest else None,
            user_identity=user_identity,  # type: ignore[arg-type]
            username=username,
            password_hash=password_hash,
            jwt_algorithm=jwt_algorithm,  # type: ignore[arg-type]
            jwt_key=jwt_key,
            jwt_audience=jwt_audience,
        )
        client = _running_api(config, data_dir, create=True)
        if client is not None:
            with client:
                body = entry.model_dump(mode="json")
                if replace and client.get(f"/ae-titles/{entry.title}").status_code == 200:
                    _api_result(client.put(f"/ae-titles/{entry.title}", json=body))
                else:
                    _api_result(client.post("/ae-titles", json=body))
        else:
            _registry(config, data_dir, create=True).add(entry, replace=replace)
    except (ValidationError, ValueError, OSError) as exc:
        typer.echo(f"error: {one_line(exc)}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    typer.echo(f"added {entry.title} at {entry.host}:{entry.port}")


@ae_app.command("list")
def ae_list(data_dir: DataDirOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False, as_csv: CsvOpt = False) -> None:
    """List the registered AEs."""
    from pacskit.cli.output import output_format, print_rows
    from pacskit.config.aetitles import RemoteAE

    fmt = output_format(as_json, as_csv)
    client = _running_api(config, data_dir)
    if client is not None:
        with client:
            entries = [RemoteAE.model_validate(e) for e in _api_result(client.get("/ae-titles"))]
    else:
        entries = _registry(config, data_dir).all()
    rows = []
    for entry in entries:
        tls = "yes" if entry.requires_tls else "no"
        if entry.tls_subject:
            tls += f" (CN={entry.tls_subject})"
        rows.append([
            entry.title, entry.host, entry.port, tls,
            ",".join(sorted(entry.allowed_services)) if entry.allowed_services is not None else "all",
            ",".join(entry.source_hosts) or "anywhere", entry.user_identity, entry.description,
        ])
    print_rows(["AE title", "host", "port", "TLS", "services", "from", "identity", "description"], rows, fmt,
               keys=["title", "host", "port", "tls", "services", "from", "identity", "description"])


@ae_app.command("remove")
def ae_remove(
    name: Annotated[str, typer.Argument(help="the remote AE title")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Remove a registered AE."""
    client = _running_api(config, data_dir)
    if client is not None:
        with client:
            _api_result(client.delete(f"/ae-titles/{name}"))
    elif not _registry(config, data_dir).remove(name):
        typer.echo(f"error: {name} is not registered", err=True)
        raise typer.Exit(EXIT_FAILURE_STATUS)
    typer.echo(f"removed {name}")


@contextmanager
def _progress_bar(description: str, quiet: bool) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr (only on a terminal, and not with --quiet); yields the
    ``progress(done, total)`` callback that long store operations (check, reindex) call."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, disable=quiet or not console.is_terminal, transient=False,
    ) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


@app.command()
def check(
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    no_hash: Annotated[bool, typer.Option("--no-hash", help="compare sizes only (faster)")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    delete_orphans: Annotated[bool, typer.Option(
        "--delete-orphans", help="delete the stored files no index row refers to (never acknowledged)")] = False,
) -> None:
    """Verify that the index and the stored files agree (sizes, SHA-256, orphans, counts).

    Only inspects (safe while the server runs: no recovery, no temp file or journal touched), unless
    --delete-orphans: then the orphan files it found are deleted, each checked again first (still no
    row, not an ingest in flight), which is safe while servers run too."""
    from pacskit.server.server import open_store

    settings = existing_server_settings(config, data_dir)
    store = open_store(settings, recover=False)
    try:
        with _progress_bar("checking", quiet) as advance:
            try:
                report = store.check(verify_hash=not no_hash, progress=advance)
            except OSError as exc:  # the blob store cannot be listed (an object store unreachable, ...)
                typer.echo(f"error: cannot check {store.blobs!r}: {exc}", err=True)
                raise typer.Exit(EXIT_FAILURE_STATUS) from None
        typer.echo(str(report))
        if delete_orphans:
            deleted = set(store.delete_orphans(report))
            typer.echo(f"deleted {len(deleted)} orphan blobs")
            report.problems = [p for p in report.problems if not (p.kind == "orphan-blob" and p.blob_key in deleted)]
    finally:
        store.close()
    raise typer.Exit(EXIT_OK if report.ok else EXIT_FAILURE_STATUS)


@app.command()
def reindex(
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Rebuild the index from the stored files (refused while a server holds the data folder)."""
    from pacskit.server.datalock import DataFolderBusy, lock_data_folder
    from pacskit.server.server import open_store

    settings = existing_server_settings(config, data_dir)
    try:
        lock = lock_data_folder(settings.data_path, "pacskit reindex")
    except DataFolderBusy as exc:
        typer.echo(f"error: {exc}: stop it before reindex", err=True)
        raise typer.Exit(EXIT_FAILURE_STATUS) from None
    with lock:
        store = open_store(settings)
        try:
            with _progress_bar("indexing", quiet) as advance:
                report = store.reindex(progress=advance)
        finally:
            store.close()
    typer.echo(f"indexed {report.indexed} instances")
    for key, reason in report.skipped:
        typer.echo(f"skipped {key}: {reason}")
    for key in report.duplicates:
        typer.echo(f"left out {key}: same SOP Instance UID as an indexed file")
    raise typer.Exit(EXIT_OK if not report.skipped else EXIT_FAILURE_STATUS)


# The command modules register their commands on `app` when imported (in this order in --help).
from pacskit.cli import client as _client  # noqa: E402,F401  (echo, store, find, move, get)
from pacskit.cli import log as _log  # noqa: E402,F401
from pacskit.cli import server as _server  # noqa: E402,F401  (server …, status, clients, addins, reload, events)
from pacskit.cli.certs import certs_app  # noqa: E402

app.add_typer(certs_app, name="certs")
from pacskit.cli import commit as _commit  # noqa: E402,F401  (pacskit commit: storage commitment)
from pacskit.cli import worklist as _worklist  # noqa: E402,F401  (pacskit worklist ...)
from pacskit.cli import media as _media  # noqa: E402,F401  (pacskit media build|create|status|cancel)
from pacskit.cli import browse as _browse  # noqa: E402,F401  (pacskit dump | ls | stats)
from pacskit.cli import print as _print  # noqa: E402,F401  (pacskit print)
from pacskit.cli import archive as _archive  # noqa: E402,F401  (pacskit delete)
from pacskit.cli import users as _users  # noqa: E402,F401  (pacskit users add|passwd|remove|list)


__all__ = ["app"]
