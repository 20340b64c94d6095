"""DICOMweb add-in: QIDO-RS, WADO-RS, STOW-RS and WADO-URI (PS3.18) on the server's HTTP listener.

Served under ``/dicom-web`` (``[addins.dicomweb] prefix``) on the public listener (``[http]`` in
``server.toml``), backed by the index and blob store of the DIMSE services: QIDO-RS through the C-FIND
query engine (:mod:`.qido`), WADO-RS from the stored files (:mod:`.wado`), STOW-RS through the
durable ingest of C-STORE (:mod:`.stow`), rendered / thumbnail images (:mod:`.render`), WADO-URI
(``/dicom-web/wado``) and the capabilities (``GET``/``OPTIONS`` on ``/dicom-web/``). The conformance,
the media types and what is not supported are in docs/addins/dicomweb.md.

Security: with ``auth = "registry"`` every request needs credentials of a registry entry
(``ae-titles.toml``): ``Authorization: Bearer <JWT>`` validated exactly as DICOM User Identity
(:func:`pacskit.config.tokens.verify_jwt`) for entries with ``user_identity = "jwt"``, or HTTP Basic
for entries with ``user_identity = "password"`` (only over TLS or from loopback). The entry's
``allowed_services`` apply: ``find`` for QIDO-RS, ``get`` for WADO-RS / WADO-URI, ``store`` for
STOW-RS. With ``auth = "none"`` (the default) anyone who reaches the listener may use it; the add-in
refuses to start on a non-loopback plain-HTTP listener unless ``allow_insecure_http`` says so.
``cors_origins`` lets browser viewers (OHIF) on other origins call it. Every retrieval and storage is
in the audit trail (Instances Accessed), as are refused credentials (User Authentication). Every
refusal is an RFC 9457 ``application/problem+json`` answer whose ``detail`` says why, and a log line.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Request, Response
from pydantic import Field

from pacskit.addins.dicomweb import qido, render, stow, wado
from pacskit.addins.dicomweb.common import (
    DICOM,
    DICOM_JSON,
    DICOM_XML,
    MULTIPART,
    OCTET_STREAM,
    DicomWebError,
    check_uid,
    closing,
    dicom_transfer_syntaxes,
    multipart_type,
    new_boundary,
    parse_accept,
    part_header,
)
from pacskit.addins.dicomweb.model import json_to_xml
from pacskit.services import AddIn, AddInOptions, HttpService

log = logging.getLogger("pacskit.addin.dicomweb")


class DicomWebOptions(AddInOptions):
    enabled: bool = Field(False, description="serve DICOMweb (off until asked for: it opens the HTTP listener)")
    prefix: str = Field("/dicom-web", description="path the DICOMweb services are served under")
    public_url: str | None = Field(
        None, description="base URL clients reach the service at (behind a proxy); default: from the request")
    auth: Literal["none", "registry"] = Field(
        "none", description="none: anyone reaching the listener; registry: Bearer JWT or Basic of an ae-titles.toml entry")
    allow_insecure_http: bool = Field(
        False, description="serve on a non-loopback address over plain HTTP (credentials and data in clear)")
    cors_origins: list[str] = Field(default_factory=list, description="origins browsers may call from ('*': any)")
    max_results: int | None = Field(
        10000, ge=1, description="most QIDO-RS matches in one answer (a Warning names what is left); null: no limit")
    bulk_data_threshold: int = Field(1024, ge=0, description="binary values above this many bytes become BulkDataURIs")
    max_part_size: int = Field(4 * 1024**3, ge=1, description="largest STOW-RS part in bytes (413 above)")
    max_parts: int = Field(100000, ge=1, description="most STOW-RS parts in one request")
    duplicate_policy: Literal["reject", "keep-first", "overwrite"] | None = Field(
        None, description="STOW-RS duplicates; null: the storage add-in's duplicate_policy (as C-STORE)")
    ingest_concurrency: int = Field(
        4, ge=1, le=64,
        description="STOW-RS parts ingested at the same time (threads); more helps when flushes are slow")
    tune_malloc: bool = Field(
        True, description="glibc: keep freed large buffers for reuse (mallopt), a third less CPU per GB sent")
    thumbnail_size: int = Field(128, ge=16, le=1024, description="thumbnail viewport (pixels, square)")
    render_cache_size: int = Field(
        32 * 1024 * 1024, ge=0, description="bytes of rendered images / thumbnails kept for reuse (0: none)")


@dataclass(slots=True)
class Caller:
    """Who is calling: the registry entry's title (or ``anonymous``) and from where."""

    user: str
    address: str | None
    allowed: set[str] | None  # None: every service


class DicomWebAddIn(AddIn):
    name = "dicomweb"
    description = "DICOMweb: QIDO-RS, WADO-RS, STOW-RS, WADO-URI on the HTTP listener"
    Options = DicomWebOptions
    options: DicomWebOptions

    async def start(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        # STOW-RS ingests in threads of their own: each waits on fsyncs and a commit, and the shared
        # default pool is also what every other to_thread of the server waits for
        self.ingest_pool = ThreadPoolExecutor(self.options.ingest_concurrency, thread_name_prefix="dicomweb-stow")
        if self.options.tune_malloc:
            _tune_malloc()
        settings = self.base.settings
        host = settings.http.host or settings.host
        tls = bool(settings.http.tls_cert)
        if not tls and not self.options.allow_insecure_http and not _is_loopback(host):
            raise ValueError(
                f"DICOMweb on {host} over plain HTTP: configure [http] tls_cert/tls_key, or set "
                "[addins.dicomweb] allow_insecure_http = true")

    async def stop(self) -> None:
        pool = getattr(self, "ingest_pool", None)
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, True)

    def http_service(self) -> HttpService:
        return HttpService(build_app(self), prefix=self.options.prefix)

    # --- helpers used by the routes ---------------------------------------------------------------

    @property
    def render_cache(self) -> render.RenderCache | None:
        """Rendered images kept for reuse (thumbnails above all); ``None`` when turned off."""
        cache = getattr(self, "_render_cache", None)
        if cache is None and self.options.render_cache_size > 0:
            cache = self._render_cache = render.RenderCache(self.options.render_cache_size)
        return cache

    @property
    def duplicate_policy(self) -> str:
        if self.options.duplicate_policy is not None:
            return self.options.duplicate_policy
        storage = self.base.settings.addins.get("storage", {})
        return str(storage.get("duplicate_policy", "keep-first"))

    def store(self) -> Any:
        if self.base.store is None:
            raise DicomWebError(503, "no data store configured")
        return self.base.store

    async def authenticate(self, request: Any, service: str) -> Caller:
        """The caller of ``request``, allowed to use ``service`` (find / get / store); 401 / 403 else."""
        address = request.client.host if request.client else None
        web_user = await self._web_user(request, service, address)
        if web_user is not None:
            return web_user
        if self.options.auth == "none":
            return Caller("anonymous", address, None)
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        scheme = scheme.lower()
        ae = None
        problem = "no credentials"
        if scheme == "bearer" and credentials:
            ae, problem = await asyncio.to_thread(self._check_bearer, credentials.strip())
        elif scheme == "basic" and credentials:
            if request.url.scheme != "https" and not _is_loopback(address or ""):
                problem = "HTTP Basic only over TLS"
            else:
                ae, problem = await asyncio.to_thread(self._check_basic, credentials.strip())
        if ae is None:
            log.warning("DICOMweb %s %s from %s refused: %s", request.method, request.url.path, address, problem)
            self.base.audit.user_authentication("unknown", success=False, address=address,
                                                description=f"DICOMweb: {problem}")
            raise DicomWebError(401, f"authentication required: {problem}")
        if not ae.may(service):
            log.warning("DICOMweb %s from %s (%s) refused: %s not allowed", request.url.path, ae.title, address, service)
            self.base.audit.security_alert("use-of-restricted-function", f"DICOMweb {service}",
                                           peer_ae=ae.title, peer_address=address)
            raise DicomWebError(403, f"{ae.title} may not use {service}")
        return Caller(ae.title, address, ae.allowed_services)

    async def _web_user(self, request: Any, service: str, address: str | None) -> Caller | None:
        """The caller as the listener's users see it (:attr:`pacskit.services.ServerControl.web_authenticator`,
        installed by the workstation), or ``None`` to go on with this add-in's own ``auth``. While such
        users exist, ``auth = "none"`` no longer means anonymous: their credentials are required."""
        from pacskit.services import WebAuthError

        authenticator = self.base.control.web_authenticator
        if authenticator is None:
            return None
        try:
            user = await authenticator(request, service)
        except WebAuthError as exc:
            raise DicomWebError(exc.status, exc.detail) from None
        if user is not None:
            return Caller(user.name, address, None)
        if self.options.auth == "none":
            raise DicomWebError(401, "authentication required: log in to the workstation or send a bearer token")
        return None

    def _check_bearer(self, token: str) -> tuple[Any, str]:
        from pacskit.config.tokens import verify_jwt

        problem = "no registry entry accepts this token"
        for ae in self.base.ae_titles.all():
            if ae.user_identity != "jwt":
                continue
            why = verify_jwt(token.encode("ascii", "replace"), ae)
            if why is None:
                return ae, ""
            problem = why
        return None, problem

    def _check_basic(self, credentials: str) -> tuple[Any, str]:
        from pacskit.config.passwords import verify_password

        try:
            user, _, password = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None, "malformed Basic credentials"
        for ae in self.base.ae_titles.all():
            if ae.user_identity == "password" and ae.username == user and ae.password_hash:
                if verify_password(password, ae.password_hash):
                    return ae, ""
                return None, f"wrong password for {user[:32]!r}"
        return None, f"unknown user {user[:32]!r}"

    def audit_access(self, caller: Caller, study: str, action: str = "R") -> None:
        self.base.audit.instances_accessed(study, None, user=caller.user, action=action, address=caller.address)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def _tune_malloc() -> None:
    """Keep the WADO-RS file buffers (hundreds of KiB each, freed as soon as they are sent) in the heap.

    By default glibc serves such allocations with a fresh mmap and unmaps them when freed, so every
    stored file sent costs page faults and the kernel zeroing its pages: perf showed ~20% of the CPU
    of a retrieve there, and with a 16 MiB mmap threshold (64 MiB kept on trim) the server's CPU per GB
    sent went from 1.05-1.11 to 0.57-0.82 s (benchmarks/dicomweb.py). Process-wide: the memory kept
    for reuse is bounded by the trim threshold. Nothing happens where glibc is not the allocator."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 16 * 1024 * 1024)
    mallopt(_M_TRIM_THRESHOLD, 64 * 1024 * 1024)


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url(addin: DicomWebAddIn, request: Any) -> str:
    """The URL the service is reached at (for RetrieveURL and BulkDataURI)."""
    if addin.options.public_url:
        return addin.options.public_url.rstrip("/")
    root = request.scope.get("root_path", "")
    netloc = request.url.netloc
    server = request.scope.get("server")
    default = 443 if request.url.scheme == "https" else 80
    if request.url.port is None and server and server[1] and server[1] != default and not netloc.endswith("]"):
        # a Host header without the port (dicomweb-client sends one): the port we were reached on
        netloc = f"{netloc}:{server[1]}"
    return f"{request.url.scheme}://{netloc}{root}".rstrip("/")


def build_app(addin: DicomWebAddIn) -> Any:
    """The ASGI application of the add-in (a FastAPI app: its own error handling and CORS)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="pacskit DICOMweb", docs_url=None, redoc_url=None, openapi_url=None)
    if addin.options.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=addin.options.cors_origins, allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Accept", "Content-Type"],
                           expose_headers=["Warning", "Content-Type", "Content-Location"])

    @app.exception_handler(DicomWebError)
    async def _refused(request: Request, exc: DicomWebError) -> Response:
        level = logging.WARNING if exc.status < 500 else logging.ERROR
        log.log(level, "DICOMweb %s %s -> %d: %s", request.method, request.url.path, exc.status, exc.reason)
        headers = {"WWW-Authenticate": 'Bearer realm="dicom-web"'} if exc.status == 401 else None
        return JSONResponse(problem(exc.status, exc.reason), status_code=exc.status, headers=headers,
                            media_type="application/problem+json")

    def params_of(request: Request) -> list[tuple[str, str]]:
        return list(request.query_params.multi_items())

    # --- QIDO-RS --------------------------------------------------------------------------------

    async def search(request: Request, resource: str, path_keys: dict[str, str]) -> Response:
        caller = await addin.authenticate(request, "find")
        for name, value in path_keys.items():
            check_uid(value, name)
        accept = parse_accept(request.headers.get("accept"))
        as_xml = False
        for r in accept:
            if r.type in (DICOM_JSON, "application/json") or r.type in ("*/*", "application/*"):
                break
            if r.type == MULTIPART and r.params.get("type", "").lower() == DICOM_XML:
                as_xml = True
                break
        else:
            raise DicomWebError(406, "search results are application/dicom+json or multipart/related; type=\"application/dicom+xml\"")
        parsed = qido.parse_search(resource, params_of(request), path_keys, max_results=addin.options.max_results)
        store = addin.store()
        if addin.base.audit.active:
            addin.base.audit.query(qido.STUDY_ROOT_FIND, qido.encoded(parsed), qido.EXPLICIT_VR_LITTLE_ENDIAN,
                                   user=caller.user, address=caller.address)
        result = await asyncio.to_thread(qido.run_search, store, parsed, base_url(addin, request))
        warnings = list(parsed.warnings)
        if result.remaining > 0:
            warnings.append(f'299 pacskit "There are {result.remaining} additional results that can be requested"')
        headers = {"Warning": ", ".join(warnings)} if warnings else {}
        log.debug("QIDO-RS %s by %s: %d matches", request.url.path, caller.user, len(result.items))
        if as_xml:
            boundary = new_boundary()
            body = b"".join(part_header(boundary, DICOM_XML) + json_to_xml(item).encode() + b"\r\n"
                            for item in result.items) + closing(boundary)
            return Response(body, media_type=multipart_type(DICOM_XML, boundary), headers=headers)
        return Response(json.dumps(result.items, separators=(",", ":")).encode(), media_type=DICOM_JSON, headers=headers)

    @app.get("/studies")
    async def search_studies(request: Request) -> Response:
        return await search(request, "studies", {})

    @app.get("/series")
    async def search_series(request: Request) -> Response:
        return await search(request, "series", {})

    @app.get("/instances")
    async def search_instances(request: Request) -> Response:
        return await search(request, "instances", {})

    @app.get("/studies/{study}/series")
    async def search_study_series(request: Request, study: str) -> Response:
        return await search(request, "series", {"StudyInstanceUID": study})

    @app.get("/studies/{study}/instances")
    async def search_study_instances(request: Request, study: str) -> Response:
        return await search(request, "instances", {"StudyInstanceUID": study})

    @app.get("/studies/{study}/series/{series}/instances")
    async def search_series_instances(request: Request, study: str, series: str) -> Response:
        return await search(request, "instances", {"StudyInstanceUID": study, "SeriesInstanceUID": series})

    # --- WADO-RS: instances ------------------------------------------------------------------------

    async def retrieve(request: Request, study: str, series: str | None = None, instance: str | None = None) -> Response:
        caller = await addin.authenticate(request, "get")
        _check_path(study, series, instance)
        accept = parse_accept(request.headers.get("accept"))
        syntaxes = dicom_transfer_syntaxes(accept)
        if syntaxes is None:
            raise DicomWebError(406, 'instances are sent as multipart/related; type="application/dicom"')
        store = addin.store()
        boundary = new_boundary()
        # one thread hop for all that precedes the body (and the body itself when small)
        ready = await asyncio.to_thread(wado.prepare, store, study, series, instance, syntaxes, boundary)
        addin.audit_access(caller, study)
        media_type = multipart_type(DICOM, boundary)
        if ready.whole is not None:
            return Response(ready.whole, media_type=media_type)
        body = wado.stream_instances(store, ready.pieces, boundary, log)
        headers = {"Content-Length": str(ready.length)} if ready.length is not None else None
        return StreamingResponse(body, media_type=media_type, headers=headers)

    @app.get("/studies/{study}")
    async def retrieve_study(request: Request, study: str) -> Response:
        return await retrieve(request, study)

    @app.get("/studies/{study}/series/{series}")
    async def retrieve_series(request: Request, study: str, series: str) -> Response:
        return await retrieve(request, study, series)

    @app.get("/studies/{study}/series/{series}/instances/{instance}")
    async def retrieve_instance(request: Request, study: str, series: str, instance: str) -> Response:
        return await retrieve(request, study, series, instance)

    # --- WADO-RS: metadata -------------------------------------------------------------------------

    async def metadata(request: Request, study: str, series: str | None = None, instance: str | None = None) -> Response:
        caller = await addin.authenticate(request, "get")
        _check_path(study, series, instance)
        accept = parse_accept(request.headers.get("accept"))
        if not any(r.type in (DICOM_JSON, "application/json", "*/*", "application/*") for r in accept):
            raise DicomWebError(406, "metadata is application/dicom+json")
        store = addin.store()
        selection = await asyncio.to_thread(wado.select, store, study, series, instance)
        addin.audit_access(caller, study)
        mapping = {} if series is not None else await asyncio.to_thread(wado.series_uids, store, selection)

        def series_of(item: Any) -> str:
            return series if series is not None else mapping.get(item.pk, "")

        body = wado.stream_metadata(store, selection, base_url(addin, request), study, series_of,
                                    addin.options.bulk_data_threshold)
        return StreamingResponse(body, media_type=DICOM_JSON)

    @app.get("/studies/{study}/metadata")
    async def study_metadata(request: Request, study: str) -> Response:
        return await metadata(request, study)

    @app.get("/studies/{study}/series/{series}/metadata")
    async def series_metadata(request: Request, study: str, series: str) -> Response:
        return await metadata(request, study, series)

    @app.get("/studies/{study}/series/{series}/instances/{instance}/metadata")
    async def instance_metadata(request: Request, study: str, series: str, instance: str) -> Response:
        return await metadata(request, study, series, instance)

    # --- WADO-RS: frames, bulk data, rendered, thumbnail -------------------------------------------

    async def one_instance(request: Request, study: str, series: str, instance: str) -> tuple[Caller, Any, Any]:
        caller = await addin.authenticate(request, "get")
        _check_path(study, series, instance)
        store = addin.store()
        selection = await asyncio.to_thread(wado.select, store, study, series, instance)
        item = (await asyncio.to_thread(selection.page, 0))[0]
        addin.audit_access(caller, study)
        return caller, store, item

    @app.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}")
    async def frames(request: Request, study: str, series: str, instance: str, frames: str) -> Response:
        numbers = wado.frame_list(frames)
        accept = parse_accept(request.headers.get("accept"))
        want_native, compressed = False, []
        for r in accept:
            kind = r.params.get("type", "").lower() if r.type == MULTIPART else r.type
            if r.type == "*/*" or kind in ("", "*/*"):
                compressed.append("*")
                want_native = True
            elif kind == OCTET_STREAM:
                want_native = True
            elif kind.startswith(("image/", "video/")):
                ts = r.params.get("transfer-syntax")
                compressed += [ts] if ts else [t for t, m in wado.FRAME_MEDIA_TYPES.items() if m == kind or kind == "image/*"]
        if not want_native and not compressed:
            raise DicomWebError(406, 'frames are sent as multipart/related; type="application/octet-stream" or their image type')
        _, store, item = await one_instance(request, study, series, instance)
        result = await asyncio.to_thread(wado.read_frames, store, item, numbers, want_native, compressed)
        boundary = new_boundary()
        content_type = result.media_type + (f"; transfer-syntax={result.transfer_syntax}" if result.transfer_syntax else "")
        body = b"".join(part_header(boundary, content_type) + data + b"\r\n" for data in result.data) + closing(boundary)
        return Response(body, media_type=multipart_type(result.media_type, boundary))

    @app.get("/studies/{study}/series/{series}/instances/{instance}/bulk/{path:path}")
    async def bulk(request: Request, study: str, series: str, instance: str, path: str) -> Response:
        _, store, item = await one_instance(request, study, series, instance)
        parts = [p for p in path.split("/") if p]
        if parts == ["7FE00010"] or parts == ["7fe00010"]:
            # pixel data: its frames as they are stored (native: one part, encapsulated: one per frame)
            result = await asyncio.to_thread(_pixel_bulk, store, item)
        else:
            result = [await asyncio.to_thread(wado.read_bulk, store, item, parts)]
        boundary = new_boundary()
        body = b"".join(part_header(boundary, OCTET_STREAM) + data + b"\r\n" for data in result) + closing(boundary)
        return Response(body, media_type=multipart_type(OCTET_STREAM, boundary))

    def _pixel_bulk(store: Any, item: Any) -> list[bytes]:
        from pydicom import dcmread

        with store.blobs.open(item.blob_key) as fh:
            ds = dcmread(fh, stop_before_pixels=True, force=True)
        count = int(ds.get("NumberOfFrames", 1) or 1)
        frames = wado.read_frames(store, item, list(range(1, count + 1)), True, ["*"])
        return [b"".join(frames.data)] if frames.transfer_syntax is None else frames.data

    def image_response(request: Request, data: bytes, media_type: str, etag: str) -> Response:
        """A rendered image with its ETag; 304 when the client has it (thumbnails of a search page)."""
        headers = {"ETag": f'"{etag}"', "Cache-Control": "private, no-cache"}
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(data, media_type=media_type, headers=headers)

    async def rendered(request: Request, study: str, series: str, instance: str, frame: int,
                       viewport: tuple[int, int] | None = None) -> Response:
        params = render.parse_params(params_of(request), parse_accept(request.headers.get("accept")),
                                     default_viewport=viewport)
        _, store, item = await one_instance(request, study, series, instance)
        data = await asyncio.to_thread(render.render_cached, addin.render_cache, store, item, frame, params)
        return image_response(request, data, params.media_type, params.key(item, frame))

    @app.get("/studies/{study}/series/{series}/instances/{instance}/rendered")
    async def instance_rendered(request: Request, study: str, series: str, instance: str) -> Response:
        return await rendered(request, study, series, instance, 1)

    @app.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/rendered")
    async def frame_rendered(request: Request, study: str, series: str, instance: str, frame: str) -> Response:
        numbers = wado.frame_list(frame)
        if len(numbers) != 1:
            raise DicomWebError(400, "one frame is rendered at a time")
        return await rendered(request, study, series, instance, numbers[0])

    async def rendered_many(request: Request, study: str, series: str | None = None) -> Response:
        """A study's or series' instances rendered (first frame), one part each; instances without an
        image (SR, KO, PR...) are left out. Streamed: one render in memory at a time."""
        caller = await addin.authenticate(request, "get")
        _check_path(study, series, None)
        params = render.parse_params(params_of(request), parse_accept(request.headers.get("accept")))
        store = addin.store()
        selection = await asyncio.to_thread(wado.select, store, study, series, None)
        addin.audit_access(caller, study)
        mapping = {} if series is not None else await asyncio.to_thread(wado.series_uids, store, selection)
        base = base_url(addin, request)
        boundary = new_boundary()

        async def body() -> Any:
            last = 0
            while page := await asyncio.to_thread(selection.page, last):
                last = page[-1].pk
                for item in page:
                    try:
                        data = await asyncio.to_thread(render.render_cached, addin.render_cache, store, item, 1, params)
                    except DicomWebError as exc:
                        log.debug("rendered %s: %s left out (%s)", study, item.sop_instance_uid, exc.reason)
                        continue
                    location = (f"{base}/studies/{study}/series/{series or mapping.get(item.pk, '')}"
                                f"/instances/{item.sop_instance_uid}/rendered")
                    yield part_header(boundary, params.media_type, {"Content-Location": location}) + data + b"\r\n"
            yield closing(boundary)

        return StreamingResponse(body(), media_type=multipart_type(params.media_type, boundary))

    @app.get("/studies/{study}/rendered")
    async def study_rendered(request: Request, study: str) -> Response:
        return await rendered_many(request, study)

    @app.get("/studies/{study}/series/{series}/rendered")
    async def series_rendered(request: Request, study: str, series: str) -> Response:
        return await rendered_many(request, study, series)

    async def thumbnail(request: Request, study: str, series: str | None = None, instance: str | None = None,
                        frame: int = 1) -> Response:
        size = addin.options.thumbnail_size
        if instance is not None:
            return await rendered(request, study, series or "", instance, frame, viewport=(size, size))
        # a representative instance (the middle one of the first image series), rendered once and
        # cached: the workstation's search page asks for one per study listed
        caller = await addin.authenticate(request, "get")
        _check_path(study, series, None)
        params = render.parse_params(params_of(request), parse_accept(request.headers.get("accept")),
                                     default_viewport=(size, size))
        store = addin.store()
        candidates = await asyncio.to_thread(render.representatives, store, study, series)
        if not candidates:
            raise DicomWebError(404, f"no such {'series' if series else 'study'} stored")
        addin.audit_access(caller, study)
        problem = None
        for item in candidates:
            try:
                data = await asyncio.to_thread(render.render_cached, addin.render_cache, store, item, 1, params)
            except DicomWebError as exc:  # not an image (SR...), or no decoder: the next candidate
                problem = exc
                continue
            return image_response(request, data, params.media_type, params.key(item, 1))
        assert problem is not None
        raise DicomWebError(404 if problem.status == 404 else problem.status,
                            f"no instance of the {'series' if series else 'study'} can be drawn: {problem.reason}")

    @app.get("/studies/{study}/thumbnail")
    async def study_thumbnail(request: Request, study: str) -> Response:
        return await thumbnail(request, study)

    @app.get("/studies/{study}/series/{series}/thumbnail")
    async def series_thumbnail(request: Request, study: str, series: str) -> Response:
        return await thumbnail(request, study, series)

    @app.get("/studies/{study}/series/{series}/instances/{instance}/thumbnail")
    async def instance_thumbnail(request: Request, study: str, series: str, instance: str) -> Response:
        return await thumbnail(request, study, series, instance)

    @app.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/thumbnail")
    async def frame_thumbnail(request: Request, study: str, series: str, instance: str, frame: str) -> Response:
        numbers = wado.frame_list(frame)
        if len(numbers) != 1:
            raise DicomWebError(400, "one frame's thumbnail at a time")
        return await thumbnail(request, study, series, instance, numbers[0])

    # --- STOW-RS ----------------------------------------------------------------------------------

    async def store_instances(request: Request, study: str | None) -> Response:
        caller = await addin.authenticate(request, "store")
        if study is not None:
            check_uid(study, "StudyInstanceUID")
        boundary, root_type = stow.boundary_of(request.headers.get("content-type"))
        store = addin.store()
        reader = stow.MultipartReader(boundary, store.temp_dir, addin.options.max_part_size, addin.options.max_parts,
                                      root_type)
        parts = await reader.feed_all(request.stream())
        # the instances are ingested a few at a time (each ingest waits for its fsyncs and its commit:
        # overlapping them is what makes a batch fast) by ingest_concurrency lanes, each a thread that
        # takes the next instance, a stretch at a time; answers kept in the order of the parts
        loop = asyncio.get_running_loop()
        try:
            units = stow.units_of(parts, root_type) if root_type == DICOM else await asyncio.to_thread(
                stow.units_of, parts, root_type)
            lanes = stow.IngestLanes(store, units, study, addin.duplicate_policy, log)

            async def lane() -> None:
                while await loop.run_in_executor(addin.ingest_pool, lanes.run):
                    pass

            work = asyncio.gather(*(lane() for _ in range(min(addin.options.ingest_concurrency, len(units)))))
            try:
                await asyncio.shield(work)
            finally:
                if not work.done():  # cancelled (the client went away): no further ingest starts
                    lanes.stop.set()
                    await asyncio.wait([work])  # every ingest ends before the parts are discarded
            results = lanes.results()
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise errors[0]
            outcomes = [r for r in results if isinstance(r, stow.Outcome)]
        finally:
            reader.discard()  # what the ingests did not consume: bulk data parts, parts not reached
        base = base_url(addin, request)
        accept = parse_accept(request.headers.get("accept"))
        as_xml = any(r.type == DICOM_XML for r in accept) and not any(r.type in (DICOM_JSON, "application/json") for r in accept)

        def answer() -> Response:
            """The response, built in a thread: a thousand instances' references are milliseconds of
            work the event loop (serving every other request) need not do."""
            stow.locate(store, outcomes)
            status, body = stow.response(outcomes, base, study)
            if as_xml:
                return Response(json_to_xml(body).encode(), status_code=status, media_type=DICOM_XML)
            return JSONResponse(body, status_code=status, media_type=DICOM_JSON)

        reply = await asyncio.to_thread(answer)
        for s in {o.study_instance_uid for o in outcomes if o.failure is None}:
            addin.audit_access(caller, s, action="C")
        log.info("STOW-RS by %s: %d stored, %d failed", caller.user, sum(o.failure is None for o in outcomes),
                 sum(o.failure is not None for o in outcomes))
        return reply

    @app.post("/studies")
    async def stow_studies(request: Request) -> Response:
        return await store_instances(request, None)

    @app.post("/studies/{study}")
    async def stow_study(request: Request, study: str) -> Response:
        return await store_instances(request, study)

    # --- WADO-URI -------------------------------------------------------------------------------------

    @app.get("/wado")
    async def wado_uri(request: Request) -> Response:
        from pacskit.addins.dicomweb import uri

        caller = await addin.authenticate(request, "get")
        return await uri.handle(addin, request, caller)

    # --- capabilities -------------------------------------------------------------------------------

    @app.api_route("/", methods=["GET", "OPTIONS"])
    async def capabilities(request: Request) -> Response:
        from pacskit.addins.dicomweb.capabilities import wadl

        return Response(wadl(app, base_url(addin, request)), media_type="application/vnd.sun.wadl+xml")

    return app


def problem(status: int, reason: str) -> dict[str, Any]:
    """The RFC 9457 problem details of a refusal: ``detail`` is the one-line reason."""
    from http import HTTPStatus

    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return {"type": "about:blank", "title": title, "status": status, "detail": reason}


def _check_path(study: str, series: str | None, instance: str | None) -> None:
    check_uid(study, "StudyInstanceUID")
    if series is not None:
        check_uid(series, "SeriesInstanceUID")
    if instance is not None:
        check_uid(instance, "SOPInstanceUID")


__all__ = ["DicomWebAddIn", "DicomWebOptions"]
