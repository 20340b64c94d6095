"""Accept header negotiation with compression on the fly (WADO-RS instances, series, studies and frames):
lossless syntaxes an installed encoder writes are produced on request, lossy ones never (406 with the
reason), and a lone instance that cannot be converted is a 406 before any byte of the body."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, JPEGLSNearLossless, RLELossless

from pacskit.dicom.transcode import encodable_syntaxes
from pacskit.testing.dicomweb import Running, keep_copies, multipart_parts
from pacskit.testing.synth import make_series

STUDY = "1.2.826.0.1.3680043.8.498.700"
SERIES = "1.2.826.0.1.3680043.8.498.701"
RLE = get_testdata_file("MR_small_RLE.dcm")

pytestmark = pytest.mark.skipif(JPEG2000Lossless not in encodable_syntaxes(), reason="pylibjpeg-openjpeg missing")


def _accept(ts: str) -> dict[str, str]:
    return {"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={ts}'}


@pytest.fixture
def series(pacs: Running, tmp_path: Path) -> list[Path]:
    files = make_series(tmp_path / "s", 3, 40, 48, study_uid=STUDY, series_uid=SERIES, bits=16)
    pacs.ingest(keep_copies(tmp_path, files))
    return files


def _url(ds) -> str:  # type: ignore[no-untyped-def]
    return f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


@pytest.mark.parametrize("target", [RLELossless, JPEG2000Lossless, JPEGLSLossless])
def test_instances_compressed_on_request(pacs: Running, series: list[Path], target: str) -> None:
    original = dcmread(series[0])
    with httpx.Client(base_url=pacs.url) as c:
        r = c.get(_url(original), headers=_accept(target))
        assert r.status_code == 200, r.text
        ((ctype, body),) = multipart_parts(r.headers["content-type"], r.content)
        assert f"transfer-syntax={target}" in ctype
        got = dcmread(io.BytesIO(body))
        assert got.file_meta.TransferSyntaxUID == target and got.SOPInstanceUID == original.SOPInstanceUID
        assert np.array_equal(got.pixel_array, original.pixel_array)
        # a whole series, the client's preference order honoured (a lossy first choice is skipped)
        r = c.get(f"/studies/{STUDY}/series/{SERIES}", headers={
            "Accept": f'multipart/related; type="application/dicom"; transfer-syntax={JPEG2000}, '
                      f'multipart/related; type="application/dicom"; transfer-syntax={target}; q=0.5'})
        assert r.status_code == 200, r.text
        parts = multipart_parts(r.headers["content-type"], r.content)
        assert len(parts) == 3
        originals = {dcmread(f).SOPInstanceUID: dcmread(f) for f in series}
        for _, body in parts:
            got = dcmread(io.BytesIO(body))
            assert got.file_meta.TransferSyntaxUID == target
            assert np.array_equal(got.pixel_array, originals[got.SOPInstanceUID].pixel_array)


def test_lossy_or_unknown_syntaxes_are_406_with_the_reason(pacs: Running, series: list[Path]) -> None:
    with httpx.Client(base_url=pacs.url) as c:
        for ts in (JPEG2000, JPEGBaseline8Bit, JPEGLSNearLossless, "1.2.3.4"):
            r = c.get(f"/studies/{STUDY}", headers=_accept(ts))
            assert r.status_code == 406 and "cannot be sent in" in r.text and ts in r.text
            problem = r.json()  # RFC 9457
            assert r.headers["content-type"] == "application/problem+json"
            assert problem["status"] == 406 and problem["title"] == "Not Acceptable" and ts in problem["detail"]
        # '*': as stored, byte for byte
        r = c.get(_url(dcmread(series[0])), headers=_accept("*"))
        assert multipart_parts(r.headers["content-type"], r.content)[0][1] == series[0].read_bytes()


def test_a_lone_instance_that_cannot_be_converted_is_406_before_the_body(pacs: Running, tmp_path: Path) -> None:
    tiny = make_series(tmp_path / "t", 1, 4, 4)[0]  # too small for openjpeg's resolution levels
    pacs.ingest(keep_copies(tmp_path, [tiny]))
    with httpx.Client(base_url=pacs.url) as c:
        r = c.get(_url(dcmread(tiny)), headers=_accept(JPEG2000Lossless))
        assert r.status_code == 406 and "cannot be sent in JPEG 2000" in r.text
        assert c.get(_url(dcmread(tiny)), headers=_accept(RLELossless)).status_code == 200
        # WADO-URI the same way
        ds = dcmread(tiny)
        q = {"requestType": "WADO", "studyUID": ds.StudyInstanceUID, "seriesUID": ds.SeriesInstanceUID,
             "objectUID": ds.SOPInstanceUID, "contentType": "application/dicom"}
        r = c.get("/wado", params={**q, "transferSyntax": JPEG2000Lossless})
        assert r.status_code == 406 and "cannot be converted" in r.json()["detail"]
        r = c.get("/wado", params={**q, "transferSyntax": RLELossless})
        assert r.status_code == 200 and dcmread(io.BytesIO(r.content)).file_meta.TransferSyntaxUID == RLELossless
    assert not list(Path(pacs.server.store.temp_dir).glob("*.dcm"))


def test_frames_encoded_on_request(pacs: Running, series: list[Path], tmp_path: Path) -> None:
    rle = tmp_path / "rle.dcm"
    shutil.copyfile(RLE, rle)
    pacs.ingest([rle])
    native = dcmread(series[1])
    with httpx.Client(base_url=pacs.url) as c:
        for ds, source in ((native, native), (dcmread(RLE), dcmread(RLE))):
            r = c.get(f"{_url(ds)}/frames/1", headers={"Accept": 'multipart/related; type="image/jp2"'})
            assert r.status_code == 200, r.text
            ((ctype, frame),) = multipart_parts(r.headers["content-type"], r.content)
            assert ctype.startswith("image/jp2") and f"transfer-syntax={JPEG2000Lossless}" in ctype
            back, _ = get_decoder(JPEG2000Lossless).as_array(
                encapsulate([frame]), rows=source.Rows, columns=source.Columns, samples_per_pixel=1,
                bits_allocated=source.BitsAllocated, bits_stored=source.BitsStored,
                pixel_representation=source.PixelRepresentation, photometric_interpretation="MONOCHROME2",
                number_of_frames=1)
            assert np.array_equal(back, source.pixel_array)
        # RLE asked for by syntax on a native instance
        r = c.get(f"{_url(native)}/frames/1",
                  headers={"Accept": f'multipart/related; type="image/dicom-rle"; transfer-syntax={RLELossless}'})
        assert r.status_code == 200 and r.headers["content-type"].startswith('multipart/related; type="image/dicom-rle"')
        # JPEG-LS lossless (image/jls), from native and from RLE pixels: decoded back byte for byte
        for ds in (native, dcmread(RLE)):
            r = c.get(f"{_url(ds)}/frames/1", headers={"Accept": 'multipart/related; type="image/jls"'})
            assert r.status_code == 200, r.text
            ((ctype, frame),) = multipart_parts(r.headers["content-type"], r.content)
            assert ctype.startswith("image/jls") and f"transfer-syntax={JPEGLSLossless}" in ctype
            back, _ = get_decoder(JPEGLSLossless).as_array(
                encapsulate([frame]), rows=ds.Rows, columns=ds.Columns, samples_per_pixel=1,
                bits_allocated=ds.BitsAllocated, bits_stored=ds.BitsStored,
                pixel_representation=ds.PixelRepresentation, photometric_interpretation="MONOCHROME2",
                number_of_frames=1)
            assert np.array_equal(back, ds.pixel_array)
        # baseline JPEG would be lossy: refused, with the syntaxes that can be had
        r = c.get(f"{_url(native)}/frames/1", headers={"Accept": 'multipart/related; type="image/jpeg"'})
        assert r.status_code == 406 and JPEG2000Lossless in r.text
