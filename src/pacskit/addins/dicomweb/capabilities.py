"""Capabilities (PS3.18 8.9): a WADL document generated from the routes the add-in registered, so it
cannot list a resource that is not served nor miss one that is."""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import quoteattr

#: what each kind of resource produces / consumes (for the WADL representations)
_MEDIA = {
    "search": ["application/dicom+json", 'multipart/related; type="application/dicom+xml"'],
    "retrieve": ['multipart/related; type="application/dicom"'],
    "metadata": ["application/dicom+json"],
    "frames": ['multipart/related; type="application/octet-stream"', 'multipart/related; type="image/jpeg"',
               'multipart/related; type="image/jls"', 'multipart/related; type="image/jp2"'],
    "bulk": ['multipart/related; type="application/octet-stream"'],
    "rendered": ["image/jpeg", "image/png"],
    "store": ["application/dicom+json", "application/dicom+xml"],
    "wado": ["application/dicom", "image/jpeg", "image/png"],
    "capabilities": ["application/vnd.sun.wadl+xml"],
}


def _kind(path: str, method: str) -> str:
    if method == "POST":
        return "store"
    last = path.rstrip("/").split("/")[-1]
    if path in ("/", ""):
        return "capabilities"
    if last in ("studies", "series", "instances"):
        return "search"
    if last in ("metadata",):
        return "metadata"
    if last in ("rendered", "thumbnail"):
        return "rendered"
    if "{path" in path:
        return "bulk"
    if "/frames/" in path:
        return "frames"
    if last == "wado":
        return "wado"
    return "retrieve"


def wadl(app: Any, base: str) -> bytes:
    """The WADL of every route of ``app`` (a FastAPI application), relative to ``base``."""
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<application xmlns="http://wadl.dev.java.net/2009/02">',
             f"<resources base={quoteattr(base + '/')}>"]
    for route in app.routes:
        path = getattr(route, "path", None)
        methods = sorted(getattr(route, "methods", None) or ())
        if not path or not methods or path.startswith(("/openapi", "/docs")):
            continue
        lines.append(f"<resource path={quoteattr(path.lstrip('/').replace(':path', ''))}>")
        for method in methods:
            if method == "HEAD":
                continue
            kind = _kind(path, method)
            lines.append(f'<method name="{method}">')
            if method == "POST":
                lines.append('<request><representation mediaType=\'multipart/related; type="application/dicom"\'/></request>')
            lines.append("<response>")
            for media in _MEDIA[kind]:
                lines.append(f"<representation mediaType={quoteattr(media)}/>")
            lines.append("</response></method>")
        lines.append("</resource>")
    lines.append("</resources></application>")
    return "\n".join(lines).encode()
