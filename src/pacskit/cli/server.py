"""``pacskit server …`` (the service manager) and the commands that talk to a running server's admin API:
``pacskit status``, ``pacskit clients``, ``pacskit addins``, ``pacskit reload``, ``pacskit events``.

A running server is named with ``--server``: a server folder (holding server.toml) or the name of a
server under the servers root (``--root``, ``$PACSKIT_SERVERS``, ``./servers``); without it,
``$PACSKIT_SERVER``, else the only server there is: under the root, or ``./pacs-data`` (the folder
``pacskit serve`` uses by default). The API is reached over the Unix socket in
the server folder (httpx), so these commands run on the server's machine, as its user or root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from pacskit.cli.common import EXIT_CONNECTION, EXIT_FAILURE_STATUS, EXIT_USAGE, app
from pacskit.cli.output import CsvOpt, JsonOpt, output_format

server_app = typer.Typer(help="Create, run and remove servers (folders under a servers root).", no_args_is_help=True)
app.add_typer(server_app, name="server")

RootOpt = Annotated[Optional[str], typer.Option("--root", help="servers root [$PACSKIT_SERVERS or ./servers]")]
ServerOpt = Annotated[
    Optional[str], typer.Option("--server", help="server folder, or a server name under the servers root")
]


def _manager(root: str | None) -> Any:
    from pacskit.admin.manager import ServiceManager

    return ServiceManager(root)


def _fail(message: str, code: int = EXIT_FAILURE_STATUS) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _table(headers: list[str], rows: list[list[Any]], fmt: str = "table", keys: list[str] | None = None) -> None:
    from pacskit.cli.output import print_rows

    print_rows(headers, rows, fmt, keys=keys)


# ---------------------------------------------------------------------- the service manager


@server_app.command("create")
def server_create(
    ae: Annotated[str, typer.Option("--ae", help="the server's AE title; also names its folder")],
    port: Annotated[int, typer.Option(help="DICOM port", min=0, max=65535)],
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    db: Annotated[Optional[str], typer.Option("--db", help="SQLAlchemy URL of the index [SQLite in data/]")] = None,
    root: RootOpt = None,
) -> None:
    """Make a server folder: server.toml, addins/, data/, logs/."""
    from pacskit.admin.manager import ManagerError

    try:
        folder = _manager(root).create(ae, port=port, host=host, database_url=db)
    except ManagerError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    typer.echo(f"created {folder}")


@server_app.command("list")
def server_list(root: RootOpt = None, as_json: JsonOpt = False, as_csv: CsvOpt = False) -> None:
    """The servers under the root, running or not."""
    fmt = output_format(as_json, as_csv)
    rows = [
        [i.name, i.ae_title, f"{i.host}:{i.port}", f"running (pid {i.pid})" if i.running else "stopped", i.error or ""]
        for i in _manager(root).list()
    ]
    _table(["name", "AE title", "address", "state", "problem"], rows, fmt)


@server_app.command("start")
def server_start(
    name: Annotated[str, typer.Argument(help="server name (its AE title)")],
    root: RootOpt = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait until it listens")] = 60.0,
) -> None:
    """Start a server in the background; returns once it listens (or prints why it did not start)."""
    from pacskit.admin.manager import ManagerError

    try:
        pid = _manager(root).start(name, timeout=timeout)
    except ManagerError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"started {name} (pid {pid})")


@server_app.command("stop")
def server_stop(
    name: Annotated[
        Optional[str], typer.Argument(help="server name or folder [the only server: under the root, or ./pacs-data]")
    ] = None,
    root: RootOpt = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for it to exit")] = 60.0,
    force: Annotated[bool, typer.Option("--force", help="SIGKILL when it has not exited in time")] = False,
) -> None:
    """Stop a server (SIGTERM: running operations finish first) and wait until it exited.

    Exit 1 with a line when it was not running."""
    from pacskit.admin.manager import ManagerError

    manager = _manager(root)
    try:
        folder = resolve_server(name, root)
        label = name or str(folder)
        stopped = manager.stop_folder(folder, timeout=timeout, force=force)
    except ManagerError as exc:
        raise _fail(str(exc)) from None
    if not stopped:
        raise _fail(f"{label} is not running")
    typer.echo(f"stopped {label}")


@server_app.command("restart")
def server_restart(
    name: Annotated[str, typer.Argument(help="server name")],
    root: RootOpt = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for each step")] = 60.0,
) -> None:
    """Stop (if running) and start a server."""
    from pacskit.admin.manager import ManagerError

    try:
        pid = _manager(root).restart(name, timeout=timeout)
    except ManagerError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"restarted {name} (pid {pid})")


@server_app.command("status")
def server_status(
    name: Annotated[Optional[str], typer.Argument(help="server name [all]")] = None,
    root: RootOpt = None,
    as_json: JsonOpt = False,
    as_csv: CsvOpt = False,
) -> None:
    """Whether servers run, and what their admin API says."""
    from pacskit.admin.manager import ManagerError

    fmt = output_format(as_json, as_csv)
    manager = _manager(root)
    try:
        infos = [manager.status(n) for n in ([name] if name else manager.names())]
    except ManagerError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(infos if name is None else infos[0], indent=2))
        return
    rows = []
    for info in infos:
        s = info.get("server") or {}
        rows.append(
            [
                info["name"],
                f"running (pid {info['pid']})" if info["running"] else "stopped",
                f"{s.get('host')}:{s.get('port')}" if s else "",
                s.get("associations_active", ""),
                s.get("uptime_seconds", ""),
                info.get("api_error", ""),
            ]
        )
    _table(["name", "state", "address", "associations", "uptime s", "problem"], rows, fmt)
    if name and not infos[0]["running"]:
        raise typer.Exit(3)


@server_app.command("remove")
def server_remove(
    name: Annotated[str, typer.Argument(help="server name")],
    root: RootOpt = None,
    yes: Annotated[bool, typer.Option("--yes", help="really delete the folder, its index and its stored files")] = False,
) -> None:
    """Delete a stopped server's folder with everything it stored."""
    from pacskit.admin.manager import ManagerError

    if not yes:
        raise _fail(f"this deletes server {name} and all its data; repeat with --yes", EXIT_USAGE)
    try:
        folder = _manager(root).remove(name)
    except ManagerError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"removed {folder}")


@server_app.command("edit")
def server_edit(
    name: Annotated[str, typer.Argument(help="server name")],
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", help="KEY=VALUE, e.g. port=11113, addins.storage.timeout=20")
    ] = None,
    root: RootOpt = None,
) -> None:
    """Change server.toml (validated before it is written); without --set, open it in $EDITOR."""
    from pacskit.admin.manager import ManagerError
    from pacskit.config.settings import SETTINGS_FILE, SettingsError, load_settings

    manager = _manager(root)
    try:
        folder = manager.existing(name)
        if set_:
            manager.edit(name, list(set_))
        else:
            path = folder / SETTINGS_FILE
            original = path.read_text(encoding="utf-8")
            editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
            subprocess.run([*editor.split(), str(path)], check=False)
            try:
                load_settings(folder)
            except SettingsError as exc:
                path.write_text(original, encoding="utf-8")
                raise ManagerError(f"{exc} (the previous file was restored)") from None
    except ManagerError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    running = manager.pid(folder) is not None
    typer.echo(f"saved {folder / 'server.toml'}" + ("; `pacskit reload` applies [addins.*], other keys need a restart" if running else ""))


@server_app.command("install-service")
def server_install_service(
    name: Annotated[str, typer.Argument(help="server name")],
    user: Annotated[str, typer.Option(help="system user the service runs as (not root)")] = "pacskit",
    group: Annotated[Optional[str], typer.Option(help="its group [the user name]")] = None,
    unit_dir: Annotated[str, typer.Option(help="where to write the unit")] = "/etc/systemd/system",
    root: RootOpt = None,
) -> None:
    """Write a systemd unit (pacskit-NAME.service) running the server as a non-root user, hardened."""
    from pacskit.admin.manager import ManagerError

    try:
        path = _manager(root).install_service(name, user=user, group=group, unit_dir=unit_dir)
    except (ManagerError, OSError) as exc:
        raise _fail(str(exc)) from None
    folder = _manager(root).existing(name).resolve()
    typer.echo(f"wrote {path}")
    typer.echo(
        "next, as root:\n"
        f"  useradd --system --home-dir {folder} --shell /usr/sbin/nologin {user}   # if it does not exist\n"
        f"  chown -R {user}:{group or user} {folder}\n"
        f"  systemctl daemon-reload && systemctl enable --now {path.name}"
    )


# ---------------------------------------------------------------------- a running server's admin API


def resolve_server(server: str | None, root: str | None = None) -> Path:
    """The folder of the server named by ``--server`` (see the module docstring)."""
    from pacskit.admin.manager import ManagerError
    from pacskit.config.settings import SETTINGS_FILE

    server = server or os.environ.get("PACSKIT_SERVER")
    if server:
        path = Path(server)
        if (path / SETTINGS_FILE).is_file():
            return path
        if path.suffix == ".toml" and path.is_file():
            return path.parent
        try:
            return _manager(root).existing(server)
        except ManagerError as exc:
            raise _fail(f"{server} is neither a server folder nor a server name ({exc})", EXIT_USAGE) from None
    from pacskit.admin.manager import DEFAULT_SERVER_FOLDER

    manager = _manager(root)
    candidates = [manager.existing(n) for n in manager.names()]
    default = Path(DEFAULT_SERVER_FOLDER)
    if (default / SETTINGS_FILE).is_file() and not any(c.resolve() == default.resolve() for c in candidates):
        candidates.append(default)
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise _fail(
            f"name the server with --server (a folder or a name): {len(candidates)} servers "
            f"({', '.join(str(c) for c in candidates)})",
            EXIT_USAGE,
        )
    raise _fail(
        f"no server here: ./{DEFAULT_SERVER_FOLDER} has no {SETTINGS_FILE} (start one with `pacskit serve`) and "
        f"there is no server under {manager.root}; or name one with --server FOLDER",
        EXIT_USAGE,
    )


def api(server: str | None, root: str | None = None) -> Any:
    """An httpx client on the admin API of a running server (exit 3 with one line if it does not answer)."""
    from pacskit.admin.manager import admin_client, api_reachable

    folder = resolve_server(server, root)
    if not api_reachable(folder):
        raise _fail(f"the server in {folder} is not running (or its admin API is disabled)", EXIT_CONNECTION)
    return admin_client(folder)


def check(response: Any) -> Any:
    """The JSON of a successful response, else exit 1 with the API's message."""
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise _fail(f"{detail}" if isinstance(detail, str) else json.dumps(detail))
    if response.status_code == 204 or not response.content:
        return None
    return response.json()


@app.command("status")
def status(server: ServerOpt = None, root: RootOpt = None, as_json: JsonOpt = False, as_csv: CsvOpt = False) -> None:
    """A running server's status and statistics (--csv: the operations table)."""
    fmt = output_format(as_json, as_csv)
    with api(server, root) as client:
        data = check(client.get("/status"))
        stats = check(client.get("/statistics"))
    if as_json:
        typer.echo(json.dumps({"status": data, "statistics": stats}, indent=2))
        return
    if fmt == "table":
        typer.echo(
            f"{data['ae_title']} on {data['host']}:{data['port']} (pid {data['pid']}), up {data['uptime_seconds']:.0f} s; "
            f"{data['associations_active']} associations active, {stats['associations_total']} accepted, "
            f"{stats['associations_rejected']} rejected; {stats['bytes_in']} bytes in, {stats['bytes_out']} out"
        )
    rows = []
    for name, op in stats["operations"].items():
        lat = op["latency"]
        mean = lat["sum_seconds"] / lat["count"] if lat["count"] else 0.0
        rows.append([name, op["count"], ", ".join(f"{k} {v}" for k, v in op["statuses"].items()), f"{mean * 1000:.1f}"])
    if rows or fmt == "csv":
        _table(["operation", "count", "statuses", "mean ms"], rows, fmt)


clients_app = typer.Typer(help="Associations open on a running server.", invoke_without_command=True)
app.add_typer(clients_app, name="clients")


@clients_app.callback()
def clients(
    ctx: typer.Context, server: ServerOpt = None, root: RootOpt = None, as_json: JsonOpt = False, as_csv: CsvOpt = False
) -> None:
    """List connected clients (without a sub-command)."""
    ctx.obj = {"server": server, "root": root}
    if ctx.invoked_subcommand is not None:
        return
    fmt = output_format(as_json, as_csv)
    with api(server, root) as client:
        data = check(client.get("/clients"))
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    rows = []
    for c in data:
        op = c["current_operation"]
        rows.append(
            [
                c["id"], c["calling_ae"], c["address"], c["since"], c["state"], len(c["contexts"]),
                c["bytes_in"], c["bytes_out"], c["operations"], op["service"] if op else "",
            ]
        )
    _table(["id", "calling AE", "address", "since", "state", "contexts", "bytes in", "bytes out", "ops", "now"], rows, fmt)


@clients_app.command("disconnect")
def clients_disconnect(
    ctx: typer.Context,
    client_id: Annotated[int, typer.Argument(metavar="ID", help="the id `pacskit clients` shows")],
    server: ServerOpt = None,
    root: RootOpt = None,
) -> None:
    """Abort one client's association (it receives an A-ABORT)."""
    parent = ctx.obj or {}
    with api(server or parent.get("server"), root or parent.get("root")) as client:
        check(client.delete(f"/clients/{client_id}"))
    typer.echo(f"aborted association {client_id}")


addins_app = typer.Typer(help="Add-ins of a running server.", invoke_without_command=True)
app.add_typer(addins_app, name="addins")


@addins_app.callback()
def addins(
    ctx: typer.Context, server: ServerOpt = None, root: RootOpt = None, as_json: JsonOpt = False, as_csv: CsvOpt = False
) -> None:
    """List add-ins with their options (without a sub-command)."""
    ctx.obj = {"server": server, "root": root}
    if ctx.invoked_subcommand is not None:
        return
    fmt = output_format(as_json, as_csv)
    with api(server, root) as client:
        data = check(client.get("/addins"))
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    rows = []
    for a in data:
        options = {k: v for k, v in (a.get("options") or {}).items() if not isinstance(v, list) or len(v) < 4}
        rows.append([a["name"], "loaded" if a["loaded"] else "off", json.dumps(options), a["origin"]])
    _table(["add-in", "state", "options", "from"], rows, fmt)


@addins_app.command("set")
def addins_set(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="add-in name")],
    assignments: Annotated[list[str], typer.Argument(help="OPTION=VALUE ... (VALUE read as TOML; empty resets)")],
    reload: Annotated[bool, typer.Option("--reload/--no-reload", help="apply at once")] = True,
    server: ServerOpt = None,
    root: RootOpt = None,
) -> None:
    """Change add-in options in server.toml through the API (validated), and reload."""
    from pacskit.admin.manager import ManagerError, parse_assignment

    changes: dict[str, Any] = {}
    try:
        for text in assignments:
            keys, value = parse_assignment(text)
            changes[".".join(keys)] = None if value == "" else value
    except ManagerError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    parent = ctx.obj or {}
    with api(server or parent.get("server"), root or parent.get("root")) as client:
        result = check(client.patch(f"/addins/{name}", params={"reload": reload}, json=changes))
    typer.echo(f"options of {name} saved" + ("; reloaded" if result.get("reloaded") else "; `pacskit reload` applies them"))


@app.command("reload")
def reload(server: ServerOpt = None, root: RootOpt = None) -> None:
    """Re-read server.toml and rebuild the add-ins of a running server (open associations keep working)."""
    with api(server, root) as client:
        result = check(client.post("/reload"))
    typer.echo(f"reloaded: {', '.join(result['addins'])}")
    if result["restart_needed"]:
        typer.echo(f"changed settings that need a restart: {', '.join(result['restart_needed'])}")


@app.command("events")
def events(
    server: ServerOpt = None,
    root: RootOpt = None,
    kinds: Annotated[Optional[str], typer.Option(help="comma-separated: connection,operation,error,admin")] = None,
) -> None:
    """Follow a running server's notifications (one JSON object per line) until interrupted."""
    import httpx

    with api(server, root) as client:
        try:
            with client.stream("GET", "/events", params={"kinds": kinds} if kinds else None, timeout=httpx.Timeout(30, read=None)) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        typer.echo(line[6:])
                        sys.stdout.flush()  # one event per line, as it happens, also into a pipe
        except httpx.HTTPError as exc:
            raise _fail(f"event stream ended: {exc}", EXIT_CONNECTION) from None
