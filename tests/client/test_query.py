"""QueryRetrieveScu against DCMTK dcmqrscp (configured and loaded by the test), wlmscpfs with Debian's
worklist examples, and Orthanc: find at every level in both models, worklist, events, cancel, move
(to another AE, to us, to an unknown AE), get into a folder and a callback."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pydicom
import pytest

from pacskit.client import (
    FindRequest,
    InstanceRecord,
    PatientRecord,
    QueryFailed,
    QueryRetrieveScu,
    SeriesRecord,
    StudyRecord,
    StoreScu,
    WorklistRecord,
)
from pacskit.testing import free_port, have_orthanc, orthanc

from ._peers import WORKLIST_EXAMPLES, wlmscpfs
from .conftest import ME, address


def uid(path: Path, keyword: str) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).get(keyword))


def test_find_every_level_study_root(qrscp, studies):
    scu = QueryRetrieveScu(address(qrscp), calling_ae=ME)
    study = uid(studies["ct"][0], "StudyInstanceUID")
    found = scu.find_sync(["PatientName=DOE*"], level="STUDY")
    assert found.status == 0 and [type(r) for r in found.records] == [StudyRecord]
    rec = found.records[0]
    assert (rec.study_instance_uid, rec.patient_id, rec.patient_name, rec.study_id) == (study, "PK1", "DOE^JOHN", "S1")
    assert found.datasets[0].StudyInstanceUID == study  # the identifier as a pydicom Dataset

    series = scu.find_sync({"StudyInstanceUID": study}, level="SERIES").records
    assert all(isinstance(r, SeriesRecord) for r in series)
    assert sorted(r.series_number for r in series) == [1, 2]
    one_series = next(r.series_instance_uid for r in series if r.series_number == 2)
    images = scu.find_sync({"StudyInstanceUID": study, "SeriesInstanceUID": one_series}, level="IMAGE").records
    assert all(isinstance(r, InstanceRecord) for r in images)
    assert sorted(r.sop_instance_uid for r in images) == sorted(uid(p, "SOPInstanceUID") for p in studies["ct"][3:])


def test_find_patient_root_and_dcmtk_style_keys(qrscp, studies):
    scu = QueryRetrieveScu(address(qrscp), model="patient")
    patients = scu.find_sync(["0010,0020=PK2"], level="PATIENT").records
    assert [(type(r), r.patient_id, r.patient_name) for r in patients] == [(PatientRecord, "PK2", "ROE^JANE")]
    studies_found = scu.find_sync(["(0010,0020)=PK2", "StudyDescription"], level="STUDY").records
    assert [r.study_instance_uid for r in studies_found] == [uid(studies["mr"][0], "StudyInstanceUID")]
    assert studies_found[0].description == "Synthetic MR study"


def test_failure_status_returned_by_find_and_raised_by_iter_find(qrscp):
    """dcmqrscp refuses a SERIES query without the study's unique key (hierarchical model)."""
    scu = QueryRetrieveScu(address(qrscp))
    result = scu.find_sync(level="SERIES")
    assert result.status >= 0xA000 and not result.records

    async def iterate() -> None:
        async for _ in scu.iter_find(level="SERIES"):
            pass

    with pytest.raises(QueryFailed) as info:
        asyncio.run(iterate())
    assert info.value.status == result.status


def test_before_find_edits_the_identifier(qrscp):
    scu = QueryRetrieveScu(address(qrscp))
    seen: list[FindRequest] = []

    def narrow(request: FindRequest) -> None:
        seen.append(request)
        request.identifier.PatientID = "PK2"

    scu.on("before-find", narrow)
    records = scu.find_sync(level="STUDY").records
    assert [r.patient_id for r in records] == ["PK2"]
    assert seen[0].level == "STUDY" and seen[0].service == "C-FIND" and seen[0].model == "study"


def test_limit_sends_c_cancel(qrscp, studies):
    scu = QueryRetrieveScu(address(qrscp))
    study = uid(studies["ct"][0], "StudyInstanceUID")
    series = [r.series_instance_uid for r in scu.find_sync({"StudyInstanceUID": study}, level="SERIES").records]
    everything = scu.find_sync({"StudyInstanceUID": study, "SeriesInstanceUID": "\\".join(series)}, level="IMAGE")
    assert len(everything.records) == 5 and not everything.cancelled
    limited = scu.find_sync({"StudyInstanceUID": study, "SeriesInstanceUID": "\\".join(series)}, level="IMAGE", limit=1)
    assert len(limited.records) == 1
    # dcmqrscp may have sent its final answer before our C-CANCEL arrived; then Success.
    assert limited.status in (0xFE00, 0x0000)
    if limited.status == 0xFE00:
        assert limited.cancelled and "MatchingTerminatedDueToCancelRequest" in qrscp.log_text()


def test_breaking_out_of_iter_find_cancels_and_releases(qrscp):
    """A caller that stops after the first match: C-CANCEL, the peer's final answer, A-RELEASE —
    no abort (dcmqrscp logs 'Association Release')."""
    scu = QueryRetrieveScu(address(qrscp))
    released_before = qrscp.log_text().count("Association Release")

    async def first():
        async with contextlib.aclosing(scu.iter_find(level="STUDY")) as matches:
            async for record in matches:
                return record

    record = asyncio.run(first())
    assert isinstance(record, StudyRecord)
    log = qrscp.log_text()
    assert log.count("Association Release") == released_before + 1
    assert "Abort" not in log[-2000:]


def test_move_to_another_ae_and_to_an_unknown_one(qrscp, receiver, studies):
    scu = QueryRetrieveScu(address(qrscp))
    progress: list = []
    scu.on("progress", progress.append)
    study = uid(studies["mr"][0], "StudyInstanceUID")
    before = len(list(receiver.out_dir.glob("*.dcm")))
    result = scu.move_sync({"StudyInstanceUID": study}, level="STUDY", destination=receiver.ae_title)
    assert result.ok and (result.completed, result.failed) == (2, 0)
    assert len(list(receiver.out_dir.glob("*.dcm"))) == before + 2
    assert progress and progress[-1].status == 0
    unknown = scu.move_sync({"StudyInstanceUID": study}, level="STUDY", destination="NOBODY")
    assert unknown.status == 0xA801 and not unknown.ok


def test_move_to_ourselves_with_a_temporary_scp(qrscp, studies, my_port, tmp_path):
    scu = QueryRetrieveScu(address(qrscp), calling_ae=ME, receive_port=my_port, receive_host="127.0.0.1")
    study = uid(studies["ct"][0], "StudyInstanceUID")
    result = scu.move_sync({"StudyInstanceUID": study}, level="STUDY", into=tmp_path / "in")
    assert result.ok and result.completed == 5 and len(result.received) == 5
    got = sorted(str(pydicom.dcmread(r.path).SOPInstanceUID) for r in result.received)
    assert got == sorted(uid(p, "SOPInstanceUID") for p in studies["ct"])
    assert all(r.path.parent == tmp_path / "in" and ".part" not in r.path.name for r in result.received)
    assert not list((tmp_path / "in").glob("*.part"))


def test_get_into_a_folder_and_into_a_callback(qrscp, studies, tmp_path):
    scu = QueryRetrieveScu(address(qrscp))
    study = uid(studies["ct"][0], "StudyInstanceUID")
    result = scu.get_sync({"StudyInstanceUID": study}, level="STUDY", into=tmp_path / "got")
    assert result.ok and result.completed == 5
    assert sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in (tmp_path / "got").glob("*.dcm")) == sorted(
        uid(p, "SOPInstanceUID") for p in studies["ct"]
    )
    seen: list[tuple[str, str]] = []

    def keep(instance) -> int:
        seen.append((instance.sop_instance_uid, str(instance.dataset.PatientID)))
        return 0

    mr_study = uid(studies["mr"][0], "StudyInstanceUID")
    result = scu.get_sync({"StudyInstanceUID": mr_study}, level="STUDY", into=keep)
    assert result.ok and sorted(seen) == sorted((uid(p, "SOPInstanceUID"), "PK2") for p in studies["mr"])


def test_cancel_event_during_get(qrscp, studies, tmp_path):
    """C-CANCEL sent after the first sub-operation: the retrieve ends (Cancel, or Success when the
    peer had already finished)."""
    scu = QueryRetrieveScu(address(qrscp))
    study = uid(studies["ct"][0], "StudyInstanceUID")

    async def go():
        cancel = asyncio.Event()
        scu.on("received", lambda _: cancel.set())
        return await scu.get({"StudyInstanceUID": study}, level="STUDY", into=tmp_path / "c", cancel=cancel)

    result = asyncio.run(go())
    assert result.status in (0xFE00, 0x0000)
    assert result.completed + result.failed + result.warning <= 5


def _worklist_modalities() -> list[str]:
    out = []
    for dump in WORKLIST_EXAMPLES:
        for line in Path(dump).read_text(errors="replace").splitlines():
            if line.startswith("(0008,0060)"):
                out.append(line.split()[2])
    return out


def test_modality_worklist_through_the_same_api(tmp_path):
    with wlmscpfs(tmp_path / "wl") as peer:
        scu = QueryRetrieveScu(address(peer), model="worklist")
        everything = scu.find_sync()
        assert everything.status == 0 and len(everything.records) == len(WORKLIST_EXAMPLES)
        mr = scu.find_sync(["ScheduledProcedureStepSequence[0].Modality=MR"]).records
        assert len(mr) == _worklist_modalities().count("MR") > 0
        assert all(isinstance(r, WorklistRecord) and r.modality == "MR" for r in mr)
        vivaldi = scu.find_sync({"PatientName": "VIVALDI*"}).records
        expected = sum("VIVALDI^ANTONIO" in Path(d).read_text(errors="replace") for d in WORKLIST_EXAMPLES)
        assert len(vivaldi) == expected > 0
        assert {(r.patient_id, r.patient_name) for r in vivaldi} == {("AV35674", "VIVALDI^ANTONIO")}
        assert "RP454G234" in {r.requested_procedure_id for r in vivaldi}


@pytest.mark.orthanc
@pytest.mark.skipif(not have_orthanc(), reason="Orthanc is not installed")
def test_orthanc_find_get_and_move_to_us(tmp_path, studies):
    port = free_port()
    with orthanc(tmp_path / "orthanc", modalities={"me": [ME, "127.0.0.1", port]}) as peer:
        assert StoreScu(address(peer)).store_sync(studies["ct"]).ok
        scu = QueryRetrieveScu(address(peer), calling_ae=ME, receive_port=port, receive_host="127.0.0.1")
        found = scu.find_sync({"PatientID": "PK1"}, level="STUDY").records
        assert len(found) == 1
        study = found[0].study_instance_uid
        images = scu.find_sync({"StudyInstanceUID": study}, level="IMAGE").records
        assert len(images) == 5
        got = scu.get_sync({"StudyInstanceUID": study}, level="STUDY", into=tmp_path / "got")
        assert got.ok and got.completed == 5 and len(list((tmp_path / "got").glob("*.dcm"))) == 5
        moved = scu.move_sync({"StudyInstanceUID": study}, level="STUDY", into=tmp_path / "moved")
        assert moved.ok and len(moved.received) == 5
        patients = QueryRetrieveScu(address(peer), model="patient").find_sync({"PatientID": "PK*"}, level="PATIENT").records
        assert [p.patient_id for p in patients] == ["PK1"]
