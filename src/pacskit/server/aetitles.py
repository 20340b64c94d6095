"""The registry of remote AEs: who they are, where they listen, what they may do.

Kept in ``ae-titles.toml`` in the server folder so ``pacskit ae add`` works without a running server;
a running server re-reads the file when it changes. Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import os
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pacskit.server.settings import SettingsError, validate_ae_title

AE_FILE = "ae-titles.toml"
ALL_SERVICES = frozenset({"echo", "store", "find", "move", "get", "commit", "mpps", "worklist"})


class RemoteAE(BaseModel):
    """One remote application entity."""

    model_config = ConfigDict(extra="forbid")

    title: str
    host: str
    port: int = Field(ge=1, le=65535)
    tls: bool = False
    description: str = ""
    allowed_services: set[str] = Field(default_factory=lambda: set(ALL_SERVICES))

    @field_validator("title")
    @classmethod
    def _title(cls, value: str) -> str:
        return validate_ae_title(value)

    @field_validator("allowed_services")
    @classmethod
    def _services(cls, value: set[str]) -> set[str]:
        unknown = value - ALL_SERVICES
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; known: {sorted(ALL_SERVICES)}")
        return value

    def may(self, service: str) -> bool:
        return service in self.allowed_services


class AeTitles(Protocol):
    """The ``ae_titles`` base service: replaceable (e.g. by a database-backed registry)."""

    def get(self, title: str) -> RemoteAE | None: ...

    def all(self) -> list[RemoteAE]: ...

    def add(self, ae: RemoteAE, *, replace: bool = False) -> None: ...

    def remove(self, title: str) -> bool: ...


class FileAeRegistry:
    """:class:`AeTitles` kept in a TOML file; safe to use from several threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._items: dict[str, RemoteAE] = {}

    def _load(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._items, self._mtime = {}, None
            return
        if mtime == self._mtime:
            return
        try:
            data = tomllib.loads(self.path.read_text(encoding="utf-8"))
            items = {e["title"].strip(): RemoteAE.model_validate(e) for e in data.get("ae", [])}
        except (tomllib.TOMLDecodeError, ValidationError, KeyError, TypeError) as exc:
            raise SettingsError(f"{self.path}: invalid AE registry: {exc}") from exc
        self._items, self._mtime = items, mtime

    def _save(self) -> None:
        import tomli_w

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        entries = []
        for ae in sorted(self._items.values(), key=lambda a: a.title):
            entry = ae.model_dump()
            entry["allowed_services"] = sorted(ae.allowed_services)
            entries.append(entry)
        tmp.write_text(tomli_w.dumps({"ae": entries}), encoding="utf-8")
        os.replace(tmp, self.path)
        self._mtime = self.path.stat().st_mtime

    def get(self, title: str) -> RemoteAE | None:
        with self._lock:
            self._load()
            return self._items.get(title.strip())

    def all(self) -> list[RemoteAE]:
        with self._lock:
            self._load()
            return sorted(self._items.values(), key=lambda a: a.title)

    def __iter__(self) -> Iterator[RemoteAE]:
        return iter(self.all())

    def add(self, ae: RemoteAE, *, replace: bool = False) -> None:
        with self._lock:
            self._load()
            if ae.title in self._items and not replace:
                raise ValueError(f"AE {ae.title!r} is already registered")
            self._items[ae.title] = ae
            self._save()

    def remove(self, title: str) -> bool:
        with self._lock:
            self._load()
            if self._items.pop(title.strip(), None) is None:
                return False
            self._save()
            return True
