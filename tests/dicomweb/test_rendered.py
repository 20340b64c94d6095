"""Rendered resources at every level (PS3.18 10.4.1.1.3) and thumbnails: study / series rendered as
multipart, the representative instance of a study's thumbnail, the render cache and ETags."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacskit.addins.dicomweb import DicomWebAddIn
from pacskit.testing.dicomweb import Running, keep_copies, multipart_parts
from pacskit.testing.synth import make_series

STUDY = "1.2.826.0.1.3680043.8.498.300"
SR_SERIES = "1.2.826.0.1.3680043.8.498.301"
CT_SERIES = "1.2.826.0.1.3680043.8.498.302"


def _sr(path: Path) -> Path:
    """A Basic Text SR (no pixel data) in series 1 of the study: listed first by SeriesNumber."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, SR_SERIES
    ds.PatientID, ds.PatientName, ds.Modality = "PR1", "Render^Test", "SR"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def study(pacs: Running, tmp_path: Path) -> dict[str, list[Path]]:
    # the CT slices get different pixel values so that the middle one is recognisable
    ct = make_series(tmp_path / "ct", 5, 24, 32, study_uid=STUDY, series_uid=CT_SERIES, patient_id="PR1",
                     patient_name="Render^Test", series_number=2, modality="CT")
    for i, path in enumerate(ct):
        ds = dcmread(path)
        ds.PixelData = np.full((24, 32), i * 100, dtype=np.uint16).tobytes()
        ds.WindowCenter, ds.WindowWidth = 200, 400
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.save_as(path)
    sr = [_sr(tmp_path / "sr.dcm")]
    pacs.ingest(keep_copies(tmp_path, sr + ct))
    return {"ct": ct, "sr": sr}


def _addin(pacs: Running) -> DicomWebAddIn:
    return next(a for a in pacs.server.addins if isinstance(a, DicomWebAddIn))


def _grey(data: bytes) -> float:
    return float(np.asarray(Image.open(io.BytesIO(data)).convert("L")).mean())


def test_study_and_series_rendered_are_multipart_of_every_image(pacs: Running, study: dict) -> None:
    with httpx.Client(base_url=pacs.url) as c:
        r = c.get(f"/studies/{STUDY}/rendered")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith('multipart/related; type="image/jpeg"')
        parts = multipart_parts(r.headers["content-type"], r.content)
        assert len(parts) == 5  # the SR has no image: left out
        for ctype, data in parts:
            assert ctype == "image/jpeg" and Image.open(io.BytesIO(data)).size == (32, 24)
        assert sorted(round(_grey(d) / 10) for _, d in parts) == [0, 6, 13, 19, 26]  # 0..400 in a 0..400 window
        # the same through the series, as PNG, window and viewport applied to every part
        r = c.get(f"/studies/{STUDY}/series/{CT_SERIES}/rendered", params={"viewport": "64,64", "window": "0,2"},
                  headers={"Accept": "image/png"})
        parts = multipart_parts(r.headers["content-type"], r.content)
        assert [t for t, _ in parts] == ["image/png"] * 5
        assert all(Image.open(io.BytesIO(d)).size == (64, 48) for _, d in parts)
        assert sorted(_grey(d) for _, d in parts)[1:] == [255.0] * 4  # all but the 0 slice above the window
        assert c.get(f"/studies/{STUDY}/series/{SR_SERIES}/rendered").content.count(b"Content-Type") == 0
        assert c.get("/studies/1.2.3.999/rendered").status_code == 404
        assert c.get(f"/studies/{STUDY}/rendered", headers={"Accept": "image/gif"}).status_code == 406


def test_study_thumbnail_is_the_middle_image_cached_with_an_etag(pacs: Running, study: dict) -> None:
    cache = _addin(pacs).render_cache
    assert cache is not None
    with httpx.Client(base_url=pacs.url) as c:
        r = c.get(f"/studies/{STUDY}/thumbnail")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        image = Image.open(io.BytesIO(r.content))
        assert image.size == (128, 96)  # 32x24 fitted in the 128x128 thumbnail viewport
        # the SR series comes first by number but has no image: the CT's middle slice (value 200)
        assert abs(_grey(r.content) - 127.5) < 3
        etag = r.headers["etag"]
        hits = cache.hits
        again = c.get(f"/studies/{STUDY}/thumbnail")
        assert again.content == r.content and again.headers["etag"] == etag and cache.hits == hits + 1
        assert c.get(f"/studies/{STUDY}/thumbnail", headers={"If-None-Match": etag}).status_code == 304
        # what a browser's <img> asks for (the workstation's search page)
        browser = c.get(f"/studies/{STUDY}/thumbnail", headers={
            "Accept": "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"})
        assert browser.headers["content-type"] == "image/jpeg" and browser.content == r.content
        series = c.get(f"/studies/{STUDY}/series/{CT_SERIES}/thumbnail")
        assert series.headers["etag"] == etag  # the same representative, the same image
        assert c.get(f"/studies/{STUDY}/series/{SR_SERIES}/thumbnail").status_code == 404
        middle = dcmread(study["ct"][2])
        frame = c.get(f"/studies/{STUDY}/series/{CT_SERIES}/instances/{middle.SOPInstanceUID}/frames/1/thumbnail")
        assert frame.status_code == 200 and frame.content == r.content  # the same image, from the cache
        assert c.get(f"/studies/{STUDY}/series/{CT_SERIES}/instances/{middle.SOPInstanceUID}/frames/2/thumbnail"
                     ).status_code == 404
        assert c.get("/studies/1.2.3.999/thumbnail").status_code == 404


def test_thumbnail_changes_when_the_study_grows(pacs: Running, study: dict, tmp_path: Path) -> None:
    with httpx.Client(base_url=pacs.url) as c:
        first = c.get(f"/studies/{STUDY}/thumbnail").headers["etag"]
        more = make_series(tmp_path / "more", 4, 24, 32, study_uid=STUDY, series_uid=CT_SERIES, patient_id="PR1",
                           patient_name="Render^Test", series_number=2, prefix="MORE")
        for i, path in enumerate(more):
            ds = dcmread(path)
            ds.InstanceNumber = 6 + i
            ds.save_as(path)
        pacs.ingest(more)
        assert c.get(f"/studies/{STUDY}/thumbnail").headers["etag"] != first  # 9 slices: the 5th now
