"""What the ``pacskit`` commands share at run time, without typer: exit codes, output, the network
options (declared here once), and the steps of a command that talks to a peer.

Why a module without typer: ``pacskit echo`` and ``pacskit store`` run through
:mod:`pacskit.cli.lean`, which parses their arguments itself; importing typer alone (its vendored
click, its completion and coercion modules) costs about as much CPU as the whole C-ECHO, and a
script that sends files one ``pacskit store`` at a time pays it every time. So the parameters of
those commands are declared with :class:`Opt` and :class:`Arg` (plain data), which
:mod:`pacskit.cli.common` turns into typer's declarations when it builds the whole command line
(:func:`pacskit.cli.common.typer_signature`): one declaration, read by both.

A command here ends with ``raise SystemExit(code)`` (or :func:`fail`'s), which typer lets through and
the lean path turns into the exit code.

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

import functools
import inspect
import sys
import typing
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, TypeVar

if TYPE_CHECKING:
    from pacskit.config.settings import ServerSettings
    from pacskit.net import NetError

EXIT_OK = 0
EXIT_FAILURE_STATUS = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3
EXIT_REJECTED = 4
EXIT_TIMEOUT = 5
EXIT_ABORTED = 6


# ---------------------------------------------------------------------- declarations


@dataclass(frozen=True, slots=True)
class Opt:
    """An option of a command: what ``typer.Option`` would say, as plain data.

    ``names``: the option's names (none: ``--<parameter-name>``); ``count``: an int counting the
    repeats of a flag (``-vv``); ``min`` / ``max``: bounds of a number; ``metavar``: the value's name
    in ``--help``."""

    names: tuple[str, ...] = ()
    help: str = ""
    count: bool = False
    min: float | None = None
    max: float | None = None
    metavar: str | None = None


@dataclass(frozen=True, slots=True)
class Arg:
    """A positional argument of a command (what ``typer.Argument`` would say)."""

    help: str = ""


ConfigOpt = Annotated[Optional[str], Opt(("--config",), "server.toml (or the server folder holding it)")]
DataDirOpt = Annotated[Optional[str], Opt(("--data-dir",), "server folder: settings, index and files [./pacs-data]")]
CallingOpt = Annotated[str, Opt(("--calling", "-aet"), "our calling AE title")]
TimeoutOpt = Annotated[float, Opt(help="ACSE and DIMSE timeout in seconds")]
VerboseOpt = Annotated[int, Opt(("--verbose", "-v"), "more logging: -v INFO, -vv DEBUG (a flag, repeated)", count=True, metavar="")]
TlsCaOpt = Annotated[Optional[Path], Opt(("--tls-ca",), "TLS: verify the peer with this CA file (turns TLS on)")]
TlsCertOpt = Annotated[Optional[Path], Opt(("--tls-cert",), "TLS: our certificate (PEM), with --tls-key")]
TlsKeyOpt = Annotated[Optional[Path], Opt(("--tls-key",), "TLS: our private key (PEM)")]
TlsNameOpt = Annotated[Optional[str], Opt(("--tls-name",), "TLS: the name the peer's certificate must carry [its host]")]
TlsOpt = Annotated[bool, Opt(("--tls",), "use TLS (verified with --tls-ca, else the system's CAs); implied by the other --tls-* options")]
TlsProfileOpt = Annotated[str, Opt(("--tls-profile",), "TLS: PS3.15 profile (bcp195-nd, bcp195, bcp195-rfc8996, bcp195-ex, aes, basic)")]


@dataclass(frozen=True, slots=True)
class NetOptions:
    """The options of every command that talks to a peer (see :func:`net_command`)."""

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


def net_command(*, timeout: float = 30.0) -> Callable[[F], F]:
    """Give a command the network options (``--calling``, ``--timeout``, ``-v``, ``--data-dir``,
    ``--config``, the ``--tls*`` options), declared here once, as one ``net: NetOptions`` parameter.
    ``timeout`` is the command's default ``--timeout``. The command's signature then lists them as
    keyword parameters (what typer and the lean path read)."""

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


# ---------------------------------------------------------------------- output and exits


def say(message: str, *, err: bool = False) -> None:
    """One line to stdout (or stderr), flushed at once, as ``typer.echo`` writes it: the two streams
    keep their order in a log that captures both."""
    stream = sys.stderr if err else sys.stdout
    stream.write(message + "\n")
    stream.flush()


def fail(message: str, code: int) -> SystemExit:
    """Print ``error: message`` on stderr and return the exit to raise (``raise fail(...)``)."""
    say(f"error: {message}", err=True)
    return SystemExit(code)


def net_error_exit(exc: NetError) -> int:
    """Print one clear line for a network failure and return the matching exit code."""
    from pacskit.net import AssociationAborted, AssociationRejected, ConnectionFailed, NetTimeout

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
    say(f"error: {exc}", err=True)
    return code


def setup_logging(verbose: int) -> None:
    import logging

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ---------------------------------------------------------------------- the steps of a network command


def server_settings(config: str | None, data_dir: str | None, **overrides: object) -> ServerSettings:
    """Settings from ``--config`` (a server.toml or its folder) or ``--data-dir``, then CLI flags."""
    from pacskit.config.settings import SettingsError, load_settings

    if config is not None:
        path = Path(config)
        folder = path.parent if path.suffix == ".toml" else path
        if path.suffix == ".toml" and not path.exists():
            raise fail(f"settings file {path} does not exist", EXIT_USAGE)
    else:
        folder = Path(data_dir or "./pacs-data")
    if data_dir is not None and config is not None:
        overrides["data_dir"] = str(Path(data_dir).resolve())
    try:
        return load_settings(folder, {k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        raise fail(str(exc), EXIT_USAGE) from None


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
    import asyncio

    from pacskit.net import NetError

    try:
        return asyncio.run(coro)
    except NetError as exc:
        raise SystemExit(net_error_exit(exc)) from None
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
