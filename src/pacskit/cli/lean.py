"""The lean path of ``pacskit echo`` and ``pacskit store``: their own commands, without typer.

Why: before it parses anything, typer (0.29) builds a click command for every command of the app
(~40, evaluating the annotations of each) and then converts each argument with a pydantic
``TypeAdapter`` (importing pydantic); importing typer alone costs about as much CPU as a C-ECHO.
Together that is more than the start-up of DCMTK's ``storescu``, and a script that sends files one
``pacskit store`` at a time pays it each time.

What: :func:`run_lean` reads the *same* declarations as typer — the ``Annotated[...,
Opt()/Arg()]`` parameters of the command functions in :mod:`pacskit.cli.scu`, which
:mod:`pacskit.cli.common` turns into typer's for the whole command line — names, defaults,
``min``/``max`` and ``count`` included, parses the arguments itself and calls that function, so the
command's behaviour, output and exit codes are the command's own. Neither typer nor click is
imported. It takes only plain forms (``--opt VALUE``, ``--opt=VALUE``, flags, ``-vv``, ``--``,
positional arguments); on anything else (``--help``, an unknown or repeated option, a value that is
not a plain number or is out of range, a missing argument, a declaration it does not know) it
returns ``None`` and the caller runs typer, which prints its usual usage error. So this path never
makes a usage error of its own; tests/client/test_lean.py checks it against typer's parse of the
same arguments.
"""

from __future__ import annotations

import gc
import inspect
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LEAN_COMMANDS", "lean_parse", "run_lean", "start_collecting"]

#: The commands this path runs: command name -> the function of :mod:`pacskit.cli.scu` (typer registers the same).
LEAN_COMMANDS = {"echo": "echo", "store": "store"}

_INT = re.compile(r"[0-9]+\Z")
_FLOAT = re.compile(r"[0-9]+(\.[0-9]+)?\Z")
_TYPES = (str, int, float, bool, Path)


class _NotLean(Exception):
    """The arguments (or a declaration) are not of the plain forms this path takes: typer decides."""


@dataclass(frozen=True, slots=True)
class _Param:
    name: str
    argument: bool
    type: type
    many: bool  # a list argument: takes the remaining positional arguments
    default: Any  # inspect.Parameter.empty: required
    names: tuple[str, ...]  # option names (an argument has none)
    count: bool
    minimum: float | None
    maximum: float | None

    @property
    def flag(self) -> bool:
        return self.type is bool


def _param(parameter: inspect.Parameter, annotation: Any) -> _Param:
    from pacskit.cli.base import Arg, Opt

    if typing.get_origin(annotation) is not typing.Annotated:
        raise _NotLean(f"{parameter.name}: not Annotated")
    base, *extras = typing.get_args(annotation)
    infos = [e for e in extras if isinstance(e, (Opt, Arg))]
    if len(infos) != 1:
        raise _NotLean(f"{parameter.name}: no Opt / Arg declaration")
    info = infos[0]
    many = False
    if typing.get_origin(base) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(base) if a is not type(None)]
        if len(members) != 1:
            raise _NotLean(f"{parameter.name}: a union")
        base = members[0]
    if typing.get_origin(base) is list:
        many, base = True, typing.get_args(base)[0]
    if base not in _TYPES:
        raise _NotLean(f"{parameter.name}: type {base!r}")
    if isinstance(info, Arg):
        return _Param(parameter.name, True, base, many, parameter.default, (), False, None, None)
    names = info.names
    if not names:  # typer's default name (a bool would be --name/--no-name: not taken here)
        names = (f"--{parameter.name.replace('_', '-')}",) if base is not bool else ("/",)
    if any("/" in n for n in names) or many or (info.count and base is not int):
        raise _NotLean(f"{parameter.name}: option names or kind")
    return _Param(parameter.name, False, base, many, parameter.default, names, info.count, info.min, info.max)


def _params(func: Callable[..., Any]) -> list[_Param]:
    signature = inspect.signature(func, eval_str=True)
    return [_param(p, p.annotation) for p in signature.parameters.values()]


def _convert(param: _Param, raw: str) -> Any:
    if param.type is str:
        return raw
    if param.type is Path:
        if not raw:
            raise _NotLean("an empty path")
        return Path(raw)
    pattern = _INT if param.type is int else _FLOAT
    if not pattern.match(raw):
        raise _NotLean(f"{raw!r} is not a plain number")
    value = param.type(raw)
    if (param.minimum is not None and value < param.minimum) or (param.maximum is not None and value > param.maximum):
        raise _NotLean(f"{raw!r} is out of range")
    return value


def lean_parse(func: Callable[..., Any], argv: Sequence[str]) -> dict[str, Any] | None:
    """The keyword arguments typer would call ``func`` with for ``argv`` (the arguments after the
    command name), or ``None`` when ``argv`` or ``func``'s declarations are not of the plain forms
    this path takes."""
    try:
        params = _params(func)
        options = {name: p for p in params if not p.argument for name in p.names}
        values: dict[str, Any] = {}
        positional: list[str] = []
        tokens = list(argv)
        only_arguments = False
        while tokens:
            token = tokens.pop(0)
            if only_arguments or token == "-" or not token.startswith("-"):
                positional.append(token)
                continue
            if token == "--":
                only_arguments = True
                continue
            name, equals, attached = token.partition("=") if token.startswith("--") else (token, "", "")
            option = options.get(name)
            if option is None:
                # a run of short flags, as click splits them: -vv, -vq
                if token.startswith("--") or len(token) < 3:
                    raise _NotLean(f"unknown option {token}")
                run = [options.get(f"-{c}") for c in token[1:]]
                if not all(o is not None and (o.flag or o.count) for o in run):
                    raise _NotLean(f"unknown option {token}")
                for o in run:
                    assert o is not None
                    values[o.name] = values.get(o.name, 0) + 1 if o.count else True
                continue
            if option.flag or option.count:
                if equals:
                    raise _NotLean(f"{name} takes no value")
                values[option.name] = values.get(option.name, 0) + 1 if option.count else True
                continue
            if option.name in values:
                raise _NotLean(f"{name} given twice")
            if not equals:
                if not tokens or tokens[0].startswith("-"):
                    raise _NotLean(f"{name} needs a value")
                attached = tokens.pop(0)
            values[option.name] = _convert(option, attached)
        for param in params:
            if not param.argument:
                if param.name not in values:
                    values[param.name] = param.default
                continue
            if param.many:
                taken, positional = positional, []
                if not taken and param.default is inspect.Parameter.empty:
                    raise _NotLean(f"{param.name} missing")
                values[param.name] = [_convert(param, t) for t in taken] if taken else param.default
            elif positional:
                values[param.name] = _convert(param, positional.pop(0))
            elif param.default is inspect.Parameter.empty:
                raise _NotLean(f"{param.name} missing")
            else:
                values[param.name] = param.default
        if positional:
            raise _NotLean("extra arguments")
        if any(v is inspect.Parameter.empty for v in values.values()):
            raise _NotLean("a required option")
        return values
    except _NotLean:
        return None


def start_collecting() -> None:
    """Freeze what the imports made (long-lived: never collected) and turn the garbage collector on
    again (:func:`pacskit.cli.main` turns it off while the modules load)."""
    gc.freeze()
    gc.enable()


def run_lean(argv: Sequence[str]) -> int | None:
    """Run ``pacskit <argv>`` on the lean path and return its exit code, or ``None`` when the command
    is not one of :data:`LEAN_COMMANDS` or its arguments are not of the plain forms taken here (the
    caller then runs the whole command line)."""
    if not argv or argv[0] not in LEAN_COMMANDS or any(k.startswith("_PACSKIT_COMPLETE") for k in os.environ):
        return None
    from pacskit.cli import scu

    func = getattr(scu, LEAN_COMMANDS[argv[0]])
    kwargs = lean_parse(func, argv[1:])
    if kwargs is None:
        return None
    start_collecting()
    try:
        func(**kwargs)
    except SystemExit as exc:  # how the commands end: SystemExit(code), or fail()'s
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # typer's exits, from a part that uses typer (the DICOMweb client's verbs): as typer shows them
        typer = sys.modules.get("typer")
        if typer is None or not isinstance(exc, (typer.Exit, typer.TyperException)):
            raise
        if isinstance(exc, typer.Exit):
            return int(exc.exit_code)
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        return int(getattr(exc, "exit_code", 1))
    finally:
        sys.stdout.flush()
    return 0
