"""The ``pacskit`` command line.

Exit codes scripts can rely on (shared by every network command):

== =====================================================================
0  success
1  the peer answered with a failure (or warning, where noted) status
2  usage error (bad arguments, bad address)
3  connection failed (refused, unreachable, TLS handshake)
4  association rejected (the reason is printed)
5  timeout (ACSE, DIMSE or network)
6  association aborted
== =====================================================================
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from pacskit.net import (
    AssociationAborted,
    AssociationRejected,
    ConnectionFailed,
    NetError,
    NetTimeout,
)

if TYPE_CHECKING:
    from pacskit.config.aetitles import FileAeRegistry
    from pacskit.config.settings import ServerSettings

EXIT_OK = 0
EXIT_FAILURE_STATUS = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3
EXIT_REJECTED = 4
EXIT_TIMEOUT = 5
EXIT_ABORTED = 6

app = typer.Typer(add_completion=False, no_args_is_help=True, help="pacskit: an extensible, fast PACS framework.")


def parse_address(text: str) -> tuple[str, str, int]:
    """Parse dcm4che's ``AET@host:port`` form; raises ``typer.BadParameter`` with the expected form."""
    from pacskit.client.remote import parse_address as parse

    try:
        return parse(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def net_error_exit(exc: NetError) -> int:
    """Print one clear line for a network failure and return the matching exit code."""
    if isinstance(exc, ConnectionFailed):
        code = EXIT_CONNECTION
    elif isinstance(exc, AssociationRejected):
        code = EXIT_REJECTED
    elif isinstance(exc, NetTimeout):
        code = EXIT_TIMEOUT
    elif isinstance(exc, AssociationAborted):
        code = EXIT_ABORTED
    else:
        code = EXIT_FAILURE_STATUS
    typer.echo(f"error: {exc}", err=True)
    return code


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _server_settings(config: str | None, data_dir: str | None, **overrides: object) -> ServerSettings:
    """Settings from ``--config`` (a server.toml or its folder) or ``--data-dir``, then CLI flags."""
    from pacskit.config.settings import SettingsError, load_settings

    if config is not None:
        path = Path(config)
        folder = path.parent if path.suffix == ".toml" else path
        if path.suffix == ".toml" and not path.exists():
            typer.echo(f"error: settings file {path} does not exist", err=True)
            raise typer.Exit(EXIT_USAGE)
    else:
        folder = Path(data_dir or "./pacs-data")
    if data_dir is not None and config is not None:
        overrides["data_dir"] = str(Path(data_dir).resolve())
    try:
        return load_settings(folder, {k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None


ConfigOpt = Annotated[
    Optional[str], typer.Option("--config", help="server.toml (or the server folder holding it)")
]
DataDirOpt = Annotated[
    Optional[str], typer.Option("--data-dir", help="server folder: settings, index and files [./pacs-data]")
]


@app.command()
def serve(
    ae: Annotated[Optional[str], typer.Option("--ae", help="our AE title [PACSKIT]")] = None,
    host: Annotated[Optional[str], typer.Option(help="address to bind [127.0.0.1]")] = None,
    port: Annotated[Optional[int], typer.Option(help="port to listen on [11112]")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    open_mode: Annotated[
        Optional[bool], typer.Option("--open/--registered-only", help="accept any calling AE even off loopback")
    ] = None,
    workers: Annotated[
        Optional[int], typer.Option(help="processes serving the port, each a full server [1]", min=1, max=64)
    ] = None,
) -> None:
    """Run the PACS server with its add-ins (Verification, Storage, Query, and any installed ones)."""
    from pacskit.server.server import run_server

    settings = _server_settings(config, data_dir, ae_title=ae, host=host, port=port, open_mode=open_mode,
                                workers=workers)
    raise typer.Exit(run_server(settings))


ae_app = typer.Typer(
    help="Manage the registry of remote AEs: through the admin API when the server runs (effective at once), "
    "else in its ae-titles.toml.",
    no_args_is_help=True,
)
app.add_typer(ae_app, name="ae")


def _registry(config: str | None, data_dir: str | None) -> FileAeRegistry:
    from pacskit.config.aetitles import AE_FILE, FileAeRegistry

    settings = _server_settings(config, data_dir)
    return FileAeRegistry(settings.folder / AE_FILE)


def _running_api(config: str | None, data_dir: str | None) -> Any | None:
    """An admin API client when the server of that folder is running, else ``None`` (edit the file)."""
    from pacskit.admin.manager import admin_client, api_reachable

    folder = _server_settings(config, data_dir).folder
    return admin_client(folder) if api_reachable(folder) else None


def _api_result(response: Any) -> Any:
    from pacskit.cli.server import check

    return check(response)


@ae_app.command("add")
def ae_add(
    name: Annotated[str, typer.Argument(help="the remote AE title")],
    host: Annotated[str, typer.Option(help="its host name or address")],
    port: Annotated[int, typer.Option(help="its port")],
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
        client = _running_api(config, data_dir)
        if client is not None:
            with client:
                body = entry.model_dump(mode="json")
                if replace and client.get(f"/ae-titles/{entry.title}").status_code == 200:
                    _api_result(client.put(f"/ae-titles/{entry.title}", json=body))
                else:
                    _api_result(client.post("/ae-titles", json=body))
        else:
            _registry(config, data_dir).add(entry, replace=replace)
    except (ValidationError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    typer.echo(f"added {entry.title} at {entry.host}:{entry.port}")


@ae_app.command("list")
def ae_list(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """List the registered AEs."""
    from rich.console import Console
    from rich.table import Table

    from pacskit.config.aetitles import RemoteAE

    table = Table("AE title", "host", "port", "TLS", "services", "from", "identity", "description")
    client = _running_api(config, data_dir)
    if client is not None:
        with client:
            entries = [RemoteAE.model_validate(e) for e in _api_result(client.get("/ae-titles"))]
    else:
        entries = _registry(config, data_dir).all()
    for entry in entries:
        tls = "yes" if entry.requires_tls else "no"
        if entry.tls_subject:
            tls += f" (CN={entry.tls_subject})"
        table.add_row(
            entry.title, entry.host, str(entry.port), tls,
            ",".join(sorted(entry.allowed_services)) if entry.allowed_services is not None else "all",
            ",".join(entry.source_hosts) or "anywhere", entry.user_identity, entry.description,
        )
    Console().print(table)


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


@app.command()
def check(
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    no_hash: Annotated[bool, typer.Option("--no-hash", help="compare sizes only (faster)")] = False,
) -> None:
    """Verify that the index and the stored files agree (sizes, SHA-256, orphans, counts)."""
    from pacskit.server.server import open_store

    settings = _server_settings(config, data_dir)
    store = open_store(settings)
    try:
        report = store.check(verify_hash=not no_hash)
    finally:
        store.close()
    typer.echo(str(report))
    raise typer.Exit(EXIT_OK if report.ok else EXIT_FAILURE_STATUS)


@app.command()
def reindex(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """Rebuild the index from the stored files (run with the server stopped)."""
    from pacskit.server.server import open_store

    settings = _server_settings(config, data_dir)
    store = open_store(settings)
    try:
        report = store.reindex()
    finally:
        store.close()
    typer.echo(f"indexed {report.indexed} instances")
    for key, reason in report.skipped:
        typer.echo(f"skipped {key}: {reason}")
    for key in report.duplicates:
        typer.echo(f"left out {key}: same SOP Instance UID as an indexed file")
    raise typer.Exit(EXIT_OK if not report.skipped else EXIT_FAILURE_STATUS)


# The client commands (echo, store, find, move, get) live in their own module; importing it registers them.
from pacskit.cli import client as _client  # noqa: E402,F401
from pacskit.cli import log as _log  # noqa: E402,F401
from pacskit.cli import server as _server  # noqa: E402,F401  (server …, status, clients, addins, reload, events)
from pacskit.cli.certs import certs_app  # noqa: E402

app.add_typer(certs_app, name="certs")
from pacskit.cli import commit as _commit  # noqa: E402,F401 - pacskit commit (storage commitment)
from pacskit.cli import worklist as _worklist  # noqa: E402,F401  (pacskit worklist ...)
from pacskit.cli import archive as _archive  # noqa: E402,F401  (pacskit delete)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interactive
        sys.exit(130)
