"""The workstation's users: ``users.toml`` in the server folder, one table per user.

::

    [users.alice]
    role = "operator"
    password_hash = "scrypt$16384$8$1$..."     # pacskit.config.passwords.hash_password

Only hashes are stored (scrypt from :mod:`hashlib`, through :mod:`pacskit.config.passwords`). The file
is written atomically (temporary file + rename, mode 0600) and re-read when it changed on disk, so
``pacskit users ...`` takes effect on a running server at the next login. Thread-safe.
"""

from __future__ import annotations

import json
import os
import re
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pacskit.config.passwords import hash_password, is_password_hash, verify_password

USERS_FILE = "users.toml"
#: the roles, weakest first: each may do what the ones before it may
ROLES: tuple[str, ...] = ("viewer", "operator", "admin")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 8
#: a hash to check unknown users' passwords against: a failed login costs the same either way
_DUMMY_HASH = hash_password("no such user: constant time")


class UserError(ValueError):
    """A user operation cannot be done (bad name, role or password, unknown or existing user)."""


def role_rank(role: str) -> int:
    """0 for viewer, 1 for operator, 2 for admin (``UserError`` for anything else)."""
    try:
        return ROLES.index(role)
    except ValueError:
        raise UserError(f"unknown role {role!r} (one of {', '.join(ROLES)})") from None


def check_username(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise UserError(f"bad user name {name[:70]!r}: 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit")
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"password too short: at least {MIN_PASSWORD} characters")
    return password


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str
    password_hash: str

    def public(self) -> dict[str, str]:
        return {"username": self.name, "role": self.role}


class UserFile:
    """The users of one ``users.toml``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._users: dict[str, User] = {}
        self._stamp: tuple[int, int] | None = None

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _load(self) -> dict[str, User]:
        """The users, re-read when the file changed. Raises ``UserError`` for an unreadable file."""
        stamp = self._stat()
        if stamp == self._stamp:
            return self._users
        users: dict[str, User] = {}
        if stamp is not None:
            try:
                data = tomllib.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise UserError(f"{self.path}: cannot read the users: {exc}") from exc
            for name, entry in (data.get("users") or {}).items():
                if not isinstance(entry, dict):
                    raise UserError(f"{self.path}: users.{name} is not a table")
                role, digest = entry.get("role"), entry.get("password_hash", "")
                if role not in ROLES or not isinstance(digest, str) or not is_password_hash(digest):
                    raise UserError(f"{self.path}: users.{name} needs a role ({', '.join(ROLES)}) and a password_hash")
                users[name] = User(name, role, digest)
        self._users, self._stamp = users, stamp
        return users

    def _save(self, users: dict[str, User]) -> None:
        lines = ["# pacskit workstation users (pacskit users add|passwd|remove|list); only password hashes\n"]
        for user in sorted(users.values(), key=lambda u: u.name):
            lines.append(f"\n[users.{json.dumps(user.name)}]\nrole = {json.dumps(user.role)}\n"
                         f"password_hash = {json.dumps(user.password_hash)}\n")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write("".join(lines))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        self._users, self._stamp = dict(users), self._stat()

    # ------------------------------------------------------------------ reading

    def list(self) -> list[User]:
        with self._lock:
            return sorted(self._load().values(), key=lambda u: u.name)

    def get(self, name: str) -> User | None:
        with self._lock:
            return self._load().get(name)

    def authenticate(self, name: str, password: str) -> User | None:
        """The user when ``password`` is theirs, else ``None`` (the same work either way)."""
        user = self.get(name)
        ok = verify_password(password, user.password_hash if user is not None else _DUMMY_HASH)
        return user if ok and user is not None else None

    # ------------------------------------------------------------------ changes

    def add(self, name: str, password: str, role: str) -> User:
        check_username(name)
        check_password(password)
        role_rank(role)
        with self._lock:
            users = dict(self._load())
            if name in users:
                raise UserError(f"user {name!r} exists")
            users[name] = User(name, role, hash_password(password))
            self._save(users)
            return users[name]

    def update(self, name: str, *, password: str | None = None, role: str | None = None) -> User:
        if password is not None:
            check_password(password)
        if role is not None:
            role_rank(role)
        with self._lock:
            users = dict(self._load())
            old = users.get(name)
            if old is None:
                raise UserError(f"no user {name!r}")
            users[name] = User(name, role or old.role,
                               hash_password(password) if password is not None else old.password_hash)
            self._save(users)
            return users[name]

    def remove(self, name: str) -> None:
        with self._lock:
            users = dict(self._load())
            if users.pop(name, None) is None:
                raise UserError(f"no user {name!r}")
            self._save(users)
