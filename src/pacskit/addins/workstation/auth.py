"""Sessions, bearer tokens, roles and CSRF for the workstation's API (and DICOMweb, through
:attr:`pacskit.services.ServerControl.web_authenticator`).

- A session is created by a login (``POST /api/session``): a random token in the ``pacskit_session``
  cookie (HttpOnly, SameSite=Strict) and a random CSRF token the page sends back in
  ``X-CSRF-Token`` on every state-changing request. Sessions expire after ``session_minutes`` without
  a request and live in memory only (a restart logs everyone out).
- ``Authorization: Bearer <token>`` with the admin API's token (``[admin] token_file``) acts as role
  ``admin`` and needs no CSRF header (a browser never sends it on its own).
- Roles are ordered: viewer < operator < admin (:data:`.users.ROLES`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacskit.addins.workstation.users import User, UserFile, role_rank
from pacskit.services import WebAuthError, WebUser

COOKIE = "pacskit_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: what a DICOMweb permission needs (find / get: read, store: write)
PERMISSION_ROLES = {"find": "viewer", "get": "viewer", "store": "operator"}


@dataclass(slots=True)
class Session:
    user: str
    role: str
    csrf_token: str
    expires_at: float
    created_at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated request: who, with which role, and how (``session`` or ``bearer``)."""

    user: str
    role: str
    via: str
    session: Session | None = None

    def may(self, role: str) -> bool:
        return role_rank(self.role) >= role_rank(role)


class Sessions:
    """The open sessions; ``clock`` is replaceable (tests of expiry)."""

    def __init__(self, minutes: float, clock: Callable[[], float] = time.time) -> None:
        self.lifetime = minutes * 60.0
        self.clock = clock
        self._lock = threading.Lock()
        self._by_key: dict[str, Session] = {}

    @staticmethod
    def _key(token: str) -> str:
        # only a digest is kept: a memory dump or a log line of the table gives no usable cookie
        return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()

    def open(self, user: User) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        session = Session(user.name, user.role, secrets.token_urlsafe(24), self.clock() + self.lifetime)
        with self._lock:
            self._purge()
            self._by_key[self._key(token)] = session
        return token, session

    def get(self, token: str) -> Session | None:
        """The live session of ``token``, its idle expiry renewed; ``None`` when unknown or expired."""
        key = self._key(token)
        now = self.clock()
        with self._lock:
            session = self._by_key.get(key)
            if session is None:
                return None
            if session.expires_at <= now:
                del self._by_key[key]
                return None
            session.expires_at = now + self.lifetime
            return session

    def close(self, token: str) -> Session | None:
        with self._lock:
            return self._by_key.pop(self._key(token), None)

    def close_user(self, name: str, role: str | None = None) -> int:
        """End the sessions of ``name`` (all, or only those with a role other than ``role``)."""
        with self._lock:
            keys = [k for k, s in self._by_key.items() if s.user == name and (role is None or s.role != role)]
            for k in keys:
                del self._by_key[k]
            return len(keys)

    def _purge(self) -> None:
        now = self.clock()
        for k in [k for k, s in self._by_key.items() if s.expires_at <= now]:
            del self._by_key[k]

    def __len__(self) -> int:
        with self._lock:
            self._purge()
            return len(self._by_key)


class LoginThrottle:
    """Slows password guessing: after ``limit`` failed logins in a row for one user name from one
    address, that pair is refused (429) until ``window`` seconds after the last failure. A success
    resets the count. In memory, bounded (the oldest entries go first)."""

    MAX_ENTRIES = 10000

    def __init__(self, clock: Callable[[], float], limit: int = 5, window: float = 60.0) -> None:
        self.clock = clock
        self.limit = limit
        self.window = window
        self._lock = threading.Lock()
        self._failures: dict[tuple[str, str], tuple[int, float]] = {}

    def wait(self, user: str, address: str) -> float:
        """Seconds before ``user`` may try again from ``address`` (0: now)."""
        with self._lock:
            count, last = self._failures.get((user, address), (0, 0.0))
        if count < self.limit:
            return 0.0
        return max(0.0, last + self.window - self.clock())

    def failed(self, user: str, address: str) -> None:
        with self._lock:
            count, last = self._failures.pop((user, address), (0, 0.0))
            if last + self.window <= self.clock():
                count = 0  # the earlier failures are old: start again
            self._failures[(user, address)] = (count + 1, self.clock())
            while len(self._failures) > self.MAX_ENTRIES:
                del self._failures[next(iter(self._failures))]

    def succeeded(self, user: str, address: str) -> None:
        with self._lock:
            self._failures.pop((user, address), None)


class Authenticator:
    """Who a request comes from (:meth:`caller`), and the DICOMweb hook (:meth:`web_user`)."""

    def __init__(self, users: UserFile, sessions: Sessions, token_file: Path | None, audit: Any, log: Any) -> None:
        self.users = users
        self.sessions = sessions
        self.token_file = token_file
        self.audit = audit
        self.log = log

    def _admin_token(self) -> str | None:
        if self.token_file is None:
            return None
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()
        except OSError:
            return None
        return token or None

    def caller(self, request: Any, *, foreign_bearer_ok: bool = False) -> Caller | None:
        """The caller of ``request`` (``None``: no credentials, or an expired / unknown session).

        Raises :class:`WebAuthError` 401 for a wrong bearer token (``foreign_bearer_ok``: ``None``
        instead, another authenticator may know it: DICOMweb's registry JWTs) and 403 for a
        cookie-authenticated state-changing request without the right ``X-CSRF-Token``."""
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            expected = self._admin_token()
            if expected is not None and hmac.compare_digest(credentials.strip().encode(), expected.encode()):
                return Caller("admin-token", "admin", "bearer")
            if foreign_bearer_ok:
                return None
            address = request.client.host if request.client else None
            self.log.warning("workstation: %s %s from %s: bearer token refused", request.method, request.url.path, address)
            self.audit.user_authentication("unknown", success=False, address=address, description="workstation: bearer token refused")
            raise WebAuthError(401, "the bearer token is not valid")
        token = request.cookies.get(COOKIE)
        if not token:
            return None
        session = self.sessions.get(token)
        if session is None:
            return None
        if request.method not in SAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER, "")
            if not sent or not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
                self.log.warning("workstation: %s %s by %s without a valid %s", request.method, request.url.path,
                                 session.user, CSRF_HEADER)
                raise WebAuthError(403, "missing or wrong X-CSRF-Token header")
        return Caller(session.user, session.role, "session", session)

    def require(self, request: Any, role: str) -> Caller:
        """The caller, who must have at least ``role``: :class:`WebAuthError` 401 / 403 otherwise."""
        caller = self.caller(request)
        if caller is None:
            raise WebAuthError(401, "log in first (POST /api/session) or send a bearer token")
        if not caller.may(role):
            address = request.client.host if request.client else None
            self.audit.security_alert("use-of-restricted-function", f"workstation {request.method} {request.url.path}",
                                      peer_ae=caller.user, peer_address=address)
            raise WebAuthError(403, f"role {caller.role} may not do this (needs {role})")
        return caller

    async def web_user(self, request: Any, permission: str) -> WebUser | None:
        """:data:`pacskit.services.WebAuthenticator` for DICOMweb: ``None`` without workstation
        credentials, else the user (or :class:`WebAuthError`)."""
        caller = self.caller(request, foreign_bearer_ok=True)
        if caller is None:
            return None
        role = PERMISSION_ROLES.get(permission, "admin")
        if not caller.may(role):
            raise WebAuthError(403, f"role {caller.role} may not use DICOMweb {permission}")
        return WebUser(caller.user, caller.role)
