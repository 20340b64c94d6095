"""STOW-RS of metadata + bulk data (PS3.18 10.5.1.2): DICOM JSON or Native DICOM Model XML parts whose
BulkDataURIs name other parts, native and compressed pixel data, and the PS3.18 answers when some or
all of the datasets fail (0xC000 in FailedSOPSequence, 202 / 409) or are kept with a warning (0xB006)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from pacskit.addins.dicomweb.model import json_to_xml, to_json
from pacskit.testing.dicomweb import Running, multipart_parts
from pacskit.testing.synth import make_series

BOUNDARY = "stow-metadata-test"


def _body(parts: list[tuple[str, dict[str, str], bytes]], root: str = "application/dicom+json") -> tuple[bytes, str]:
    out = b""
    for ctype, headers, data in parts:
        head = f"--{BOUNDARY}\r\nContent-Type: {ctype}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        out += head.encode() + b"\r\n" + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode(), f'multipart/related; type="{root}"; boundary={BOUNDARY}'


def _metadata(path: Path, pixel_uri: str) -> dict:
    """The DICOM JSON of a file, its Pixel Data a BulkDataURI (as a client like OHIF would send)."""
    ds = dcmread(path)
    obj = to_json(ds, None, threshold=1 << 30)
    obj["7FE00010"] = {"vr": obj["7FE00010"]["vr"], "BulkDataURI": pixel_uri}
    return obj


def _retrieve(c: httpx.Client, ds) -> bytes:  # type: ignore[no-untyped-def]
    r = c.get(f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
              headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert r.status_code == 200, r.text
    ((_, data),) = multipart_parts(r.headers["content-type"], r.content)
    return data


def test_json_metadata_with_native_pixel_data(pacs: Running, tmp_path: Path) -> None:
    # 1100 x 1000 x 16 bits: the pixel part (2.2 MB) goes to a temporary file, the metadata stays in memory
    files = make_series(tmp_path / "s", 2, 1100, 1000, patient_name="Meta^Json")
    metas = [_metadata(f, f"http://client.example/pixels/{i}") for i, f in enumerate(files)]
    parts = [("application/dicom+json", {}, json.dumps(metas).encode())]
    parts += [("application/octet-stream", {"Content-Location": f"http://client.example/pixels/{i}"},
               dcmread(f).PixelData) for i, f in enumerate(files)]
    body, ctype = _body(parts)
    with httpx.Client(base_url=pacs.url) as c:
        r = c.post("/studies", content=body, headers={"Content-Type": ctype})
        assert r.status_code == 200, r.text
        assert len(r.json()["00081199"]["Value"]) == 2
        for f in files:
            sent = dcmread(f)
            got = dcmread(io.BytesIO(_retrieve(c, sent)))
            assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
            assert got.PixelData == sent.PixelData and got.PatientName == "Meta^Json"
            assert got.SOPInstanceUID == sent.SOPInstanceUID and got.Rows == 1100
    assert pacs.server.store.count("instances") == 2
    assert not list(Path(pacs.server.store.temp_dir).glob("*.stow"))


def test_compressed_pixel_data_part_is_encapsulated(pacs: Running, tmp_path: Path) -> None:
    source = get_testdata_file("JPEG2000.dcm")
    ds = dcmread(source)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    obj = _metadata(Path(source), "cid:frame1@client")
    ts = ds.file_meta.TransferSyntaxUID
    body, ctype = _body([("application/dicom+json", {}, json.dumps([obj]).encode()),
                         (f"image/jp2; transfer-syntax={ts}", {"Content-ID": "<frame1@client>"}, frame)])
    with httpx.Client(base_url=pacs.url) as c:
        r = c.post("/studies", content=body, headers={"Content-Type": ctype})
        assert r.status_code == 200, r.text
        got = dcmread(io.BytesIO(_retrieve(c, ds)))
        assert got.file_meta.TransferSyntaxUID == ts
        assert next(generate_frames(got.PixelData, number_of_frames=1)) == frame
        assert np.array_equal(got.pixel_array, ds.pixel_array)


def test_xml_metadata(pacs: Running, tmp_path: Path) -> None:
    f = make_series(tmp_path / "x", 1, 16, 16, patient_name="Xml^Person^Middle")[0]
    xml = json_to_xml(_metadata(f, "http://client.example/px")).encode()
    body, ctype = _body([("application/dicom+xml", {}, xml),
                         ("application/octet-stream", {"Content-Location": "http://client.example/px"},
                          dcmread(f).PixelData)], root="application/dicom+xml")
    with httpx.Client(base_url=pacs.url) as c:
        r = c.post("/studies", content=body, headers={"Content-Type": ctype, "Accept": "application/dicom+json"})
        assert r.status_code == 200, r.text
        sent = dcmread(f)
        got = dcmread(io.BytesIO(_retrieve(c, sent)))
        assert got.PatientName == "Xml^Person^Middle" and got.PixelData == sent.PixelData
        assert got.InstanceNumber == sent.InstanceNumber and got.PixelSpacing == sent.PixelSpacing


def test_failed_datasets_are_reported_and_the_rest_stored(pacs: Running, tmp_path: Path) -> None:
    good, dangling, no_uid, short, undescribed = make_series(tmp_path / "f", 5, 8, 8)
    bad = _metadata(no_uid, "http://c/2")
    del bad["00080018"]
    no_rows = _metadata(undescribed, "http://c/4")
    del no_rows["00280010"]
    metas = [_metadata(good, "http://c/0"), _metadata(dangling, "http://c/missing"), bad,
             _metadata(short, "http://c/3"), no_rows]
    parts = [("application/dicom+json", {}, json.dumps(metas).encode())]
    parts += [("application/octet-stream", {"Content-Location": f"http://c/{i}"}, dcmread(f).PixelData)
              for i, f in ((0, good), (2, no_uid), (4, undescribed))]
    parts.append(("application/octet-stream", {"Content-Location": "http://c/3"}, dcmread(short).PixelData[:-10]))
    body, ctype = _body(parts)
    with httpx.Client(base_url=pacs.url) as c:
        r = c.post("/studies", content=body, headers={"Content-Type": ctype})
        assert r.status_code == 202, r.text
        answer = r.json()
        assert [i["00081155"]["Value"][0] for i in answer["00081199"]["Value"]] == [dcmread(good).SOPInstanceUID]
        failed = answer["00081198"]["Value"]
        assert [i["00081197"]["Value"][0] for i in failed] == [0xC000] * 4
        assert failed[0]["00081155"]["Value"] == [dcmread(dangling).SOPInstanceUID]
        assert failed[2]["00081155"]["Value"] == [dcmread(short).SOPInstanceUID]  # 10 bytes short of its Rows x Columns
        assert pacs.server.store.count("instances") == 1
        # every dataset failing: 409
        body, ctype = _body(parts[:1])
        r = c.post("/studies", content=body, headers={"Content-Type": ctype})
        assert r.status_code == 409 and len(r.json()["00081198"]["Value"]) == 5 and "00081199" not in r.json()
    assert pacs.server.store.count("instances") == 1
    assert not list(Path(pacs.server.store.temp_dir).glob("*.stow"))


def test_malformed_metadata_bodies_store_nothing(pacs: Running, tmp_path: Path) -> None:
    f = make_series(tmp_path / "m", 1, 8, 8)[0]
    meta = json.dumps([_metadata(f, "http://c/0")]).encode()
    pixels = dcmread(f).PixelData
    cases = [
        ([("application/dicom+json", {}, b"[{not json"), ("application/octet-stream", {"Content-Location": "http://c/0"}, pixels)], 400),
        ([("application/dicom+json", {}, meta), ("application/octet-stream", {}, pixels)], 400),  # no location
        ([("application/dicom+json", {}, b'["a string"]')], 400),
        ([("application/dicom+json", {}, meta), ("application/pdf", {"Content-Location": "http://c/0"}, pixels)], 415),
        ([("application/dicom+xml", {}, b'<!DOCTYPE x [<!ENTITY a "b">]><NativeDicomModel/>')], 400),
    ]
    with httpx.Client(base_url=pacs.url) as c:
        for parts, status in cases:
            body, ctype = _body(parts)
            r = c.post("/studies", content=body, headers={"Content-Type": ctype})
            assert r.status_code == status and r.text.strip(), (parts[0][2][:30], r.status_code, r.text)
    assert pacs.server.store.count("instances") == 0
    assert not list(Path(pacs.server.store.temp_dir).glob("*.stow"))


def test_a_different_copy_of_a_stored_instance_is_a_warning(pacs: Running, tmp_path: Path) -> None:
    f = make_series(tmp_path / "d", 1, 8, 8)[0]
    boundary_body = b"--b\r\nContent-Type: application/dicom\r\n\r\n%s\r\n--b--\r\n"
    ctype = 'multipart/related; type="application/dicom"; boundary=b'
    changed = tmp_path / "changed.dcm"
    shutil.copyfile(f, changed)
    ds = dcmread(changed)
    ds.PatientName = "Changed^Name"
    ds.save_as(changed)
    with httpx.Client(base_url=pacs.url) as c:
        assert c.post("/studies", content=boundary_body % f.read_bytes(), headers={"Content-Type": ctype}).status_code == 200
        same = c.post("/studies", content=boundary_body % f.read_bytes(), headers={"Content-Type": ctype})
        assert same.status_code == 200 and "00081196" not in same.json()["00081199"]["Value"][0]
        r = c.post("/studies", content=boundary_body % changed.read_bytes(), headers={"Content-Type": ctype})
        assert r.status_code == 202
        assert r.json()["00081199"]["Value"][0]["00081196"]["Value"] == [0xB006]
    assert dcmread(pacs.server.store.open_instance(ds.SOPInstanceUID)).PatientName != "Changed^Name"
