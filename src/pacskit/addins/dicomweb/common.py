"""Shared pieces of the DICOMweb add-in: errors with a reason, UID checks, Accept parsing, multipart.

Every refusal is a :class:`DicomWebError` carrying the HTTP status and one line saying why; the add-in
turns it into an RFC 9457 ``application/problem+json`` answer (``detail``: the reason) and a log line,
so a caller always learns what was wrong.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from pacskit.store import is_valid_uid

#: Media types of PS3.18 used here
DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
OCTET_STREAM = "application/octet-stream"
MULTIPART = "multipart/related"

#: The default transfer syntax of application/dicom when the Accept header names none (PS3.18 8.7.3.5.2)
DEFAULT_TRANSFER_SYNTAX = "1.2.840.10008.1.2.1"


class DicomWebError(Exception):
    """A request that cannot be answered: ``status`` is the HTTP status, the message the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def check_uid(value: str, what: str) -> str:
    """``value`` if it is a valid UID (PS3.5 9.1), else a 400 naming ``what``."""
    if not is_valid_uid(value):
        raise DicomWebError(400, f"{what} is not a valid UID: {value[:70]!r}")
    return value


# --- Accept --------------------------------------------------------------------------------------------

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# A parameter value is a token or a quoted string (RFC 9110 5.6.6); a media type as an unquoted value
# (``type=application/octet-stream``, sent by Cornerstone/OHIF and dicomweb-client) is accepted too.
_VALUE = r"[!#$%&'*+./^_`|~0-9A-Za-z-]+"
_PARAM = re.compile(rf'\s*;\s*({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|{_VALUE})')


@dataclass(slots=True)
class MediaRange:
    """One entry of an Accept header (or a Content-Type): type/subtype, parameters (lower-case names,
    unquoted values) and its quality."""

    type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    def matches(self, media_type: str) -> bool:
        """Whether this range accepts ``media_type`` (``*/*``, ``image/*`` or equal)."""
        if self.type == "*/*":
            return True
        major, _, minor = self.type.partition("/")
        if minor == "*":
            return media_type.split("/")[0] == major
        return self.type == media_type


def parse_media_type(text: str) -> MediaRange:
    """One media type with its parameters; a 400 when it is not one."""
    text = text.strip()
    m = re.match(rf"({_TOKEN})/({_TOKEN})", text)
    if m is None:
        raise DicomWebError(400, f"not a media type: {text[:80]!r}")
    params: dict[str, str] = {}
    rest = text[m.end():]
    while rest.strip():
        p = _PARAM.match(rest)
        if p is None:
            raise DicomWebError(400, f"malformed parameters in media type {text[:80]!r}")
        value = p.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[p.group(1).lower()] = value
        rest = rest[p.end():]
    q = 1.0
    if "q" in params:
        try:
            q = float(params.pop("q"))
        except ValueError:
            raise DicomWebError(400, f"bad quality value in {text[:80]!r}") from None
    return MediaRange(f"{m.group(1)}/{m.group(2)}".lower(), params, q)


def _split_header(header: str) -> list[str]:
    """Split an Accept header at the commas outside quoted strings."""
    parts: list[str] = []
    buf: list[str] = []
    quoted = escaped = False
    for ch in header:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    parts.append("".join(buf))
    return [p for p in parts if p.strip()]


def parse_accept(header: str | None) -> list[MediaRange]:
    """The ranges of an Accept header, best first (stable for equal quality); ``*/*`` when absent.
    Ranges with q=0 are dropped."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges = [parse_media_type(p) for p in _split_header(header)]
    ranges = [r for r in ranges if r.q > 0]
    return sorted(ranges, key=lambda r: -r.q)


def dicom_transfer_syntaxes(accept: Iterable[MediaRange], part_type: str = DICOM) -> list[str] | None:
    """The transfer syntaxes a client accepts for ``part_type`` (``application/dicom``) in preference
    order: ``"*"`` for any (the stored one), :data:`DEFAULT_TRANSFER_SYNTAX` where a range names
    none. ``None`` when no range accepts the type at all (a 406)."""
    out: list[str] = []
    for r in accept:
        if r.type == MULTIPART:
            inner = r.params.get("type", part_type).lower()
            if inner != part_type:
                continue
        elif not (r.matches(part_type) and r.type != "*/*") and r.type != "*/*":
            continue
        ts = r.params.get("transfer-syntax")
        if r.type == "*/*" and ts is None:
            ts = "*"  # a client that takes anything gets the stored copy
        ts = ts or DEFAULT_TRANSFER_SYNTAX
        if ts not in out:
            out.append(ts)
    return out or None


# --- multipart/related ------------------------------------------------------------------------------


def new_boundary() -> str:
    return uuid.uuid4().hex


def part_header(boundary: str, content_type: str, extra: dict[str, str] | None = None) -> bytes:
    """The delimiter and headers of one part (its body follows, then ``b"\\r\\n"``)."""
    lines = [f"--{boundary}", f"Content-Type: {content_type}"]
    for name, value in (extra or {}).items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("ascii")


def multipart_type(part_type: str, boundary: str, extra: str = "") -> str:
    return f'{MULTIPART}; type="{part_type}"; boundary={boundary}{extra}'
