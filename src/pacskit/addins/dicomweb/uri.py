"""WADO-URI (PS3.18 9): ``GET /dicom-web/wado?requestType=WADO&studyUID=…&seriesUID=…&objectUID=…``.

``contentType`` ``application/dicom`` sends the stored file (``transferSyntax`` converts it, as
WADO-RS does), ``image/jpeg`` (the default for images, PS3.18 9.4.1) or ``image/png`` a rendered frame
(``frameNumber``, ``windowCenter`` + ``windowWidth``, ``rows`` / ``columns`` as a viewport,
``imageQuality``). Not supported: ``anonymize``, ``annotation``, ``region``, ``presentationUID``, and
``contentType`` other than those (a 400 / 406 says so).
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

from pacskit.addins.dicomweb import render, wado
from pacskit.addins.dicomweb.common import DICOM, DicomWebError, MediaRange, check_uid
from pacskit.dicom.transcode import CannotConvert

if TYPE_CHECKING:
    from fastapi import Response

    from pacskit.addins.dicomweb import Caller, DicomWebAddIn

_UNSUPPORTED = ("anonymize", "annotation", "region", "presentationUID", "presentationSeriesUID")


async def handle(addin: DicomWebAddIn, request: Any, caller: Caller) -> Response:
    from fastapi.responses import Response, StreamingResponse  # noqa: F811 - the runtime import

    q = request.query_params
    if q.get("requestType") != "WADO":
        raise DicomWebError(400, "requestType=WADO is required")
    study = check_uid(q.get("studyUID", ""), "studyUID")
    series = check_uid(q.get("seriesUID", ""), "seriesUID")
    instance = check_uid(q.get("objectUID", ""), "objectUID")
    for name in _UNSUPPORTED:
        if name in q:
            raise DicomWebError(400, f"{name} is not supported")
    content_types = [c.strip().split(";")[0].lower() for c in q.get("contentType", "image/jpeg").split(",")]
    store = addin.store()
    selection = await asyncio.to_thread(wado.select, store, study, series, instance)
    item = (await asyncio.to_thread(selection.page, 0))[0]
    addin.audit_access(caller, study)
    for content_type in content_types:
        if content_type in (DICOM, "*/*", "application/*"):
            syntax = q.get("transferSyntax")
            target = wado.choose_syntax(item.transfer_syntax_uid, [syntax] if syntax else ["*"])
            if target is None:
                raise DicomWebError(406, f"the instance cannot be converted to {syntax}")
            if target == item.transfer_syntax_uid:
                fh = await asyncio.to_thread(store.blobs.open, item.blob_key)
            else:
                try:
                    path = await asyncio.to_thread(wado._converted, store, item, target)
                except CannotConvert as exc:
                    raise DicomWebError(406, f"the instance cannot be converted to {syntax}: {exc}"[:300]) from None
                fh = await asyncio.to_thread(open, path, "rb")
                os.unlink(path)  # the open file stays readable

            async def body(fh: Any = fh) -> Any:
                try:
                    while chunk := await asyncio.to_thread(fh.read, wado.CHUNK):
                        yield chunk
                finally:
                    fh.close()

            return StreamingResponse(body(), media_type=DICOM)
        if content_type in render.RENDERED_TYPES:
            params: list[tuple[str, str]] = []
            if "windowCenter" in q or "windowWidth" in q:
                params.append(("window", f"{q.get('windowCenter', '')},{q.get('windowWidth', '')}"))
            if "rows" in q or "columns" in q:
                rows, cols = q.get("rows"), q.get("columns")
                params.append(("viewport", f"{cols or rows},{rows or cols}"))
            if "imageQuality" in q:
                params.append(("quality", q["imageQuality"]))
            try:
                frame = int(q.get("frameNumber", "1"))
            except ValueError:
                raise DicomWebError(400, "frameNumber must be an integer") from None
            rp = render.parse_params(params, [MediaRange(content_type)])
            data = await asyncio.to_thread(render.render_cached, addin.render_cache, store, item, frame, rp)
            return Response(data, media_type=rp.media_type)
    raise DicomWebError(406, "contentType must be application/dicom, image/jpeg or image/png")
