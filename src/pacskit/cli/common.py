"""What every ``pacskit`` command shares: the typer ``app``, and typer's side of what
:mod:`pacskit.cli.base` declares without typer (exit codes, the server-folder and network options,
the steps of a network command), re-exported here for the command modules.

The command modules (:mod:`pacskit.cli.client`, :mod:`pacskit.cli.server`, …) import from here and
register their commands on :data:`app`; :mod:`pacskit.cli` imports them all. Nothing here imports a
command module, so the package has no import cycle. The exit codes are listed in :mod:`pacskit.cli.base`.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from pacskit.cli.base import (
    EXIT_ABORTED,
    EXIT_CONNECTION,
    EXIT_FAILURE_STATUS,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Arg,
    NetOptions,
    Opt,
    fail,
    net_command,
    net_error_exit,
    resolve_target,
    run,
    say,
    scu_options,
    server_settings,
    setup_logging,
)
from pacskit.cli import base as _base

if TYPE_CHECKING:
    from pacskit.config.settings import ServerSettings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="pacskit: an extensible, fast PACS framework.")


def typer_declaration(declaration: Opt | Arg) -> Any:
    """typer's ``Option`` / ``Argument`` for a declaration of :mod:`pacskit.cli.base`."""
    if isinstance(declaration, Arg):
        return typer.Argument(help=declaration.help)
    return typer.Option(*declaration.names, help=declaration.help, count=declaration.count, min=declaration.min,
                        max=declaration.max, metavar=declaration.metavar)


def typer_annotation(annotation: Any) -> Any:
    """``Annotated[T, Opt(...)]`` as ``Annotated[T, typer.Option(...)]`` (anything else as it is)."""
    if typing.get_origin(annotation) is not Annotated:
        return annotation
    base, *extras = typing.get_args(annotation)
    if not any(isinstance(e, (Opt, Arg)) for e in extras):
        return annotation
    converted = tuple(typer_declaration(e) if isinstance(e, (Opt, Arg)) else e for e in extras)
    return Annotated[(base, *converted)]  # type: ignore[return-value]


F = TypeVar("F", bound=Callable[..., Any])


def typer_signature(func: F) -> F:
    """A wrapper of ``func`` whose signature has typer's declarations in place of :class:`Opt` /
    :class:`Arg` (``func`` itself keeps them: the lean path reads those)."""
    signature = inspect.signature(func)
    hints = typing.get_type_hints(func, include_extras=True)
    params = [p.replace(annotation=typer_annotation(hints.get(p.name, p.annotation))) for p in signature.parameters.values()]

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params} | {"return": hints.get("return")}
    return command  # type: ignore[return-value]


def network_options(*, timeout: float = 30.0) -> Callable[[F], F]:
    """:func:`pacskit.cli.base.net_command` for a typer command: the network options as one
    ``net: NetOptions`` parameter, declared for typer. ``timeout`` is the command's default
    ``--timeout``. Use below ``@app.command()``."""

    def decorate(func: F) -> F:
        return typer_signature(net_command(timeout=timeout)(func))

    return decorate


def parse_address(text: str) -> tuple[str, str, int]:
    """Parse dcm4che's ``AET@host:port`` form; raises ``typer.BadParameter`` with the expected form."""
    from pacskit.client.remote import parse_address as parse

    try:
        return parse(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def one_line(exc: BaseException) -> str:
    """An exception as one line for the operator: a pydantic ``ValidationError`` as
    ``field: problem; field: problem`` (its own text spans lines and links to pydantic's docs)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(value)'}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
    return " ".join(str(exc).split())


def existing_server_settings(config: str | None, data_dir: str | None, *, create: bool = False) -> ServerSettings:
    """Settings of a server folder that must already exist, for every command that reads or repairs
    one (``check``, ``reindex``, ``log``, ``ae list|remove``, ``worklist list|update|remove``): a
    mistyped ``--data-dir`` gets one line and exit code 2, never a new empty folder reported as clean.
    ``create``: the command adds to the folder (``ae add``, ``worklist add|import``) and may create it,
    as ``serve`` does."""
    settings = server_settings(config, data_dir)
    if create:
        settings.data_path.mkdir(parents=True, exist_ok=True)
    for what, path in (("server folder", settings.folder), ("data folder", settings.data_path)):
        if not path.is_dir():
            raise fail(f"{what} {path} does not exist (see --data-dir / --config)", EXIT_USAGE)
    return settings


# The server-folder options, as typer declares them for the commands that take them one by one.
ConfigOpt = typer_annotation(_base.ConfigOpt)
DataDirOpt = typer_annotation(_base.DataDirOpt)
VerboseOpt = typer_annotation(_base.VerboseOpt)

__all__ = [
    "EXIT_ABORTED", "EXIT_CONNECTION", "EXIT_FAILURE_STATUS", "EXIT_OK", "EXIT_REJECTED", "EXIT_TIMEOUT", "EXIT_USAGE",
    "ConfigOpt", "DataDirOpt", "NetOptions", "VerboseOpt", "app", "existing_server_settings", "fail", "net_error_exit",
    "network_options", "one_line", "parse_address", "resolve_target", "run", "say", "scu_options", "server_settings",
    "setup_logging", "typer_annotation", "typer_declaration", "typer_signature",
]
