"""Interoperability with the `dicomweb-client` package (written by others): search, retrieve, store."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom import dcmread

from pacskit.testing.dicomweb import Running, keep_copies
from pacskit.testing.synth import make_series

dicomweb_client = pytest.importorskip("dicomweb_client")

STUDY = "1.2.826.0.1.3680043.8.498.500"
SERIES = "1.2.826.0.1.3680043.8.498.501"


@pytest.fixture
def client(pacs: Running):  # type: ignore[no-untyped-def]
    return dicomweb_client.DICOMwebClient(url=pacs.url)


@pytest.fixture
def files(tmp_path: Path, pacs: Running) -> list[Path]:
    out = make_series(tmp_path / "s", 4, 32, 32, study_uid=STUDY, series_uid=SERIES, patient_id="DWC",
                      patient_name="Client^Test", attrs={"StudyDate": "20240301", "WindowCenter": "100",
                                                         "WindowWidth": "400"})
    pacs.ingest(keep_copies(tmp_path, out))
    return out


def test_search(client, files: list[Path]) -> None:  # type: ignore[no-untyped-def]
    studies = client.search_for_studies(search_filters={"PatientID": "DWC"})
    assert [s["0020000D"]["Value"][0] for s in studies] == [STUDY]
    assert client.search_for_studies(search_filters={"PatientID": "NOPE"}) == []
    series = client.search_for_series(study_instance_uid=STUDY, fields=["SeriesDescription"])
    assert [s["0020000E"]["Value"][0] for s in series] == [SERIES]
    instances = client.search_for_instances(study_instance_uid=STUDY, series_instance_uid=SERIES, limit=2, offset=1)
    assert len(instances) == 2
    assert len(client.search_for_instances(search_filters={"PatientName": "client*"})) == 4


def test_retrieve(client, files: list[Path]) -> None:  # type: ignore[no-untyped-def]
    originals = {dcmread(f).SOPInstanceUID: f for f in files}
    study = client.retrieve_study(STUDY)
    assert {ds.SOPInstanceUID for ds in study} == set(originals)
    series = client.retrieve_series(STUDY, SERIES)
    assert len(series) == 4
    uid, path = next(iter(originals.items()))
    ds = client.retrieve_instance(STUDY, SERIES, uid)
    assert ds.PixelData == dcmread(path).PixelData
    meta = client.retrieve_series_metadata(STUDY, SERIES)
    assert {m["00080018"]["Value"][0] for m in meta} == set(originals)
    one = client.retrieve_instance_metadata(STUDY, SERIES, uid)
    assert "BulkDataURI" in one["7FE00010"]
    frames = client.retrieve_instance_frames(STUDY, SERIES, uid, frame_numbers=[1])
    assert frames == [dcmread(path).PixelData]
    bulk = client.retrieve_bulkdata(one["7FE00010"]["BulkDataURI"])
    assert bulk == [dcmread(path).PixelData]
    rendered = client.retrieve_instance_rendered(STUDY, SERIES, uid, media_types=("image/jpeg",),
                                                 params={"viewport": "64,64"})
    from PIL import Image
    assert Image.open(io.BytesIO(rendered)).size == (64, 64)
    png = client.retrieve_instance_frames_rendered(STUDY, SERIES, uid, frame_numbers=[1], media_types=("image/png",))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_store(client, pacs: Running, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    new = make_series(tmp_path / "n", 3, 8, 8, study_uid="1.2.826.0.1.3680043.8.498.600")
    answer = client.store_instances([dcmread(f) for f in new])
    assert len(answer.ReferencedSOPSequence) == 3
    assert pacs.server.store.count("instances") == 3
    assert len(client.search_for_instances(study_instance_uid="1.2.826.0.1.3680043.8.498.600")) == 3
