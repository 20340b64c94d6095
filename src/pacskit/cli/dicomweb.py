"""``pacskit find | get | store`` against a DICOMweb peer (``http(s)://host:port/dicom-web``).

The verbs of :mod:`pacskit.cli.client` hand over here when the target is a URL. Credentials: a
bearer token in ``PACSKIT_DICOMWEB_TOKEN``, or HTTP Basic as ``https://user:password@host/...``;
``--tls-ca`` verifies an HTTPS peer with that CA file. Keys are given as for C-FIND (``-k
PatientName=DOE*``); a key without a value is asked for (``includefield``). The level maps to the
QIDO-RS resource (STUDY: studies, SERIES: series, IMAGE: instances).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import typer

from pacskit.cli.common import EXIT_CONNECTION, EXIT_FAILURE_STATUS, EXIT_OK, EXIT_USAGE

_RESOURCES = {"STUDY": "studies", "SERIES": "series", "IMAGE": "instances"}
_COLUMNS = {
    "studies": ["00100010", "00100020", "00080020", "00080050", "00081030", "00080061", "0020000D"],
    "series": ["0020000E", "00080060", "00200011", "0008103E", "00201209"],
    "instances": ["00080018", "00080016", "00200013"],
}


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def client_for(url: str, tls_ca: Path | None, timeout: float) -> Any:
    from pacskit.client.dicomweb import DicomWebClient

    parts = urlsplit(url)
    basic = None
    if parts.username is not None:
        basic = (unquote(parts.username), unquote(parts.password or ""))
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    token = os.environ.get("PACSKIT_DICOMWEB_TOKEN") or None
    return DicomWebClient(url, token=token, basic=basic, verify=str(tls_ca) if tls_ca else True, timeout=timeout)


def _keys(keys: list[str] | None) -> tuple[dict[str, str], list[str]]:
    filters: dict[str, str] = {}
    fields: list[str] = []
    for text in keys or []:
        name, eq, value = text.partition("=")
        name = name.strip().replace(",", "")
        if not name:
            raise _fail(f"bad key {text!r}", EXIT_USAGE)
        if eq and value:
            filters[name] = value
        else:
            fields.append(name)
    return filters, fields


def _value(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or []
    out = []
    for v in values:
        out.append(v.get("Alphabetic", "") if isinstance(v, dict) else str(v))
    return "\\".join(out)


def web_find(url: str, keys: list[str] | None, level: str, as_json: bool, limit: int | None,
             tls_ca: Path | None, timeout: float) -> None:
    from pacskit.client.dicomweb import DicomWebClientError

    resource = _RESOURCES.get(level.upper())
    if resource is None:
        raise _fail(f"level {level} has no QIDO-RS resource (STUDY, SERIES or IMAGE)", EXIT_USAGE)
    filters, fields = _keys(keys)
    with client_for(url, tls_ca, timeout) as client:
        try:
            matches = client.search(resource, filters, includefield=fields, limit=limit)
        except DicomWebClientError as exc:
            raise _fail(str(exc), EXIT_CONNECTION if exc.status == 0 else EXIT_FAILURE_STATUS) from None
    if as_json:
        typer.echo(json.dumps(matches, indent=2))
    else:
        from pydicom.datadict import keyword_for_tag
        from rich.console import Console
        from rich.table import Table

        columns = _COLUMNS[resource] + [c for c in fields if c not in _COLUMNS[resource]]
        tags = []
        for c in columns:
            from pydicom.datadict import tag_for_keyword

            tag = tag_for_keyword(c) if not all(ch in "0123456789abcdefABCDEF" for ch in c) else int(c, 16)
            if tag is not None:
                tags.append(f"{int(tag):08X}")
        table = Table(*[keyword_for_tag(int(t, 16)) or t for t in tags])
        for m in matches:
            table.add_row(*[_value(m, t) for t in tags])
        Console().print(table)
    typer.echo(f"{len(matches)} match(es)", err=True)


def web_get(url: str, keys: list[str] | None, into: Path, tls_ca: Path | None, timeout: float) -> None:
    from pacskit.client.dicomweb import DicomWebClientError

    filters, _ = _keys(keys)
    study = filters.get("StudyInstanceUID")
    if not study:
        raise _fail("a DICOMweb retrieve needs -k StudyInstanceUID=... (and SeriesInstanceUID, SOPInstanceUID)", EXIT_USAGE)
    with client_for(url, tls_ca, timeout) as client:
        try:
            paths = client.retrieve(study, filters.get("SeriesInstanceUID"), filters.get("SOPInstanceUID"), into=into)
        except (DicomWebClientError, ValueError) as exc:
            status = getattr(exc, "status", None)
            raise _fail(str(exc), EXIT_USAGE if status is None else EXIT_CONNECTION if status == 0 else EXIT_FAILURE_STATUS) from None
    typer.echo(f"WADO-RS: {len(paths)} instance(s) into {into}")
    raise typer.Exit(EXIT_OK)


def web_store(url: str, paths: list[Path], tls_ca: Path | None, timeout: float) -> None:
    from pacskit.client.dicomweb import DicomWebClientError

    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file())
        elif path.exists():
            files.append(path)
        else:
            raise _fail(f"{path} does not exist", EXIT_USAGE)
    with client_for(url, tls_ca, timeout) as client:
        try:
            result = client.store(files)
        except DicomWebClientError as exc:
            raise _fail(str(exc), EXIT_CONNECTION if exc.status == 0 else EXIT_FAILURE_STATUS) from None
    for uid, reason in result.failed:
        typer.echo(f"failed {uid}: FailureReason 0x{reason:04X}", err=True)
    typer.echo(f"STOW-RS to {url}: {len(result.stored)} stored, {len(result.failed)} failed (HTTP {result.status})")
    raise typer.Exit(EXIT_FAILURE_STATUS if result.failed else EXIT_OK)
