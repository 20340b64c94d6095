"""DICOMweb add-in over HTTP (httpx): QIDO-RS, WADO-RS, STOW-RS, WADO-URI, capabilities, hostile input."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from pacskit.testing.synth import make_series

from pacskit.addins.dicomweb import wado
from pacskit.testing.dicomweb import Running, keep_copies, multipart_parts

STUDY_A = "1.2.826.0.1.3680043.8.498.100"
STUDY_B = "1.2.826.0.1.3680043.8.498.200"
SERIES_A1 = "1.2.826.0.1.3680043.8.498.101"
SERIES_A2 = "1.2.826.0.1.3680043.8.498.102"
SERIES_B1 = "1.2.826.0.1.3680043.8.498.201"


def parts_of(response: httpx.Response) -> list[tuple[str, bytes]]:
    return multipart_parts(response.headers["content-type"], response.content)


@pytest.fixture
def data(tmp_path: Path, pacs: Running) -> dict[str, list[Path]]:
    a1 = make_series(tmp_path / "a1", 3, 16, 16, study_uid=STUDY_A, series_uid=SERIES_A1, patient_id="PA",
                     patient_name="Doe^John", modality="CT", attrs={"StudyDate": "20240105", "AccessionNumber": "ACC1",
                                                                     "StudyDescription": "Head"})
    a2 = make_series(tmp_path / "a2", 2, 16, 16, study_uid=STUDY_A, series_uid=SERIES_A2, patient_id="PA",
                     patient_name="Doe^John", modality="MR", series_number=2,
                     attrs={"StudyDate": "20240105", "AccessionNumber": "ACC1", "StudyDescription": "Head"})
    b1 = make_series(tmp_path / "b1", 2, 16, 16, study_uid=STUDY_B, series_uid=SERIES_B1, patient_id="PB",
                     patient_name="Roe^Jane", modality="CT", attrs={"StudyDate": "20230610", "AccessionNumber": "ACC2"})
    pacs.ingest(keep_copies(tmp_path, a1 + a2 + b1))
    return {"a1": a1, "a2": a2, "b1": b1}


def test_qido_studies_match_like_cfind(pacs: Running, data: dict) -> None:
    with httpx.Client(base_url=pacs.url) as c:
        r = c.get("/studies")
        assert r.status_code == 200 and r.headers["content-type"] == "application/dicom+json"
        studies = {s["0020000D"]["Value"][0]: s for s in r.json()}
        assert set(studies) == {STUDY_A, STUDY_B}
        a = studies[STUDY_A]
        assert a["00100010"]["Value"] == [{"Alphabetic": "Doe^John"}]
        assert a["00201206"]["Value"] == [2] and a["00201208"]["Value"] == [5]
        assert sorted(a["00080061"]["Value"]) == ["CT", "MR"]
        assert a["00081190"]["Value"] == [f"{pacs.url}/studies/{STUDY_A}"]
        assert a["00080056"]["Value"] == ["ONLINE"]
        # wildcard (PN case-insensitive as in C-FIND), date range, UID list, ModalitiesInStudy
        assert [s["0020000D"]["Value"][0] for s in c.get("/studies", params={"PatientName": "doe*"}).json()] == [STUDY_A]
        assert [s["0020000D"]["Value"][0] for s in c.get("/studies", params={"StudyDate": "20230101-20231231"}).json()] == [STUDY_B]
        both = c.get("/studies", params={"StudyInstanceUID": f"{STUDY_A},{STUDY_B}"}).json()
        assert len(both) == 2
        mr = c.get("/studies", params={"ModalitiesInStudy": "MR"}).json()
        assert [s["0020000D"]["Value"][0] for s in mr] == [STUDY_A]
        # by tag, includefield
        r = c.get("/studies", params={"00100020": "PB", "includefield": "StudyDescription,00081030"})
        assert [s["0020000D"]["Value"][0] for s in r.json()] == [STUDY_B]
        assert "00081030" in r.json()[0]


def test_qido_series_and_instances_nested(pacs: Running, data: dict) -> None:
    with httpx.Client(base_url=pacs.url) as c:
        series = c.get(f"/studies/{STUDY_A}/series").json()
        assert {s["0020000E"]["Value"][0] for s in series} == {SERIES_A1, SERIES_A2}
        assert c.get(f"/studies/{STUDY_A}/series", params={"Modality": "MR"}).json()[0]["0020000E"]["Value"] == [SERIES_A2]
        all_series = c.get("/series", params={"Modality": "CT"}).json()
        assert {s["0020000E"]["Value"][0] for s in all_series} == {SERIES_A1, SERIES_B1}
        assert "00100010" in all_series[0]  # study attributes when the study is not in the path
        inst = c.get(f"/studies/{STUDY_A}/series/{SERIES_A1}/instances").json()
        assert len(inst) == 3 and inst[0]["00280010"]["Value"] == [16]
        assert len(c.get(f"/studies/{STUDY_A}/instances").json()) == 5
        assert len(c.get("/instances").json()) == 7
        assert len(c.get("/instances", params={"InstanceNumber": "2"}).json()) == 3


def test_qido_limit_offset_and_warning(pacs: Running, data: dict) -> None:
    with httpx.Client(base_url=pacs.url) as c:
        first = c.get("/instances", params={"limit": "3"})
        assert len(first.json()) == 3
        assert "4 additional results" in first.headers["warning"]
        rest = c.get("/instances", params={"limit": "10", "offset": "3"})
        assert "warning" not in rest.headers
        uids = [i["00080018"]["Value"][0] for i in first.json() + rest.json()]
        assert len(set(uids)) == 7
        fuzzy = c.get("/studies", params={"fuzzymatching": "true"})
        assert fuzzy.status_code == 200 and "fuzzymatching" in fuzzy.headers["warning"]


def test_qido_xml(pacs: Running, data: dict) -> None:
    with httpx.Client(base_url=pacs.url) as c:
        r = c.get("/studies", params={"PatientID": "PA"}, headers={"Accept": 'multipart/related; type="application/dicom+xml"'})
        assert r.status_code == 200
        parts = parts_of(r)
        assert len(parts) == 1 and parts[0][0].startswith("application/dicom+xml")
        assert b'<DicomAttribute tag="0020000D" vr="UI" keyword="StudyInstanceUID"><Value number="1">' + STUDY_A.encode() in parts[0][1]


@pytest.mark.parametrize("query,status", [
    ({"StudyInstanceUID": "1.2.*"}, 400),
    ({"NoSuchKeyword": "x"}, 400),
    ({"StudyDate": "2024-01-99x"}, 400),
    ({"limit": "-1"}, 400),
    ({"fuzzymatching": "maybe"}, 400),
])
def test_qido_bad_queries_are_400_with_a_reason(pacs: Running, query: dict, status: int) -> None:
    with httpx.Client(base_url=pacs.url) as c:
        r = c.get("/studies", params=query)
        assert r.status_code == status and r.text.strip()


def test_wado_instance_is_the_stored_file(pacs: Running, data: dict) -> None:
    src = data["a1"][0]
    uid = dcmread(src, stop_before_pixels=True).SOPInstanceUID
    with httpx.Client(base_url=pacs.url) as c:
        r = c.get(f"/studies/{STUDY_A}/series/{SERIES_A1}/instances/{uid}",
                  headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        assert r.status_code == 200
        (ctype, body), = parts_of(r)
        assert ctype.startswith("application/dicom")
        assert body == src.read_bytes()
        study = parts_of(c.get(f"/studies/{STUDY_A}", headers={"Accept": 'multipart/related; type="application/dicom"'}))
        assert len(study) == 5
        assert c.get(f"/studies/{STUDY_A}/series/{SERIES_B1}").status_code == 404
        assert c.get("/studies/not-a-uid").status_code == 400
        assert c.get(f"/studies/{STUDY_A}", headers={"Accept": "image/png"}).status_code == 406


def test_wado_converts_on_request_and_406_when_impossible(pacs: Running, data: dict) -> None:
    uid = dcmread(data["b1"][0], stop_before_pixels=True).SOPInstanceUID
    with httpx.Client(base_url=pacs.url) as c:
        url = f"/studies/{STUDY_B}/series/{SERIES_B1}/instances/{uid}"
        r = c.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2'})
        (ctype, body), = parts_of(r)
        assert "transfer-syntax=1.2.840.10008.1.2" in ctype
        import io
        ds = dcmread(io.BytesIO(body))
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2" and ds.SOPInstanceUID == uid
        r = c.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'})
        assert r.status_code == 406 and "cannot be sent" in r.text


def test_metadata_has_bulkdata_uris_and_they_resolve(pacs: Running, data: dict) -> None:
    src = data["a1"][1]
    ds = dcmread(src)
    with httpx.Client(base_url=pacs.url) as c:
        meta = c.get(f"/studies/{STUDY_A}/metadata").json()
        assert len(meta) == 5
        one = [m for m in meta if m["00080018"]["Value"][0] == ds.SOPInstanceUID][0]
        uri = one["7FE00010"]["BulkDataURI"]
        assert uri.startswith(f"{pacs.url}/studies/{STUDY_A}/series/{SERIES_A1}/instances/{ds.SOPInstanceUID}/bulk/")
        (ctype, pixels), = parts_of(c.get(uri))
        assert pixels == ds.PixelData
        frames = parts_of(c.get(f"/studies/{STUDY_A}/series/{SERIES_A1}/instances/{ds.SOPInstanceUID}/frames/1",
                                headers={"Accept": 'multipart/related; type="application/octet-stream"'}))
        assert frames[0][1] == ds.PixelData
        assert c.get(f"/studies/{STUDY_A}/series/{SERIES_A1}/instances/{ds.SOPInstanceUID}/frames/2").status_code == 404


def test_rendered_and_thumbnail(pacs: Running, data: dict) -> None:
    from PIL import Image
    import io

    uid = dcmread(data["a1"][0], stop_before_pixels=True).SOPInstanceUID
    with httpx.Client(base_url=pacs.url) as c:
        base = f"/studies/{STUDY_A}/series/{SERIES_A1}/instances/{uid}"
        r = c.get(f"{base}/rendered", params={"window": "100,200", "viewport": "64,64"})
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(r.content)).size == (64, 64)
        png = c.get(f"{base}/frames/1/rendered", headers={"Accept": "image/png"})
        assert png.headers["content-type"] == "image/png" and Image.open(io.BytesIO(png.content)).size == (16, 16)
        thumb = c.get(f"/studies/{STUDY_A}/thumbnail")
        assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size == (128, 128)
        assert c.get(f"{base}/rendered", params={"window": "1"}).status_code == 400


def _multipart(files: list[bytes], boundary: str = "pacskit-test-boundary") -> tuple[bytes, str]:
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f + b"\r\n" for f in files)
    return body + f"--{boundary}--\r\n".encode(), f'multipart/related; type="application/dicom"; boundary={boundary}'


def test_stow_stores_through_the_ingest(pacs: Running, tmp_path: Path) -> None:
    files = make_series(tmp_path / "s", 3, 8, 8, study_uid="1.2.826.0.1.3680043.8.498.300")
    body, ctype = _multipart([f.read_bytes() for f in files])
    with httpx.Client(base_url=pacs.url) as c:
        r = c.post("/studies", content=body, headers={"Content-Type": ctype})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert len(answer["00081199"]["Value"]) == 3 and "00081198" not in answer
        for item in answer["00081199"]["Value"]:  # each RetrieveURL is the instance's WADO-RS resource
            assert c.get(item["00081190"]["Value"][0]).status_code == 200
        assert pacs.server.store.count("instances") == 3
        # the same again: the storage add-in's policy (keep-first) answers success, nothing new stored
        assert c.post("/studies", content=body, headers={"Content-Type": ctype}).status_code == 200
        assert pacs.server.store.count("instances") == 3
        # into another study's URL: 409, every instance failed with 0xA900
        r = c.post("/studies/1.2.3.4", content=body, headers={"Content-Type": ctype})
        assert r.status_code == 409
        assert {i["00081197"]["Value"][0] for i in r.json()["00081198"]["Value"]} == {0xA900}
        # one good and one garbage part: 202
        other = make_series(tmp_path / "t", 1, 8, 8)[0].read_bytes()
        body2, ctype2 = _multipart([other, b"not dicom at all"])
        r = c.post("/studies", content=body2, headers={"Content-Type": ctype2})
        assert r.status_code == 202
        assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
        assert pacs.server.store.count("instances") == 4


@pytest.mark.parametrize("mangle,status", [
    (lambda body, ctype: (body[:-30], ctype), 400),  # cut before the closing boundary
    (lambda body, ctype: (body.replace(b"--pacskit-test-boundary\r\n", b"--pacskit-test-boundaryX\r\n", 1), ctype), 400),
    (lambda body, ctype: (b"no boundary anywhere" * 1000, ctype), 400),
    (lambda body, ctype: (body, "application/json"), 415),
    (lambda body, ctype: (body, 'multipart/related; type="application/dicom"'), 400),  # no boundary
    (lambda body, ctype: (body.replace(b"application/dicom", b"application/pdf", 1), ctype), 415),
])
def test_stow_hostile_bodies_store_nothing(pacs: Running, tmp_path: Path, mangle, status: int) -> None:
    files = make_series(tmp_path / "h", 2, 8, 8)
    body, ctype = mangle(*_multipart([f.read_bytes() for f in files]))
    with httpx.Client(base_url=pacs.url) as c:
        r = c.post("/studies", content=body, headers={"Content-Type": ctype})
        assert r.status_code == status and r.text.strip()
    assert pacs.server.store.count("instances") == 0
    temp = Path(pacs.server.store.temp_dir)
    assert not list(temp.glob("*.stow"))


def test_wado_uri(pacs: Running, data: dict) -> None:
    src = data["a2"][0]
    uid = dcmread(src, stop_before_pixels=True).SOPInstanceUID
    q = {"requestType": "WADO", "studyUID": STUDY_A, "seriesUID": SERIES_A2, "objectUID": uid}
    with httpx.Client(base_url=pacs.url) as c:
        r = c.get("/wado", params={**q, "contentType": "application/dicom"})
        assert r.status_code == 200 and r.content == src.read_bytes()
        jpeg = c.get("/wado", params=q)
        assert jpeg.headers["content-type"] == "image/jpeg" and jpeg.content[:2] == b"\xff\xd8"
        assert c.get("/wado", params={**q, "requestType": "X"}).status_code == 400
        assert c.get("/wado", params={**q, "objectUID": "1.2.3"}).status_code == 404


def test_capabilities_list_the_routes(pacs: Running) -> None:
    with httpx.Client(base_url=pacs.url) as c:
        r = c.get("/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/vnd.sun.wadl+xml")
        for path in ("studies", "studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
                     "studies/{study}/metadata", "wado"):
            assert f'path="{path}"'.encode() in r.content
        assert c.options("/").status_code == 200


def test_urls_keep_the_port_when_the_host_header_has_none(pacs: Running, data: dict) -> None:
    """dicomweb-client sends ``Host: 127.0.0.1`` without the port: the links must still work."""
    with httpx.Client(base_url=pacs.url) as c:
        r = c.get("/studies", params={"PatientID": "PB"}, headers={"Host": "127.0.0.1"})
        assert r.json()[0]["00081190"]["Value"] == [f"{pacs.url}/studies/{STUDY_B}"]


@pytest.mark.parametrize("whole_body_bytes", [wado.WHOLE_BODY_BYTES, 0], ids=["read-whole", "streamed"])
def test_a_damaged_stored_file_is_never_sent(pacs: Running, data: dict, monkeypatch: pytest.MonkeyPatch,
                                             whole_body_bytes: int) -> None:
    """The body's length is planned from the index: a stored file whose size changed behind the
    store's back is never sent as if it were whole. A small body, read whole before its headers go,
    is refused with a 500 saying why; a streamed one (above ``WHOLE_BODY_BYTES``; 0 streams every
    body) ends early, so the client sees an incomplete body, never a wrong one."""
    monkeypatch.setattr(wado, "WHOLE_BODY_BYTES", whole_body_bytes)
    uid = dcmread(data["b1"][1], stop_before_pixels=True).SOPInstanceUID
    path = pacs.server.store.instance_path(uid)
    assert path is not None
    with open(path, "r+b") as fh:
        fh.truncate(200)
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    if whole_body_bytes:
        with httpx.Client(base_url=pacs.url) as c:
            r = c.get(f"/studies/{STUDY_B}", headers=accept)
        assert r.status_code == 500 and "damaged" in r.text and uid in r.text
    else:
        with httpx.Client(base_url=pacs.url) as c, pytest.raises(httpx.RemoteProtocolError):
            c.get(f"/studies/{STUDY_B}", headers=accept)
    with httpx.Client(base_url=pacs.url) as c:  # the server goes on serving
        assert c.get(f"/studies/{STUDY_A}/series/{SERIES_A1}/instances").status_code == 200


def test_stow_part_above_the_limit_is_413_and_stores_nothing(tmp_path: Path) -> None:
    from pacskit.testing.dicomweb import start_server, write_folder

    folder = write_folder(tmp_path, "max_part_size = 4096\n")
    small = make_series(tmp_path / "small", 1, 8, 8)
    big = make_series(tmp_path / "big", 1, 64, 64)  # 8 KiB of pixels
    body, ctype = _multipart([small[0].read_bytes(), big[0].read_bytes()])
    with start_server(folder) as running, httpx.Client(base_url=running.url) as c:
        r = c.post("/studies", content=body, headers={"Content-Type": ctype})
        assert r.status_code == 413 and "4096" in r.text
        assert running.server.store.count("instances") == 0
        assert not list(Path(running.server.store.temp_dir).glob("*.stow"))


def test_answers_written_from_the_row_equal_those_through_pydicom(pacs: Running, data: dict, tmp_path: Path) -> None:
    from pacskit.addins.dicomweb import qido

    extra = make_series(tmp_path / "pn", 1, 8, 8, patient_id="PN1", patient_name="Yamada^Tarou=山田^太郎=やまだ^たろう",
                        attrs={"SpecificCharacterSet": "ISO_IR 192", "ReferringPhysicianName": "",
                               "StudyDescription": "A\\B"})
    pacs.ingest(keep_copies(tmp_path, extra))
    store = pacs.server.store
    searches = [("studies", [], {}), ("studies", [("includefield", "all")], {}), ("series", [], {}),
                ("series", [("includefield", "all")], {}), ("instances", [("includefield", "all")], {}),
                ("instances", [], {"StudyInstanceUID": STUDY_A}), ("studies", [("PatientID", "PN1")], {})]
    for resource, params, path in searches:
        search = qido.parse_search(resource, params, path, max_results=100)
        fast = qido.run_search(store, search, "http://x/dicom-web")
        slow = qido.run_search(store, search, "http://x/dicom-web", fast=False)
        assert fast.items == slow.items, (resource, params)
