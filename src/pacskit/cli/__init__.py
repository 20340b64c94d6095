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

import asyncio
import logging
import sys
from typing import Annotated

import typer

from pacskit.net import (
    AssociationAborted,
    AssociationRejected,
    ConnectionFailed,
    NetConfig,
    NetError,
    NetTimeout,
    RequestedContext,
    VERIFICATION_SOP_CLASS,
    connect,
)

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
    ae, sep, rest = text.partition("@")
    host, colon, port_text = rest.rpartition(":")
    if not sep or not colon or not ae or not host:
        raise typer.BadParameter(f"{text!r} is not AET@host:port")
    if len(ae) > 16:
        raise typer.BadParameter(f"AE title {ae!r} is longer than 16 characters")
    try:
        port = int(port_text)
    except ValueError:
        raise typer.BadParameter(f"port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise typer.BadParameter(f"port {port} is out of range")
    return ae, host.strip("[]"), port


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


@app.command()
def echo(
    target: Annotated[str, typer.Argument(help="the peer as AET@host:port")],
    calling: Annotated[str, typer.Option("--calling", "-aet", help="our calling AE title")] = "PACSKIT",
    timeout: Annotated[float, typer.Option(help="ACSE and DIMSE timeout in seconds")] = 30.0,
    repeat: Annotated[int, typer.Option(help="C-ECHOs to send on the association")] = 1,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="more logging")] = 0,
) -> None:
    """Send C-ECHO (Verification) to a peer and report the outcome."""
    _setup_logging(verbose)
    try:
        called, host, port = parse_address(target)
    except typer.BadParameter as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    config = NetConfig(acse_timeout=timeout, dimse_timeout=timeout)

    async def run() -> int:
        assoc = await connect(
            host,
            port,
            called_ae=called,
            calling_ae=calling,
            contexts=[RequestedContext(VERIFICATION_SOP_CLASS)],
            config=config,
        )
        async with assoc:
            worst = 0
            for _ in range(repeat):
                status = await assoc.echo()
                worst = status if status else worst
            return worst

    try:
        status = asyncio.run(run())
    except NetError as exc:
        raise typer.Exit(net_error_exit(exc)) from None
    if status:
        typer.echo(f"C-ECHO to {target} answered status 0x{status:04X}", err=True)
        raise typer.Exit(EXIT_FAILURE_STATUS)
    typer.echo(f"C-ECHO to {target}: Success")


@app.command()
def serve(
    ae: Annotated[str, typer.Option("--ae", help="our AE title")] = "PACSKIT",
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 11112,
    data_dir: Annotated[str, typer.Option("--data-dir", help="where received instances are kept")] = "./pacs-data",
    max_associations: Annotated[int, typer.Option(help="simultaneous associations")] = 100,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True)] = 1,
) -> None:
    """Run the PACS: Verification and Storage SCP, keeping received instances durably in DATA_DIR."""
    from pacskit.cli.serve import run_server

    _setup_logging(verbose)
    raise typer.Exit(run_server(ae=ae, host=host, port=port, data_dir=data_dir, max_associations=max_associations))


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interactive
        sys.exit(130)
