"""Compressed instances through WADO-RS (frames as stored or decoded, conversion on request, the
default syntax), and the QIDO-RS parameters beyond plain keys (sequence matching, includefield=all)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from pacskit.testing.dicomweb import Running, keep_copies, multipart_parts
from pacskit.testing.synth import make_series

JP2 = get_testdata_file("JPEG2000.dcm")  # JPEG 2000, 1024x256 16-bit
RLE = get_testdata_file("MR_small_RLE.dcm")  # RLE Lossless, 64x64 16-bit
pytestmark = pytest.mark.skipif(JP2 is None or RLE is None, reason="pydicom's test files are missing")


def _url(path: str) -> str:
    ds = dcmread(path, stop_before_pixels=True)
    return f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


@pytest.fixture
def compressed(pacs: Running, tmp_path: Path) -> None:
    for src in (JP2, RLE):
        dest = tmp_path / Path(src).name
        shutil.copyfile(src, dest)
        pacs.ingest([dest])


def test_compressed_frames_as_stored_or_decoded(pacs: Running, compressed: None) -> None:
    with httpx.Client(base_url=pacs.url) as c:
        r = c.get(f"{_url(JP2)}/frames/1", headers={"Accept": 'multipart/related; type="image/jp2"'})
        assert r.status_code == 200, r.text
        (ctype, frame), = multipart_parts(r.headers["content-type"], r.content)
        assert ctype.startswith("image/jp2") and "transfer-syntax=1.2.840.10008.1.2.4.91" in ctype
        ds = dcmread(JP2)
        assert frame == next(generate_frames(ds.PixelData, number_of_frames=1))
        r = c.get(f"{_url(RLE)}/frames/1", headers={"Accept": 'multipart/related; type="application/octet-stream"'})
        (ctype, native), = multipart_parts(r.headers["content-type"], r.content)
        assert ctype.startswith("application/octet-stream")
        assert native == dcmread(RLE).pixel_array.astype("<i2" if dcmread(RLE).PixelRepresentation else "<u2").tobytes()
        # only a compressed type the instance is not stored in: nothing can be sent
        r = c.get(f"{_url(RLE)}/frames/1", headers={"Accept": 'multipart/related; type="image/jpeg"'})
        assert r.status_code == 406


def test_instances_converted_on_request_and_by_default(pacs: Running, compressed: None) -> None:
    with httpx.Client(base_url=pacs.url) as c:
        for accept in ('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1',
                       'multipart/related; type="application/dicom"'):  # no parameter: Explicit VR LE
            r = c.get(_url(RLE), headers={"Accept": accept})
            assert r.status_code == 200, r.text
            (ctype, body), = multipart_parts(r.headers["content-type"], r.content)
            ds = dcmread(io.BytesIO(body))
            assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
            assert np.array_equal(ds.pixel_array, dcmread(RLE).pixel_array)
        r = c.get(_url(RLE), headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        (_, body), = multipart_parts(r.headers["content-type"], r.content)
        assert body == Path(RLE).read_bytes()


def test_rendered_compressed(pacs: Running, compressed: None) -> None:
    from PIL import Image

    with httpx.Client(base_url=pacs.url) as c:
        r = c.get(f"{_url(JP2)}/rendered", params={"viewport": "128,128"})
        assert r.status_code == 200
        assert Image.open(io.BytesIO(r.content)).size == (32, 128)  # 256 wide x 1024 high, fitted


def test_sequence_matching_and_includefield_all(pacs: Running, tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.AccessionNumber = "REQ-7"
    item.RequestedProcedureID = "RP1"
    with_request = make_series(tmp_path / "r", 1, 8, 8, series_uid="1.2.826.0.1.3680043.8.498.951",
                               attrs={"RequestAttributesSequence": [item]})
    plain = make_series(tmp_path / "p", 1, 8, 8, series_uid="1.2.826.0.1.3680043.8.498.952")
    pacs.ingest(keep_copies(tmp_path, with_request + plain))
    with httpx.Client(base_url=pacs.url) as c:
        r = c.get("/series", params={"RequestAttributesSequence.AccessionNumber": "REQ-7"})
        assert [s["0020000E"]["Value"][0] for s in r.json()] == ["1.2.826.0.1.3680043.8.498.951"]
        seq = r.json()[0]["00400275"]["Value"][0]
        assert seq["00080050"]["Value"] == ["REQ-7"]
        everything = c.get("/series", params={"includefield": "all"}).json()[0]
        for tag in ("00180015", "00201209", "0008103E", "00100020", "00080020"):
            assert tag in everything
        assert c.get("/series", params={"RequestAttributesSequence.Foo.Bar": "x"}).status_code == 400
