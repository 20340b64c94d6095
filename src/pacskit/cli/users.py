"""``pacskit users add|passwd|remove|list``: the web workstation's users (``users.toml`` in the server
folder, scrypt hashes; see docs/security.md). A running server sees the change at the next login."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from pacskit.cli.common import EXIT_USAGE, ConfigOpt, DataDirOpt, app, existing_server_settings
from pacskit.cli.output import CsvOpt, JsonOpt, output_format

if TYPE_CHECKING:
    from pacskit.addins.workstation.users import UserFile

users_app = typer.Typer(help="Users of the web workstation (users.toml in the server folder).", no_args_is_help=True)
app.add_typer(users_app, name="users")

PasswordStdinOpt = Annotated[bool, typer.Option("--password-stdin", help="read the password from the first line of stdin")]


def _user_file(config: str | None, data_dir: str | None) -> UserFile:
    from pacskit.addins.workstation.users import USERS_FILE, UserFile

    settings = existing_server_settings(config, data_dir, create=True)
    section = settings.addin_section("workstation")
    return UserFile(settings.folder_path(str(section.get("users_file") or USERS_FILE)))


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(typer.prompt("password", hide_input=True, confirmation_prompt=True))


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(EXIT_USAGE)


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="user name")],
    role: Annotated[str, typer.Option(help="viewer, operator or admin")] = "viewer",
    password_stdin: PasswordStdinOpt = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Add a user (asks for the password twice, or reads it with --password-stdin)."""
    from pacskit.addins.workstation.users import UserError, check_username, role_rank

    users = _user_file(config, data_dir)
    try:
        check_username(name)
        role_rank(role)
        if users.get(name) is not None:
            raise UserError(f"user {name!r} exists (pacskit users passwd / --role to change)")
        user = users.add(name, _password(password_stdin), role)
    except UserError as exc:
        raise _fail(exc) from None
    typer.echo(f"added {user.name} ({user.role}) to {users.path}")


@users_app.command("passwd")
def users_passwd(
    name: Annotated[str, typer.Argument(help="user name")],
    role: Annotated[Optional[str], typer.Option(help="also change the role")] = None,
    password_stdin: PasswordStdinOpt = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Change a user's password (and role)."""
    from pacskit.addins.workstation.users import UserError

    users = _user_file(config, data_dir)
    try:
        if users.get(name) is None:
            raise UserError(f"no user {name!r}")
        user = users.update(name, password=_password(password_stdin), role=role)
    except UserError as exc:
        raise _fail(exc) from None
    typer.echo(f"changed {user.name} ({user.role})")


@users_app.command("remove")
def users_remove(
    name: Annotated[str, typer.Argument(help="user name")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Remove a user."""
    from pacskit.addins.workstation.users import UserError

    try:
        _user_file(config, data_dir).remove(name)
    except UserError as exc:
        raise _fail(exc) from None
    typer.echo(f"removed {name}")


@users_app.command("list")
def users_list(data_dir: DataDirOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False,
               as_csv: CsvOpt = False) -> None:
    """The users and their roles."""
    import json

    from pacskit.addins.workstation.users import UserError

    fmt = output_format(as_json, as_csv)
    try:
        users = _user_file(config, data_dir).list()
    except UserError as exc:
        raise _fail(exc) from None
    if fmt == "json":
        typer.echo(json.dumps([u.public() for u in users], indent=2))
        return
    if fmt == "csv":
        typer.echo("username,role")
        for u in users:
            typer.echo(f"{u.name},{u.role}")
        return
    for u in users:
        typer.echo(f"{u.name:<24} {u.role}")
