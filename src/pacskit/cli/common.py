"""What every ``pacskit`` command shares: the typer ``app``, the exit codes, the server-folder options,
and the network options of the commands that talk to a peer, declared once (:func:`network_options`).

The command modules (:mod:`pacskit.cli.client`, :mod:`pacskit.cli.server`, …) import from here and
register their commands on :data:`app`; :mod:`pacskit.cli` imports them all. Nothing here imports a
command module, so the package has no import cycle.

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

import asyncio
import functools
import inspect
import typing
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, fields
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, TypeVar

import typer

from pacskit.net import (
    AssociationAborted,
    AssociationRejected,
    ConnectionFailed,
    NetError,
    NetTimeout,
)

if TYPE_CHECKING:
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


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def server_settings(config: str | None, data_dir: str | None, **overrides: object) -> ServerSettings:
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
            typer.echo(f"error: {what} {path} does not exist (see --data-dir / --config)", err=True)
            raise typer.Exit(EXIT_USAGE)
    return settings


ConfigOpt = Annotated[
    Optional[str], typer.Option("--config", help="server.toml (or the server folder holding it)")
]
DataDirOpt = Annotated[
    Optional[str], typer.Option("--data-dir", help="server folder: settings, index and files [./pacs-data]")
]


# ---------------------------------------------------------------------- the network options, declared once

CallingOpt = Annotated[str, typer.Option("--calling", "-aet", help="our calling AE title")]
TimeoutOpt = Annotated[float, typer.Option(help="ACSE and DIMSE timeout in seconds")]
VerboseOpt = Annotated[
    int, typer.Option("--verbose", "-v", count=True, metavar="", help="more logging: -v INFO, -vv DEBUG (a flag, repeated)")
]
TlsCaOpt = Annotated[Optional[Path], typer.Option("--tls-ca", help="TLS: verify the peer with this CA file (turns TLS on)")]
TlsCertOpt = Annotated[Optional[Path], typer.Option("--tls-cert", help="TLS: our certificate (PEM), with --tls-key")]
TlsKeyOpt = Annotated[Optional[Path], typer.Option("--tls-key", help="TLS: our private key (PEM)")]
TlsNameOpt = Annotated[Optional[str], typer.Option("--tls-name", help="TLS: the name the peer's certificate must carry [its host]")]
TlsOpt = Annotated[bool, typer.Option("--tls", help="use TLS (verified with --tls-ca, else the system's CAs); implied by the other --tls-* options")]
TlsProfileOpt = Annotated[str, typer.Option("--tls-profile", help="TLS: PS3.15 profile (bcp195-nd, bcp195, bcp195-rfc8996, bcp195-ex, aes, basic)")]


@dataclass(frozen=True, slots=True)
class NetOptions:
    """The options of every command that talks to a peer (see :func:`network_options`)."""

    calling: str = "PACSKIT"
    timeout: float = 30.0
    verbose: int = 0
    data_dir: str | None = None
    config: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_name: str | None = None
    tls: bool = False
    tls_profile: str = "bcp195-nd"


_NET_ANNOTATIONS: dict[str, Any] = {
    "calling": CallingOpt, "timeout": TimeoutOpt, "verbose": VerboseOpt, "data_dir": DataDirOpt,
    "config": ConfigOpt, "tls_ca": TlsCaOpt, "tls_cert": TlsCertOpt, "tls_key": TlsKeyOpt, "tls_name": TlsNameOpt,
    "tls": TlsOpt, "tls_profile": TlsProfileOpt,
}

F = TypeVar("F", bound=Callable[..., Any])


def network_options(*, timeout: float = 30.0) -> Callable[[F], F]:
    """Give a command the network options (``--calling``, ``--timeout``, ``-v``, ``--data-dir``,
    ``--config``, the ``--tls*`` options), declared here once, as one ``net: NetOptions`` parameter.
    ``timeout`` is the command's default ``--timeout``. Use below ``@app.command()``."""

    def decorate(func: F) -> F:
        signature = inspect.signature(func)
        hints = typing.get_type_hints(func, include_extras=True)
        own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()
               if p.name != "net"]
        defaults = {f.name: f.default for f in fields(NetOptions)} | {"timeout": timeout}
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=defaults[name], annotation=annotation)
                 for name, annotation in _NET_ANNOTATIONS.items()]

        @functools.wraps(func)
        def command(*args: Any, **kwargs: Any) -> Any:
            options = NetOptions(**{name: kwargs.pop(name) for name in _NET_ANNOTATIONS})
            return func(*args, net=options, **kwargs)

        params = own + added
        command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params} | {"return": hints.get("return")}
        return command  # type: ignore[return-value]

    return decorate


def fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def resolve_target(target: str, net: NetOptions) -> Any:
    """The :class:`RemoteAE` for ``target``; unknown names and bad addresses exit with 2."""
    from pacskit.client import UnknownRemote, resolve_remote

    registry = None
    if "@" not in target:
        from pacskit.config.aetitles import AE_FILE, FileAeRegistry

        registry = FileAeRegistry(server_settings(net.config, net.data_dir).folder / AE_FILE)
    try:
        return resolve_remote(target, registry)
    except (UnknownRemote, ValueError) as exc:
        raise fail(str(exc), EXIT_USAGE) from None


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``; engine errors become their exit code with one clear line."""
    try:
        return asyncio.run(coro)
    except NetError as exc:
        raise typer.Exit(net_error_exit(exc)) from None
    except ValueError as exc:
        # imported only here: pacskit.client.keys needs pydicom, which `pacskit store` never loads
        from pacskit.client.keys import KeyError_

        if isinstance(exc, KeyError_):
            raise fail(str(exc), EXIT_USAGE) from None
        raise


def scu_options(remote: Any, net: NetOptions) -> dict[str, Any]:
    """Keyword arguments every SCU takes: identity, timeouts and TLS (on with --tls or any --tls-*
    option, or when the registry marks the AE ``tls``; without --tls-ca the system's CA store verifies
    the peer), in the PS3.15 profile ``--tls-profile``."""
    from pacskit.net import NetConfig

    options: dict[str, Any] = {"calling_ae": net.calling, "config": NetConfig(acse_timeout=net.timeout, dimse_timeout=net.timeout)}
    if not net.tls and net.tls_ca is None and net.tls_cert is None and not remote.tls:
        return options
    from pacskit.net.tls import TlsConfigError, client_context

    try:
        context = client_context(profile=net.tls_profile, ca_file=net.tls_ca, certificate=net.tls_cert,
                                 private_key=net.tls_key)
    except TlsConfigError as exc:
        raise fail(f"TLS set-up failed: {exc}", EXIT_USAGE) from None
    options.update(ssl=context, server_hostname=net.tls_name)
    return options
