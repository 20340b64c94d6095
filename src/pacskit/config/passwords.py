"""Password hashes for the User Identity entries of the AE registry (``password_hash``).

The registry stores only :func:`hash_password` output; the server checks a presented password with
:func:`verify_password` in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    """A salted scrypt hash of ``password`` for the registry's ``password_hash``:
    ``scrypt$N$r$p$salt$hash`` (base64)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def is_password_hash(value: str) -> bool:
    """``value`` has the form :func:`hash_password` (or a ``pbkdf2_sha256$iterations$salt$hash``) makes."""
    parts = value.split("$")
    try:
        if parts[0] == "scrypt" and len(parts) == 6:
            int(parts[1]), int(parts[2]), int(parts[3])
            base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
            return True
        if parts[0] == "pbkdf2_sha256" and len(parts) == 4:
            int(parts[1])
            base64.b64decode(parts[2], validate=True), base64.b64decode(parts[3], validate=True)
            return True
    except ValueError:
        return False
    return False


def verify_password(password: bytes | str, encoded: str) -> bool:
    """Constant-time check of ``password`` against a :func:`hash_password` value."""
    if isinstance(password, str):
        password = password.encode("utf-8")
    parts = encoded.split("$")
    try:
        if parts[0] == "scrypt":
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            salt, expected = base64.b64decode(parts[4]), base64.b64decode(parts[5])
            digest = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=len(expected), maxmem=256 * 1024 * 1024)
        elif parts[0] == "pbkdf2_sha256":
            iterations, salt, expected = int(parts[1]), base64.b64decode(parts[2]), base64.b64decode(parts[3])
            digest = hashlib.pbkdf2_hmac("sha256", password, salt, iterations, dklen=len(expected))
        else:
            return False
    except (ValueError, IndexError):
        return False
    return hmac.compare_digest(digest, expected)


__all__ = ["hash_password", "is_password_hash", "verify_password"]
