"""Accept headers as Cornerstone3D / OHIF send them: the part type of multipart/related unquoted
(``type=application/octet-stream``). RFC 9110 wants it quoted, but the most used DICOMweb viewers do
not quote it, and refusing them (400) leaves those viewers without a single image."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
from pydicom import dcmread

from pacskit.addins.dicomweb.common import parse_accept
from pacskit.testing import make_instance
from pacskit.testing.dicomweb import Running, multipart_parts

CORNERSTONE_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"


def test_unquoted_part_type_is_parsed_like_the_quoted_one() -> None:
    unquoted = parse_accept(CORNERSTONE_ACCEPT)
    quoted = parse_accept('multipart/related; type="application/octet-stream"; transfer-syntax=*')
    assert unquoted == quoted
    assert unquoted[0].params == {"type": "application/octet-stream", "transfer-syntax": "*"}


def test_frames_answer_cornerstones_accept_header(pacs: Running, tmp_path: Path) -> None:
    path = make_instance(tmp_path / "a.dcm", rows=8, cols=8)
    ds = dcmread(path)
    pacs.ingest([path])
    url = (f"{pacs.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}/frames/1")
    response = httpx.get(url, headers={"Accept": CORNERSTONE_ACCEPT})
    assert response.status_code == 200, response.text
    [(content_type, body)] = multipart_parts(response.headers["content-type"], response.content)
    assert content_type.startswith("application/octet-stream")
    assert np.array_equal(np.frombuffer(body, dtype="<u2").reshape(8, 8), ds.pixel_array)
