"""``pacskit echo`` and ``pacskit store``: the commands that run without typer (see :mod:`pacskit.cli.lean`).

Their parameters are declared with :class:`~pacskit.cli.base.Opt` / :class:`~pacskit.cli.base.Arg`:
:mod:`pacskit.cli.lean` parses them as they are, and :mod:`pacskit.cli.client` registers the same
functions on the typer app (:func:`pacskit.cli.common.typer_signature`). Nothing here imports typer,
rich (only for a progress bar on a terminal) or pydicom.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Annotated, Any

from pacskit.cli.base import (
    EXIT_FAILURE_STATUS,
    EXIT_OK,
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
    setup_logging,
)

__all__ = ["QuietOpt", "TargetArg", "echo", "progress", "store"]

TargetArg = Annotated[str, Arg("the peer: AET@host:port, an AE title from the registry, or http(s)://host:port/dicom-web")]
QuietOpt = Annotated[bool, Opt(("--quiet", "-q"), "no progress bar")]


class _NoProgress:
    """What :func:`progress` gives when no bar is shown: the same calls, doing nothing."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: float | None = None) -> int:
        return 0

    def update(self, task: int, **fields: Any) -> None:
        return None


# The environment variables with which rich treats a pipe as a terminal (rich.console.Console.is_terminal).
_RICH_TERMINAL_ENV = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")


def progress(quiet: bool) -> Any:
    """A rich progress bar on stderr, only on a terminal and not with --quiet. Without a bar rich is
    not imported at all (~0.05 s of every `pacskit store` in a script)."""
    isatty = getattr(sys.stderr, "isatty", None)
    if quiet or not ((isatty is not None and isatty()) or any(os.environ.get(k) for k in _RICH_TERMINAL_ENV)):
        return _NoProgress()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, disable=not console.is_terminal, transient=False,
    )


# ---------------------------------------------------------------------- store


@net_command(timeout=30.0)
def store(
    target: TargetArg,
    paths: Annotated[list[Path], Arg("files and folders (recursive)")],
    associations: Annotated[int, Opt(("--associations", "-n"), "parallel associations")] = 1,
    quiet: QuietOpt = False,
    *,
    net: NetOptions,
) -> None:
    """C-STORE files and folders to a peer (STOW-RS to an http(s)://.../dicom-web peer). Exit 1 if any
    instance failed (warnings are not failures)."""
    from pacskit.client import StoreScu
    from pacskit.client.remote import is_dicomweb_url

    setup_logging(net.verbose)
    if is_dicomweb_url(target):
        from pacskit.cli.dicomweb import web_store

        return web_store(target, paths, net.tls_ca, net.timeout)
    for path in paths:
        if not os.path.exists(path):
            raise fail(f"{path} does not exist", EXIT_USAGE)
    remote = resolve_target(target, net)
    scu = StoreScu(remote, associations=associations, **scu_options(remote, net))

    async def go() -> Any:
        with progress(quiet) as bar:
            task = bar.add_task("storing", total=None)
            scu.on("progress", lambda p: bar.update(task, completed=p.done, total=p.total))
            return await scu.store(paths)

    report = run(go())
    for path, reason in report.skipped:
        say(f"skipped {path}: {reason}", err=True)
    for result in report.failed:
        say(f"failed {result.describe()}", err=True)
    for result in report.warnings:
        say(f"warning {result.describe()}", err=True)
    say(f"C-STORE to {remote.title}: {report.summary()}")
    if report.error is not None:
        raise SystemExit(net_error_exit(report.error))
    raise SystemExit(EXIT_FAILURE_STATUS if report.failed else EXIT_OK)


# ---------------------------------------------------------------------- echo


async def _echo_when_listening(scu: Any, repeat: int, wait: float) -> int:
    """``scu.echo(repeat)``; while the connection is refused, try again until ``wait`` seconds passed.

    ``./run serve &`` returns at once, and the server listens only after ``.venv`` is built and the
    add-ins are loaded: ``echo --wait 120`` is how a script waits for it to be ready."""
    from pacskit.net import ConnectionFailed

    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    delay = 0.05
    while True:
        try:
            return await scu.echo(repeat)
        except ConnectionFailed:
            if loop.time() + delay > deadline:
                raise
        await asyncio.sleep(delay)  # polling a port that is not open yet: nothing to wait on
        delay = min(delay * 2, 0.5)


@net_command(timeout=30.0)
def echo(
    target: TargetArg,
    repeat: Annotated[int, Opt(help="C-ECHOs to send on the association")] = 1,
    wait: Annotated[
        float,
        Opt(("--wait",), "retry for up to this long while the connection is refused (a server still starting)",
            metavar="SECONDS", min=0),
    ] = 0.0,
    *,
    net: NetOptions,
) -> None:
    """Send C-ECHO (Verification) to a peer and report the outcome."""
    from pacskit.client import EchoScu

    setup_logging(net.verbose)
    remote = resolve_target(target, net)
    scu = EchoScu(remote, **scu_options(remote, net))
    status = run(_echo_when_listening(scu, repeat, wait))
    if status:
        raise fail(f"C-ECHO to {target} answered status 0x{status:04X}", EXIT_FAILURE_STATUS)
    say(f"C-ECHO to {target}: Success")
