"""Remote AE resolution and DCMTK-style keys (no network)."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from pacskit.client import KeyError_, Peer, RemoteAE, UnknownRemote, apply_keys, parse_key, resolve_remote
from pacskit.config.aetitles import FileAeRegistry


def test_resolve_address_registry_and_errors(tmp_path):
    registry = FileAeRegistry(tmp_path / "ae-titles.toml")
    registry.add(RemoteAE(title="ORTHANC", host="10.0.0.5", port=4242))
    assert resolve_remote("ORTHANC", registry).host == "10.0.0.5"
    remote = resolve_remote("PACS@[::1]:104")
    assert (remote.title, remote.host, remote.port, remote.tls) == ("PACS", "::1", 104, False)
    assert isinstance(remote, Peer)  # no registry entry: nothing else is known about it (and no pydantic)
    assert resolve_remote(remote) is remote
    with pytest.raises(UnknownRemote, match="not registered"):
        resolve_remote("NOPE", registry)
    with pytest.raises(UnknownRemote):
        resolve_remote("ORTHANC")
    for bad in ("X@host", "X@host:0", "X@host:port", "@host:1", "A" * 17 + "@h:1", "A\\B@h:1", "   @h:1"):
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


def test_public_api_is_pinned():
    import pacskit.client as client

    assert sorted(client.__all__) == sorted([
        "AssociationRequest", "ClientEvents", "CommitmentFailure", "CommitmentResult", "EchoScu", "EventReport",
        "FindRequest", "FindResult", "Instance", "InstanceRecord", "InstanceResult", "KeyError_", "Keys",
        "MediaCreationScu", "MediaStatus", "MediaStatusError",
        "MppsScu", "NResult", "NServiceScu", "PatientRecord", "Peer", "PrintFailed", "PrintResult", "PrintScu",
        "QueryFailed", "QueryRetrieveScu",
        "ReceivedInstance", "Record", "RemoteAE", "RemoteSpec", "RetrieveProgress", "RetrieveResult", "Scu",
        "SeriesRecord", "SopReference", "StorageCommitmentScu", "StoreEvent", "StoreProgress", "StoreReport",
        "StoreScu", "StudyRecord", "UnknownRemote", "WorklistRecord", "apply_keys", "in_progress_attributes",
        "parse_key", "performed_series_item", "resolve_remote", "run_sync", "user_identity",
    ])
    for name in client.__all__:
        assert getattr(client, name) is not None


def test_proposed_contexts_follow_the_data():
    from pydicom.uid import ExplicitVRLittleEndian as EX, ImplicitVRLittleEndian as IM, JPEGBaseline8Bit as JPEG

    from pacskit.client.store import Instance, proposed_contexts

    ct, mr = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
    contexts = proposed_contexts([Instance(ct, "1", JPEG), Instance(ct, "2", EX), Instance(mr, "3", IM), Instance(ct, "4", JPEG)])
    assert [(c.abstract_syntax, list(c.transfer_syntaxes)) for c in contexts] == [
        (ct, [JPEG]), (ct, [EX]), (ct, [IM]),   # own syntaxes, then the fallback minus what is already there
        (mr, [IM]), (mr, [EX]),
    ]


def test_events_kinds_and_isolation(caplog):
    from pacskit.client import ClientEvents

    events = ClientEvents(["before-x", "seen"])
    with pytest.raises(ValueError, match="unknown event"):
        events.on("nope", print)
    got = []
    events.on("seen", lambda e: 1 / 0)
    events.on("seen", got.append)
    events.notify("seen", "e")            # a failing observer is logged, the next still runs
    assert got == ["e"] and "failed (ignored)" in caplog.text
    events.on("before-x", lambda e: 1 / 0)
    import asyncio

    with pytest.raises(ZeroDivisionError):  # interventions propagate
        asyncio.run(events.intervene("before-x", "e"))
