"""Remote AE resolution and DCMTK-style keys (no network)."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from pacskit.client import KeyError_, RemoteAE, UnknownRemote, apply_keys, parse_key, resolve_remote
from pacskit.server.aetitles import FileAeRegistry


def test_resolve_address_registry_and_errors(tmp_path):
    registry = FileAeRegistry(tmp_path / "ae-titles.toml")
    registry.add(RemoteAE(title="ORTHANC", host="10.0.0.5", port=4242))
    assert resolve_remote("ORTHANC", registry).host == "10.0.0.5"
    remote = resolve_remote("PACS@[::1]:104")
    assert (remote.title, remote.host, remote.port) == ("PACS", "::1", 104)
    with pytest.raises(UnknownRemote, match="not registered"):
        resolve_remote("NOPE", registry)
    with pytest.raises(UnknownRemote):
        resolve_remote("ORTHANC")
    for bad in ("X@host", "X@host:0", "X@host:port", "@host:1", "A" * 17 + "@h:1"):
        with pytest.raises(ValueError):
            resolve_remote(bad)


def test_keys():
    ds = apply_keys(Dataset(), ["PatientName=DOE*", "0010,0020=ID1", "(0008,0050)", "ModalitiesInStudy=CT\\MR",
                                 "ScheduledProcedureStepSequence[0].Modality=MR", "ScheduledProcedureStepSequence.ScheduledStationAETitle"])
    assert ds.PatientName == "DOE*" and ds.PatientID == "ID1" and ds.AccessionNumber == ""
    assert list(ds.ModalitiesInStudy) == ["CT", "MR"]
    item = ds.ScheduledProcedureStepSequence[0]
    assert item.Modality == "MR" and item.ScheduledStationAETitle == ""
    assert parse_key("PatientID") == ([(0x00100020, -1)], "")
    mapped = apply_keys(Dataset(), {"PatientID": None, "ScheduledProcedureStepSequence": {"Modality": "CT"}})
    assert mapped.PatientID == "" and mapped.ScheduledProcedureStepSequence[0].Modality == "CT"
    for bad in ("NoSuchKeyword=1", "PatientName[0].X=1", "zzzz,0010=1"):
        with pytest.raises(KeyError_):
            apply_keys(Dataset(), [bad])
