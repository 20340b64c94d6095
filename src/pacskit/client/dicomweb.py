"""A DICOMweb client (PS3.18): QIDO-RS search, WADO-RS retrieve into files, STOW-RS store from files.

Works against any DICOMweb server (pacskit's add-in, Orthanc, dcm4chee-arc, cloud archives). Bodies
are streamed both ways: a retrieved study is written part by part to files as it arrives, a stored
batch is read from the files as it is sent; memory does not depend on the size of the data.

>>> client = DicomWebClient("http://127.0.0.1:8042/dicom-web", token="eyJ...")
>>> studies = client.search("studies", {"PatientName": "DOE*"})
>>> paths = client.retrieve("1.2.3", into=Path("study"))
>>> result = client.store([Path("a.dcm"), Path("b.dcm")])
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pacskit.client.remote import is_dicomweb_url

DICOM_JSON = "application/dicom+json"
_LEVEL_KEYS = {"studies": "0020000D", "series": "0020000E", "instances": "00080018"}


class DicomWebClientError(RuntimeError):
    """A request failed: ``status`` is the HTTP status (0: no answer), the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class StoreResult:
    """What a STOW-RS request answered: HTTP status, stored and failed SOP Instance UIDs (with the
    FailureReason of each failure)."""

    status: int
    stored: list[str] = field(default_factory=list)
    failed: list[tuple[str, int]] = field(default_factory=list)
    response: dict[str, Any] = field(default_factory=dict)


def _items(obj: Mapping[str, Any], tag: str) -> list[dict[str, Any]]:
    return list(obj.get(tag, {}).get("Value", []) or [])


def _first(obj: Mapping[str, Any], tag: str) -> Any:
    values = obj.get(tag, {}).get("Value") or []
    return values[0] if values else None


class DicomWebClient:
    """One DICOMweb service at ``base_url`` (e.g. ``http://host:8042/dicom-web``).

    ``token``: a bearer token (JWT); ``basic``: (user, password); ``verify``: ``True`` (system CAs),
    a CA file, or ``False``; ``timeout`` in seconds for connecting and between bytes.
    """

    def __init__(self, base_url: str, *, token: str | None = None, basic: tuple[str, str] | None = None,
                 verify: bool | str = True, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if isinstance(verify, str):  # a CA file (httpx wants an SSL context for it)
            import ssl

            verify = ssl.create_default_context(cafile=verify)  # type: ignore[assignment]
        self._http = httpx.Client(base_url=self.base_url, headers=headers, auth=basic, verify=verify,
                                  timeout=httpx.Timeout(timeout))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DicomWebClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            response.read()
            reason = response.text.strip().splitlines()[0] if response.text.strip() else response.reason_phrase
            if response.headers.get("content-type", "").startswith("application/problem+json"):
                try:  # RFC 9457: the reason is the detail
                    reason = str(response.json().get("detail") or response.reason_phrase)
                except ValueError:
                    pass
            raise DicomWebClientError(response.status_code, f"{response.request.method} {response.request.url.path}: "
                                                            f"{response.status_code} {reason}"[:300])
        return response

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._check(self._http.request(method, url, **kwargs))
        except httpx.HTTPError as exc:
            raise DicomWebClientError(0, f"{self.base_url}: {type(exc).__name__}: {exc}") from None

    # --- QIDO-RS ---------------------------------------------------------------------------------------

    def search(self, resource: str, filters: Mapping[str, str] | None = None, *,
               includefield: Sequence[str] = (), limit: int | None = None, offset: int | None = None,
               fuzzy: bool = False) -> list[dict[str, Any]]:
        """QIDO-RS: ``resource`` is ``studies``, ``series``, ``instances`` or a nested path
        (``studies/{uid}/series``); the matches as DICOM JSON objects."""
        params: list[tuple[str, str]] = list((filters or {}).items())
        params += [("includefield", f) for f in includefield]
        if limit is not None:
            params.append(("limit", str(limit)))
        if offset is not None:
            params.append(("offset", str(offset)))
        if fuzzy:
            params.append(("fuzzymatching", "true"))
        r = self._request("GET", f"/{resource.strip('/')}", params=params, headers={"Accept": DICOM_JSON})
        return r.json() if r.content.strip() else []

    # --- WADO-RS -----------------------------------------------------------------------------------------

    def _resource(self, study: str, series: str | None, instance: str | None) -> str:
        path = f"/studies/{study}"
        if series:
            path += f"/series/{series}"
            if instance:
                path += f"/instances/{instance}"
        elif instance:
            raise ValueError("an instance needs its series")
        return path

    def metadata(self, study: str, series: str | None = None, instance: str | None = None) -> list[dict[str, Any]]:
        """WADO-RS metadata (DICOM JSON, bulk data as BulkDataURIs)."""
        r = self._request("GET", self._resource(study, series, instance) + "/metadata", headers={"Accept": DICOM_JSON})
        return list(r.json())

    def iter_retrieve(self, study: str, series: str | None = None, instance: str | None = None, *,
                      transfer_syntax: str = "*") -> Iterator[Iterator[bytes]]:
        """The instances of a study / series / instance, each as an iterator of byte pieces (consume
        each before asking for the next: they come from one streamed response)."""
        accept = f'multipart/related; type="application/dicom"; transfer-syntax={transfer_syntax}'
        try:
            with self._http.stream("GET", self._resource(study, series, instance), headers={"Accept": accept}) as r:
                self._check(r)
                boundary = _boundary(r.headers.get("content-type", ""))
                yield from _split_multipart(r.iter_bytes(), boundary)
        except httpx.HTTPError as exc:
            raise DicomWebClientError(0, f"{self.base_url}: {type(exc).__name__}: {exc}") from None

    def retrieve(self, study: str, series: str | None = None, instance: str | None = None, *, into: Path,
                 transfer_syntax: str = "*") -> list[Path]:
        """WADO-RS into the folder ``into`` (one ``.dcm`` file per instance, named by number as they
        arrive, renamed to their SOP Instance UID once read); the written paths."""
        into.mkdir(parents=True, exist_ok=True)
        out = []
        for n, part in enumerate(self.iter_retrieve(study, series, instance, transfer_syntax=transfer_syntax)):
            tmp = into / f".part{n}-{uuid.uuid4().hex}"
            with open(tmp, "wb") as fh:
                for piece in part:
                    fh.write(piece)
            final = into / f"{_sop_instance_uid(tmp) or f'instance{n:05d}'}.dcm"
            os.replace(tmp, final)
            out.append(final)
        return out

    # --- STOW-RS -----------------------------------------------------------------------------------------

    def store(self, paths: Iterable[Path], study: str | None = None) -> StoreResult:
        """STOW-RS of Part 10 files, streamed in one request."""
        files = list(paths)
        boundary = uuid.uuid4().hex

        def body() -> Iterator[bytes]:
            for path in files:
                yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                with open(path, "rb") as fh:
                    while chunk := fh.read(1024 * 1024):
                        yield chunk
                yield b"\r\n"
            yield f"--{boundary}--\r\n".encode()

        url = f"/studies/{study}" if study else "/studies"
        headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                   "Accept": DICOM_JSON}
        try:
            r = self._http.post(url, content=body(), headers=headers)
        except httpx.HTTPError as exc:
            raise DicomWebClientError(0, f"{self.base_url}: {type(exc).__name__}: {exc}") from None
        if r.status_code not in (200, 202, 409):
            self._check(r)
        answer = r.json() if r.content.strip() else {}
        result = StoreResult(r.status_code, response=answer)
        for item in _items(answer, "00081199"):
            result.stored.append(str(_first(item, "00081155")))
        for item in _items(answer, "00081198"):
            result.failed.append((str(_first(item, "00081155")), int(_first(item, "00081197") or 0)))
        return result


def _boundary(content_type: str) -> bytes:
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        raise DicomWebClientError(0, f"not a multipart answer: {content_type[:100]!r}")
    return m.group(1).encode()


def _split_multipart(chunks: Iterator[bytes], boundary: bytes) -> Iterator[Iterator[bytes]]:
    """The bodies of a multipart stream, each as an iterator of pieces (headers dropped)."""
    delim = b"--" + boundary
    marker = b"\r\n" + delim
    buf = bytearray()
    source = iter(chunks)

    def more() -> bool:
        chunk = next(source, None)
        if chunk is None:
            return False
        buf.extend(chunk)
        return True

    # preamble up to the first delimiter
    while (at := buf.find(delim)) < 0:
        if not more():
            return
    del buf[: at + len(delim)]
    while True:
        while b"\r\n\r\n" not in buf and not buf.startswith(b"--"):
            if not more():
                raise DicomWebClientError(0, "multipart answer ends inside part headers")
        if buf.startswith(b"--"):
            return  # closing delimiter
        del buf[: buf.find(b"\r\n\r\n") + 4]
        finished = False

        def body() -> Iterator[bytes]:
            nonlocal finished
            while True:
                at = buf.find(marker)
                if at >= 0:
                    if at:
                        yield bytes(buf[:at])
                    del buf[: at + len(marker)]
                    finished = True
                    return
                keep = len(marker) - 1
                if len(buf) > keep:
                    yield bytes(buf[:-keep])
                    del buf[:-keep]
                if not more():
                    raise DicomWebClientError(0, "multipart answer ends inside a part")

        part = body()
        yield part
        for _ in part:  # the caller did not read it all
            pass
        if not finished:
            return
        while len(buf) < 2:
            if not more():
                return
        if buf.startswith(b"--"):
            return


def _sop_instance_uid(path: Path) -> str | None:
    try:
        from pydicom import dcmread

        uid = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).get("SOPInstanceUID")
        return str(uid) if uid and re.fullmatch(r"[0-9.]{1,64}", str(uid)) else None
    except Exception:  # noqa: BLE001 - not DICOM: keep the numbered name
        return None


__all__ = ["DicomWebClient", "DicomWebClientError", "StoreResult", "is_dicomweb_url"]
