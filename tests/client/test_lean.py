"""The client commands' start-up: what ``pacskit echo`` / ``pacskit store`` import, and the lean path
(:mod:`pacskit.cli.lean`) that runs them without building the typer app, checked against typer's own
parse of the same arguments and against a real DCMTK storescp."""

from __future__ import annotations

import inspect
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from pacskit.cli import app
from pacskit.cli import scu as cli_client
from pacskit.cli.lean import LEAN_COMMANDS, _params, lean_parse
from pacskit.testing import make_series, storescp

from ._peers import tool
from .conftest import address

#: Packages a client command to a peer given as AET@host:port must not import: the certificate
#: authority's, the store's, the admin API's and DICOMweb's stacks, the AE registry's models (typer's
#: argument conversion would import pydantic too), datasets, progress bars, and typer itself (its
#: import alone costs about as much as the C-ECHO).
HEAVY = ("cryptography", "sqlalchemy", "fastapi", "uvicorn", "httpx", "pydantic", "pydicom", "numpy", "rich", "typer")

PROBE = f"""
import sys
sys.argv = ["pacskit", *sys.argv[1:]]
from pacskit.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
print("MODULES", ",".join(heavy), "typer-app" if "pacskit.cli.commands" in sys.modules else "lean", code, file=sys.stderr)
"""


def probe(*args: object) -> tuple[list[str], str, int, str]:
    """Run ``pacskit ARGS`` in a fresh interpreter: (heavy packages imported, which path ran, exit code, output)."""
    proc = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    line = [s for s in proc.stderr.splitlines() if s.startswith("MODULES ")]
    assert line, proc.stdout + proc.stderr
    _, heavy, path, code = line[-1].split(" ")
    return [h for h in heavy.split(",") if h], path, int(code), proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def scp(tmp_path_factory: pytest.TempPathFactory):
    tool("storescp")
    with storescp(tmp_path_factory.mktemp("lean-out")) as peer:
        yield peer


# ---------------------------------------------------------------------- what a run imports


def test_echo_imports_only_what_it_uses(scp) -> None:
    heavy, path, code, output = probe("echo", address(scp))
    assert code == 0 and "Success" in output, output
    assert heavy == [], f"pacskit echo imported {heavy}"
    assert path == "lean"


def test_store_imports_only_what_it_uses(scp, tmp_path: Path) -> None:
    """With or without --quiet (stderr is not a terminal: no progress bar, so no rich)."""
    files = make_series(tmp_path / "in", 3)
    for quiet in (["-q"], []):
        heavy, path, code, output = probe("store", *quiet, address(scp), *files)
        assert code == 0 and "3 succeeded" in output, output
        assert heavy == [], f"pacskit store {' '.join(quiet)} imported {heavy}"
        assert path == "lean"


def test_help_and_the_whole_cli_load_no_server_stack() -> None:
    """``--help`` goes to typer (the whole command line), which still loads no certificate, store,
    admin API or DICOMweb stack."""
    for args in (["echo", "--help"], ["--help"]):
        heavy, path, code, output = probe(*args)
        assert code == 0 and "Usage" in output, output
        assert not set(heavy) & {"cryptography", "sqlalchemy", "fastapi", "uvicorn", "httpx"}, heavy
        assert path == "typer-app"


# ---------------------------------------------------------------------- the lean path is typer's parse


def _typer_command(name: str):
    return typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(LEAN_COMMANDS))
def test_the_lean_path_reads_the_commands_declarations(name: str) -> None:
    """Same function as typer runs, same parameters in the same order, same option names and defaults:
    a declaration the lean path misreads (or a new kind of option) fails here, not in a user's script."""
    command = _typer_command(name)
    func = getattr(cli_client, LEAN_COMMANDS[name])
    assert command.callback is not None and inspect.unwrap(command.callback) is inspect.unwrap(func)
    params = _params(func)
    assert [p.name for p in params] == [p.name for p in command.params]
    for ours, theirs in zip(params, command.params):
        if ours.argument:
            assert theirs.param_type_name == "argument"
            assert (theirs.nargs == -1) == ours.many
        else:
            assert set(ours.names) == set(theirs.opts) | set(theirs.secondary_opts), ours.name
            assert ours.count == bool(getattr(theirs, "count", False))
            assert ours.flag == bool(getattr(theirs, "is_flag", False))
            assert ours.default == theirs.default, ours.name


def _typer_parse(name: str, argv: list[str]) -> dict[str, object] | None:
    """The arguments typer passes to the command for ``argv``, or None when it is a usage error."""
    command = _typer_command(name)
    try:
        ctx = command.make_context(name, list(argv))
    except typer.Exit:
        return None
    except Exception as exc:  # click's UsageError / BadParameter
        if type(exc).__name__ in ("UsageError", "BadParameter", "NoSuchOption", "MissingParameter", "BadOptionUsage"):
            return None
        raise
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in ctx.params.items()}


PLAIN = {
    "echo": [
        ["PACS@127.0.0.1:104"],
        ["PACS@127.0.0.1:104", "--repeat", "3", "--wait=2.5", "-aet", "ME", "--timeout", "7"],
        ["-vv", "--calling=ME", "PACS@[::1]:104", "--tls", "--tls-ca", "ca.pem", "--tls-name", "pacs.lab"],
        ["--verbose", "-v", "ORTHANC", "--data-dir", "srv", "--config", "srv/server.toml", "--tls-profile", "bcp195"],
        ["--", "PACS@h:1"],
        ["PACS@h:1", "--tls-cert", "me.pem", "--tls-key", "me.key", "--wait", "0"],
    ],
    "store": [
        ["PACS@127.0.0.1:104", "a.dcm"],
        ["-q", "PACS@127.0.0.1:104", "a.dcm", "dir", "b.dcm", "-n", "4"],
        ["PACS@h:1", "a.dcm", "--associations=2", "--quiet", "-vq", "--timeout=1.5"],
        ["PACS@h:1", "--", "-odd.dcm", "b.dcm"],
        ["-", "a"],
    ],
}

#: Forms the lean path leaves to typer on purpose (typer accepts them, or explains the error).
LEFT_TO_TYPER = {
    "echo": [
        [], ["--help"], ["PACS@h:1", "--help"], ["PACS@h:1", "--repeat"], ["PACS@h:1", "--repeat", "x"],
        ["PACS@h:1", "--repeat", "1", "--repeat", "2"], ["PACS@h:1", "--wait", "-1"], ["PACS@h:1", "--wait", "1e3"],
        ["PACS@h:1", "--nope"], ["PACS@h:1", "extra"], ["PACS@h:1", "-x"], ["PACS@h:1", "--tls=yes"],
        ["PACS@h:1", "--calling", "-v"], ["PACS@h:1", "-aetME"], ["PACS@h:1", "--tls-ca", ""],
    ],
    "store": [["PACS@h:1"], ["PACS@h:1", "a", "-n4"], ["PACS@h:1", "a", "-qn", "2"], ["PACS@h:1", "a", "-n", "+2"]],
}


@pytest.mark.parametrize("name", sorted(LEAN_COMMANDS))
def test_the_lean_parse_is_typers(name: str) -> None:
    func = getattr(cli_client, LEAN_COMMANDS[name])
    for argv in PLAIN[name]:
        ours = lean_parse(func, argv)
        assert ours is not None, f"the lean path does not take {argv}"
        assert ours == _typer_parse(name, argv), argv
    for argv in LEFT_TO_TYPER[name]:
        assert lean_parse(func, argv) is None, argv


# ---------------------------------------------------------------------- end to end, as a user runs it


def test_lean_store_and_echo_against_storescp(tmp_path: Path) -> None:
    """``python -m pacskit`` (the console script's main): files arrive, failures keep their exit codes
    and messages, and a usage error is typer's."""
    tool("storescp")
    make_series(tmp_path / "in", 4)
    run = lambda *a: subprocess.run([sys.executable, "-m", "pacskit", *map(str, a)], capture_output=True,  # noqa: E731
                                    text=True, timeout=120, stdin=subprocess.DEVNULL)
    with storescp(tmp_path / "out") as peer:
        stored = run("store", address(peer), tmp_path / "in", "-n", "2", "--calling", "LEANSCU")
        assert stored.returncode == 0 and "4 succeeded" in stored.stdout, stored.stdout + stored.stderr
        echoed = run("echo", address(peer), "--repeat", "2")
        assert echoed.returncode == 0 and "Success" in echoed.stdout
    received = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert len(received) == 4
    missing = run("store", "X@127.0.0.1:104", tmp_path / "missing.dcm")
    assert missing.returncode == 2 and "missing.dcm does not exist" in missing.stderr
    with socket.socket() as closed:  # bound, not listening: the connection is refused
        closed.bind(("127.0.0.1", 0))
        refused = run("echo", f"X@127.0.0.1:{closed.getsockname()[1]}")
    assert refused.returncode == 3 and "refused" in refused.stderr
    bad = run("echo", "X@h:1", "--repeat", "many")
    assert bad.returncode == 2 and "--repeat" in bad.stderr and "Usage" in bad.stderr


def test_the_lean_path_is_not_taken_when_completing() -> None:
    env = {**os.environ, "_PACSKIT_COMPLETE": "bash_complete"}
    code = "from pacskit.cli.lean import run_lean; print(run_lean(['echo', 'X@h:1']))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"


def test_the_command_runs_with_the_garbage_collector_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() turns the collector off while the modules load; the command itself runs with it on."""
    import functools
    import gc

    from pacskit.cli.lean import run_lean

    seen: list[bool] = []
    original = cli_client.echo

    @functools.wraps(original)
    def command(**kwargs: object) -> None:
        seen.append(gc.isenabled())

    monkeypatch.setattr(cli_client, "echo", command)
    gc.disable()
    try:
        assert run_lean(["echo", "X@h:1"]) == 0
    finally:
        gc.unfreeze()
        gc.enable()
    assert seen == [True]
