"""The registry of remote AEs: who they are, where they listen, who may associate as them, what they may do.

Access control fields (enforced by :mod:`pacskit.server.access`; see docs/security.md): ``source_hosts``
(addresses, CIDR networks or host names the association must come from), ``tls`` (TLS required),
``tls_subject`` (the CN of the TLS client certificate), ``user_identity`` with ``username`` /
``password_hash`` (never the password itself) or ``jwt_key``, ``allowed_services`` and
``move_destinations``.

Kept in ``ae-titles.toml`` in the server folder so ``pacskit ae add`` works without a running server;
a running server re-reads the file when it changes. Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import ipaddress
import os
import re
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pacskit.config.validation import SettingsError, validate_ae_title

AE_FILE = "ae-titles.toml"
#: A service name of ``allowed_services``: the core's (echo, store, find, move, get) or one an add-in declares.
_SERVICE_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


class RemoteAE(BaseModel):
    """One remote application entity."""

    model_config = ConfigDict(extra="forbid")

    title: str
    host: str
    port: int = Field(ge=1, le=65535)
    tls: bool = False
    description: str = ""
    allowed_services: set[str] | None = Field(
        None, description="the services it may use, by registry name (echo, store, find, move, get, and those add-ins declare: worklist, commit, mpps...); None: all")
    # --- access control (pacskit.server.access)
    source_hosts: list[str] = Field(default_factory=list, description="addresses, CIDR networks or host names it may associate from; empty: anywhere")
    tls_subject: str | None = Field(None, description="CN its TLS client certificate must carry (implies TLS)")
    user_identity: Literal["none", "password", "jwt"] = Field("none", description="User Identity Negotiation it must send")
    username: str | None = Field(None, description="its user name (password), or the JWT 'sub' it must carry")
    password_hash: str | None = Field(None, description="hash_password() output; never the password")
    jwt_algorithm: Literal["HS256", "RS256"] = "RS256"
    jwt_key: str | None = Field(None, description="HS256: the shared secret; RS256: the PEM public key")
    jwt_audience: str | None = Field(None, description="the 'aud' claim its tokens must carry")
    move_destinations: set[str] | None = Field(None, description="C-MOVE destinations it may name; None: any registered AE")

    @field_validator("title")
    @classmethod
    def _title(cls, value: str) -> str:
        return validate_ae_title(value)

    @field_validator("allowed_services")
    @classmethod
    def _services(cls, value: set[str] | None) -> set[str] | None:
        bad = sorted(name for name in value or () if not _SERVICE_NAME_RE.match(name))
        if bad:
            raise ValueError(f"not service names: {bad} (lower-case names such as echo, store, find, move, get)")
        return value

    @field_validator("source_hosts")
    @classmethod
    def _sources(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                if not _HOSTNAME_RE.match(entry):
                    raise ValueError(f"source host {entry!r} is not an IP address, CIDR network or host name") from None
        return value

    @field_validator("move_destinations")
    @classmethod
    def _destinations(cls, value: set[str] | None) -> set[str] | None:
        return None if value is None else {validate_ae_title(v) for v in value}

    @field_validator("password_hash")
    @classmethod
    def _hash(cls, value: str | None) -> str | None:
        from pacskit.config.passwords import is_password_hash

        if value is not None and not is_password_hash(value):
            raise ValueError("password_hash must be the output of pacskit.config.passwords.hash_password (never a plain password)")
        return value

    @model_validator(mode="after")
    def _identity(self) -> RemoteAE:
        if self.user_identity == "password" and (not self.username or not self.password_hash):
            raise ValueError("user_identity 'password' needs username and password_hash")
        if self.user_identity == "jwt" and not self.jwt_key:
            raise ValueError("user_identity 'jwt' needs jwt_key")
        return self

    @property
    def requires_tls(self) -> bool:
        """Associations as this AE must arrive over TLS (``tls`` or a ``tls_subject`` is set)."""
        return self.tls or self.tls_subject is not None

    def may(self, service: str) -> bool:
        return self.allowed_services is None or service in self.allowed_services

    def may_move_to(self, destination: str) -> bool:
        return self.move_destinations is None or destination in self.move_destinations


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
        import tomlkit

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        entries = []
        for ae in sorted(self._items.values(), key=lambda a: a.title):
            entry = ae.model_dump(exclude_none=True)
            if ae.allowed_services is not None:
                entry["allowed_services"] = sorted(ae.allowed_services)
            if ae.move_destinations is not None:
                entry["move_destinations"] = sorted(ae.move_destinations)
            entries.append(entry)
        tmp.write_text(tomlkit.dumps({"ae": entries}), encoding="utf-8")
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
