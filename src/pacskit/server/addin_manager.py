"""Finding, validating and instantiating add-ins.

Sources, in order: the entry point group ``pacskit.addins`` (installed packages, including pacskit's
built-ins), then ``.py`` files and packages in the server folder's ``addins/``. A source that fails to
import, or a class that is not a valid add-in, is reported with one clear log line (and kept in
:attr:`AddInManager.broken`) and skipped: one broken add-in never stops the server. Two add-ins with the
same name is an error naming both origins. A class with a misspelled hook (a method named almost like
one of :data:`pacskit.services.HOOKS`) is reported and skipped too: the hook would never be called.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

from pydantic import ValidationError

from pacskit.services import AddIn, AddInOptions, misspelled_hooks

log = logging.getLogger("pacskit.addins")

ENTRY_POINT_GROUP = "pacskit.addins"


class AddInError(RuntimeError):
    """An add-in configuration problem that must stop the server (duplicate claims, bad options)."""


@dataclass(slots=True)
class Discovered:
    cls: type[AddIn]
    origin: str


@dataclass(slots=True)
class Broken:
    origin: str
    error: str


class AddInManager:
    """Discovers add-in classes; :meth:`instantiate` applies the settings sections."""

    def __init__(self) -> None:
        self.found: dict[str, Discovered] = {}
        self.broken: list[Broken] = []

    def discover(self, addins_folder: Path | None, *, use_entry_points: bool = True) -> None:
        if use_entry_points:
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                origin = f"entry point {ep.name} ({ep.value})"
                try:
                    obj = ep.load()
                except Exception as exc:
                    self._broken(origin, exc)
                    continue
                self.add_class(obj, origin)
        if addins_folder is not None and addins_folder.is_dir():
            for path in sorted(addins_folder.iterdir()):
                if path.name.startswith(("_", ".")):
                    continue
                if path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").exists()):
                    self._load_path(path)

    def _load_path(self, path: Path) -> None:
        origin = f"file {path}"
        module_name = f"pacskit_local_addins.{path.stem.replace('-', '_')}"
        target = path / "__init__.py" if path.is_dir() else path
        try:
            spec = importlib.util.spec_from_file_location(
                module_name, target, submodule_search_locations=[str(path)] if path.is_dir() else None
            )
            if spec is None or spec.loader is None:
                raise ImportError("not an importable module")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            self._broken(origin, exc)
            return
        classes = _addin_classes(module)
        if not classes:
            self._broken(origin, TypeError("defines no AddIn subclass"))
        for cls in classes:
            self.add_class(cls, origin)

    def add_class(self, obj: object, origin: str) -> None:
        """Register one add-in class found by any means (discovery, or given directly by the caller)."""
        if not (inspect.isclass(obj) and issubclass(obj, AddIn)):
            self._broken(origin, TypeError(f"{obj!r} is not a subclass of pacskit.services.AddIn"))
            return
        if not obj.name:
            self._broken(origin, TypeError(f"{obj.__qualname__} has no 'name'"))
            return
        if not (inspect.isclass(obj.Options) and issubclass(obj.Options, AddInOptions)):
            self._broken(origin, TypeError(f"{obj.__qualname__}.Options must derive from AddInOptions"))
            return
        misspelled = misspelled_hooks(obj)
        if misspelled:
            self._broken(origin, TypeError("; ".join(misspelled)))
            return
        existing = self.found.get(obj.name)
        if existing is not None and existing.cls is not obj:
            raise AddInError(f"two add-ins are named {obj.name!r}: {existing.origin} and {origin}")
        self.found[obj.name] = Discovered(obj, origin)

    def _broken(self, origin: str, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}"
        log.error("add-in from %s skipped: %s", origin, message)
        self.broken.append(Broken(origin, message))

    def options_for(self, name: str, section: dict[str, object]) -> AddInOptions:
        cls = self.found[name].cls
        try:
            return cls.Options.model_validate(section)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise AddInError(f"options of add-in {name!r} are invalid: {problems}") from exc


def _addin_classes(module: ModuleType) -> list[type[AddIn]]:
    return [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, AddIn) and obj is not AddIn and obj.__module__ == module.__name__
    ]
