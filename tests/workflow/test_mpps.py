"""MPPS add-in: a whole modality workflow scripted with pynetdicom as the modality (worklist query,
N-CREATE, C-STORE into the storage add-in, N-SET COMPLETED, storage commitment of the images answered
on the same association, the worklist entry shows COMPLETED), the
state rules answered with their statuses (through pacskit's MppsScu), and forwarding to another AE."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from typer.testing import CliRunner

from pacskit.cli import app as cli
from pacskit.client import MppsScu, QueryRetrieveScu, apply_keys, in_progress_attributes, performed_series_item
from pacskit.server.server import Server
from pacskit.testing import make_series

from ._util import AE, write_settings

pytestmark = pytest.mark.pynetdicom

SPS = "ScheduledProcedureStepSequence"
MPPS = "1.2.840.10008.3.1.2.3.3"
WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
runner = CliRunner()
SCHEDULED = [
    {"PatientName": "Doe^John", "PatientID": "MP1", "AccessionNumber": "ACC1", "StudyInstanceUID": "1.2.826.0.1.3680043.10.1",
     "RequestedProcedureID": "RP1", "RequestedProcedureDescription": "CT head",
     SPS: [{"Modality": "CT", "ScheduledStationAETitle": "CT1", "ScheduledProcedureStepID": "SPS1",
            "ScheduledProcedureStepStartDate": "20261201", "ScheduledProcedureStepStartTime": "0900",
            "ScheduledProcedureStepDescription": "head plain", "ScheduledProcedureStepStatus": "SCHEDULED"}]},
    {"PatientName": "Roe^Jane", "PatientID": "MP2", "AccessionNumber": "ACC2", "StudyInstanceUID": "1.2.826.0.1.3680043.10.2",
     "RequestedProcedureID": "RP2",
     SPS: [{"Modality": "CT", "ScheduledStationAETitle": "CT2", "ScheduledProcedureStepID": "SPS2",
            "ScheduledProcedureStepStatus": "SCHEDULED"}]},
]


def serve(folder: Path, **mpps: Any) -> Any:
    from pacskit.testing.server import running_server

    write_settings(folder, worklist={}, mpps=mpps)
    source = folder / "scheduled.json"
    source.write_text(json.dumps(SCHEDULED))
    assert runner.invoke(cli, ["worklist", "import", str(source), "--data-dir", str(folder)]).exit_code == 0
    return running_server(folder)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with serve(tmp_path / "pacs") as srv:
        yield srv


def admin(server: Server) -> TestClient:
    api = FastAPI()
    for addin in server.addins:
        router = addin.admin_router()
        if router is not None:
            api.include_router(router, prefix=f"/addins/{addin.name}")
    return TestClient(api)


def test_modality_workflow_with_pynetdicom(server: Server, tmp_path: Path) -> None:
    import threading

    from pynetdicom import AE as PynetdicomAE
    from pynetdicom import evt

    reports: list[tuple[int, Dataset]] = []
    reported = threading.Event()

    def on_report(event: Any) -> tuple[int, None]:
        reports.append((int(event.request.EventTypeID), event.event_information))
        reported.set()
        return 0x0000, None

    modality = PynetdicomAE(ae_title="CT1")
    modality.add_requested_context(WORKLIST_FIND)
    modality.add_requested_context(MPPS)
    modality.add_requested_context(CT_IMAGE, ExplicitVRLittleEndian)
    modality.add_requested_context(STORAGE_COMMITMENT)
    assoc = modality.associate("127.0.0.1", server.port, ae_title=AE,
                               evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    assert assoc.is_established
    try:
        # 1. what is scheduled for this station?
        query = Dataset()
        apply_keys(query, {"PatientName": "", "PatientID": "", "AccessionNumber": "", "StudyInstanceUID": "",
                           "RequestedProcedureID": "", "RequestedProcedureDescription": "",
                           f"{SPS}[0].ScheduledStationAETitle": "CT1", f"{SPS}[0].Modality": "CT",
                           f"{SPS}[0].ScheduledProcedureStepID": "", f"{SPS}[0].ScheduledProcedureStepDescription": "",
                           f"{SPS}[0].ScheduledProcedureStepStatus": ""})
        answers = [ds for status, ds in assoc.send_c_find(query, WORKLIST_FIND) if status and status.Status in (0xFF00, 0xFF01)]
        assert len(answers) == 1 and answers[0].PatientID == "MP1"
        item = answers[0]
        assert item[SPS][0].ScheduledProcedureStepStatus == "SCHEDULED"
        # 2. N-CREATE: the step is IN PROGRESS
        mpps_uid = generate_uid()
        status, _ = assoc.send_n_create(in_progress_attributes(item, station_ae="CT1", pps_id="PPS1"), MPPS, mpps_uid)
        assert status.Status == 0x0000
        # 3. acquire and store the images (storage add-in)
        series_uid = generate_uid()
        files = make_series(tmp_path / "images", 3, 16, 16, patient_id="MP1", patient_name="Doe^John",
                            study_uid=str(item.StudyInstanceUID), series_uid=series_uid)
        for path in files:
            assert assoc.send_c_store(dcmread(path)).Status == 0x0000
        # 4. N-SET COMPLETED with what was performed
        instances = [(str(dcmread(p).SOPClassUID), str(dcmread(p).SOPInstanceUID)) for p in files]
        done = Dataset()
        done.PerformedProcedureStepStatus = "COMPLETED"
        done.PerformedProcedureStepEndDate = "20261201"
        done.PerformedProcedureStepEndTime = "0930"
        done.PerformedSeriesSequence = [performed_series_item(series_uid, instances, retrieve_ae_title=AE)]
        status, _ = assoc.send_n_set(done, MPPS, mpps_uid)
        assert status.Status == 0x0000
        # 5. storage commitment of the images: the report comes back on this association
        request = Dataset()
        request.TransactionUID = generate_uid()
        request.ReferencedSOPSequence = []
        for sop_class, sop_instance in instances:
            ref = Dataset()
            ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = sop_class, sop_instance
            request.ReferencedSOPSequence.append(ref)
        status, _ = assoc.send_n_action(request, 1, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE)
        assert status.Status == 0x0000
        assert reported.wait(20), "no storage commitment report"
        event_type, report = reports[0]
        assert event_type == 1 and report.TransactionUID == request.TransactionUID  # all committed
        assert sorted(r.ReferencedSOPInstanceUID for r in report.ReferencedSOPSequence) == sorted(i for _, i in instances)
        assert "FailedSOPSequence" not in report
        # 6. the worklist entry shows it
        after = [ds for status, ds in assoc.send_c_find(query, WORKLIST_FIND) if status and status.Status in (0xFF00, 0xFF01)]
        assert after[0][SPS][0].ScheduledProcedureStepStatus == "COMPLETED"
    finally:
        assoc.release()
    assert server.store.count("instances") == 3
    http = admin(server)
    performed = http.get(f"/addins/mpps/performed/{mpps_uid}").json()
    assert performed["status"] == "COMPLETED" and performed["calling_ae"] == "CT1" and performed["pps_id"] == "PPS1"
    (wl_id,) = performed["worklist_ids"]
    entry = http.get(f"/addins/worklist/entries/{wl_id}").json()
    assert (entry["step_id"], entry["status"]) == ("SPS1", "COMPLETED")
    other = http.get("/addins/worklist/entries").json()[1]
    assert (other["step_id"], other["status"]) == ("SPS2", "SCHEDULED")
    assert [p["sop_instance_uid"] for p in http.get("/addins/mpps/performed", params={"status": "COMPLETED"}).json()] == [mpps_uid]
    assert http.get("/addins/mpps/performed/1.2.3.4").status_code == 404


async def _violations(port: int) -> dict[str, Any]:
    remote = f"{AE}@127.0.0.1:{port}"
    wl = await QueryRetrieveScu(remote, model="worklist").find({"PatientID": "MP2"})
    item = wl.records[0].dataset
    seen: dict[str, Any] = {}
    async with MppsScu(remote, calling_ae="CT2") as mpps:
        wrong_state = in_progress_attributes(item, station_ae="CT2")
        wrong_state.PerformedProcedureStepStatus = "COMPLETED"
        seen["create completed"] = await mpps.start(wrong_state)
        no_id = in_progress_attributes(item, station_ae="CT2")
        del no_id.PerformedProcedureStepID
        seen["create without PPS ID"] = await mpps.start(no_id)
        empty_ae = in_progress_attributes(item, station_ae="")
        seen["create empty station AE"] = await mpps.start(empty_ae)
        seen["create bad UID"] = await mpps.start(in_progress_attributes(item, station_ae="CT2"), "1.2.abc")
        started = await mpps.start(in_progress_attributes(item, station_ae="CT2"))
        uid = started.affected_sop_instance_uid
        seen["started"] = started
        seen["duplicate"] = await mpps.start(in_progress_attributes(item, station_ae="CT2"), uid)
        seen["set unknown instance"] = await mpps.update(generate_uid(), Dataset())
        bogus = Dataset()
        bogus.PerformedProcedureStepStatus = "PAUSED"
        seen["set unknown state"] = await mpps.update(uid, bogus)
        change = Dataset()
        change.Modality = "MR"
        seen["set not settable"] = await mpps.update(uid, change)
        early = Dataset()
        early.PerformedProcedureStepStatus = "COMPLETED"
        seen["completed without end"] = await mpps.update(uid, early)
        seen["completed without series"] = await mpps.complete(uid, [])
        seen["still in progress"] = await mpps.update(uid, Dataset())
        seen["discontinued"] = await mpps.discontinue(uid)
        seen["scp chooses the UID"] = await mpps.n_create(MPPS, in_progress_attributes(None, station_ae="CT2"))
        seen["after final"] = await mpps.complete(uid, [performed_series_item(generate_uid(), [])])
    after = await QueryRetrieveScu(remote, model="worklist").find({"PatientID": "MP2", f"{SPS}[0].ScheduledProcedureStepStatus": ""})
    seen["worklist status"] = after.records[0].dataset[SPS][0].ScheduledProcedureStepStatus
    return seen


def test_state_rules(server: Server) -> None:
    seen = asyncio.run(_violations(server.port))
    status = {name: result.status for name, result in seen.items() if name != "worklist status"}
    assert status == {
        "create completed": 0x0106,
        "create without PPS ID": 0x0120,
        "create empty station AE": 0x0121,
        "create bad UID": 0x0117,
        "started": 0x0000,
        "duplicate": 0x0111,
        "set unknown instance": 0x0112,
        "set unknown state": 0x0106,
        "set not settable": 0x0106,
        "completed without end": 0x0121,
        "completed without series": 0x0121,
        "still in progress": 0x0000,
        "discontinued": 0x0000,
        "scp chooses the UID": 0x0000,
        "after final": 0x0110,
    }
    chosen = seen["scp chooses the UID"].affected_sop_instance_uid
    assert chosen and chosen != seen["started"].affected_sop_instance_uid
    assert server.addins and next(a for a in server.addins if a.name == "mpps").mpps.get(chosen).status == "IN PROGRESS"
    final = seen["after final"]
    assert final.command.get("ErrorID") == 0xA710
    assert final.error_comment == "Performed Procedure Step Object may no longer be updated"
    assert list(seen["create completed"].command["AttributeIdentifierList"]) == [0x00400252]
    assert "Modality" in seen["set not settable"].error_comment
    assert seen["worklist status"] == "DISCONTINUED"


def _modality(port: int, patient_id: str, station: str, *, complete: bool = True) -> str:
    """A modality's steps: worklist query for ``patient_id``, N-CREATE (and N-SET COMPLETED); the MPPS UID."""

    async def run() -> str:
        wl = await QueryRetrieveScu(f"{AE}@127.0.0.1:{port}", model="worklist").find({"PatientID": patient_id})
        async with MppsScu(f"{AE}@127.0.0.1:{port}", calling_ae=station) as mpps:
            started = await mpps.start(in_progress_attributes(wl.records[0].dataset, station_ae=station))
            assert started.ok
            uid = started.affected_sop_instance_uid
            if complete:
                assert (await mpps.complete(uid, [performed_series_item(generate_uid(), [])])).ok
            return uid

    return asyncio.run(run())


def test_forwarding_to_another_ae(tmp_path: Path) -> None:
    from client._peers import pynetdicom_n_scp

    folder = tmp_path / "pacs"
    with pynetdicom_n_scp() as (address, calls):
        port = address.rsplit(":", 1)[1]
        assert runner.invoke(cli, ["ae", "add", "NSCP", "--host", "127.0.0.1", "--port", port,
                                   "--data-dir", str(folder)]).exit_code == 0
        with serve(folder, forward_to=["NSCP"], forward_retry_delay=0.1) as srv:
            addin = next(a for a in srv.addins if a.name == "mpps")

            uid = _modality(srv.port, "MP1", "CT1")
            deadline = time.monotonic() + 20
            while len(addin.forwarded) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        assert list(addin.forwarded) == [("NSCP", "N-CREATE", uid, 0x0000), ("NSCP", "N-SET", uid, 0x0000)]
        assert ("N-CREATE", uid) in calls and ("N-SET", uid) in calls


def test_forwards_wait_in_the_database_across_a_restart(tmp_path: Path) -> None:
    """The destination is down: the N-CREATE's first attempt fails, the server stops while it waits
    to retry. Both messages stay queued in the database (the N-CREATE with its attempt and error);
    after a restart with the destination up they go out, in order, and leave the queue."""
    from client._peers import pynetdicom_n_scp

    folder = tmp_path / "pacs"
    down = socket_bound()
    try:
        assert runner.invoke(cli, ["ae", "add", "NSCP", "--host", "127.0.0.1", "--port", str(down.getsockname()[1]),
                                   "--data-dir", str(folder)]).exit_code == 0
        with serve(folder, forward_to=["NSCP"], forward_retry_delay=3600) as srv:
            addin = next(a for a in srv.addins if a.name == "mpps")

            uid = _modality(srv.port, "MP1", "CT1")
            api = admin(srv)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                queued = api.get("/addins/mpps/forwards").json()
                if queued and queued[0]["attempts"] == 1:
                    break
                time.sleep(0.05)
            assert [(m["service"], m["sop_instance_uid"], m["attempts"]) for m in queued] == [
                ("N-CREATE", uid, 1), ("N-SET", uid, 0)]
            assert "Connection" in queued[0]["last_error"] or "refused" in queued[0]["last_error"], queued[0]
            assert not addin.forwarded
    finally:
        down.close()
    with pynetdicom_n_scp() as (address, calls):
        port = address.rsplit(":", 1)[1]
        assert runner.invoke(cli, ["ae", "add", "NSCP", "--host", "127.0.0.1", "--port", port, "--replace",
                                   "--data-dir", str(folder)]).exit_code == 0
        write_settings(folder, worklist={}, mpps={"forward_to": ["NSCP"], "forward_retry_delay": 0.1})
        from pacskit.testing.server import running_server

        with running_server(folder) as srv:
            addin = next(a for a in srv.addins if a.name == "mpps")
            deadline = time.monotonic() + 20
            while len(addin.forwarded) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert list(addin.forwarded) == [("NSCP", "N-CREATE", uid, 0x0000), ("NSCP", "N-SET", uid, 0x0000)]
            assert admin(srv).get("/addins/mpps/forwards").json() == []
        assert [c for c in calls if c[0] in ("N-CREATE", "N-SET")] == [("N-CREATE", uid), ("N-SET", uid)]


def test_a_message_every_attempt_failed_for_is_kept_as_failed(tmp_path: Path) -> None:
    folder = tmp_path / "pacs"
    down = socket_bound()
    try:
        assert runner.invoke(cli, ["ae", "add", "NSCP", "--host", "127.0.0.1", "--port", str(down.getsockname()[1]),
                                   "--data-dir", str(folder)]).exit_code == 0
        with serve(folder, forward_to=["NSCP"], forward_attempts=2, forward_retry_delay=0.05) as srv:
            addin = next(a for a in srv.addins if a.name == "mpps")

            uid = _modality(srv.port, "MP2", "CT2", complete=False)
            deadline = time.monotonic() + 20
            while not addin.forwarded and time.monotonic() < deadline:
                time.sleep(0.05)
            assert list(addin.forwarded) == [("NSCP", "N-CREATE", uid, None)]
            failed = admin(srv).get("/addins/mpps/forwards", params={"state": "failed"}).json()
            assert [(m["service"], m["attempts"]) for m in failed] == [("N-CREATE", 2)]
            assert admin(srv).get("/addins/mpps/forwards").json() == []
    finally:
        down.close()


def socket_bound() -> Any:
    """A socket bound to a free port and never listening: connections to that port are refused."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock
