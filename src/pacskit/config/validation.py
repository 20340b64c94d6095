"""Checks shared by the server settings and the AE registry.

Kept apart from :mod:`pacskit.config.settings` so that the AE registry (and with it every client SCU,
which resolves its peers through it) does not build the server's settings models at import: a
command-line client pays for its imports on every run.
"""

from __future__ import annotations

import re

_AE_RE = re.compile(r"^[\x20-\x5B\x5D-\x7E]{1,16}$")  # PS3.5 AE: default repertoire, no backslash


class SettingsError(ValueError):
    """A settings file is missing, unreadable or invalid; the message says where and why."""


def validate_ae_title(value: str) -> str:
    """Validate an AE title (1-16 characters of the default repertoire, not all spaces, no backslash)."""
    if not _AE_RE.match(value) or not value.strip():
        raise ValueError(f"{value!r} is not a valid AE title (1-16 printable ASCII characters, no backslash)")
    return value.strip()
