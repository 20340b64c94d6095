"""Remote search (C-FIND) and the background loader against real peers: Orthanc as the remote PACS
(C-MOVE to this server and C-GET), DCMTK storescp as a send destination; cancel, retry, parallel
jobs, the SSE stream, and a retrieve that survives a server restart."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from pacskit.config.aetitles import FileAeRegistry, RemoteAE
from pacskit.testing.peers import have_dcmtk, have_orthanc, orthanc, storescp
from pacskit.testing.workstation import Workstation, make_studies, workstation

pytestmark = [pytest.mark.orthanc, pytest.mark.skipif(not have_orthanc(), reason="Orthanc is not installed")]

REMOTE_SLICES = (12, 4)  # slices of the two remote studies


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The workstation server and an Orthanc that knows it (C-MOVE destination PACSKIT), loaded with
    two studies of patients REMOTE^PATIENT1 and REMOTE^PATIENT2."""
    tmp = Path(tmp_path_factory.mktemp("remote"))
    with workstation(tmp / "local", studies=1) as ws:
        with orthanc(tmp / "orthanc", modalities={"pacskit": ["PACSKIT", "127.0.0.1", ws.dicom_port]}) as peer:
            studies = []
            for n, slices in enumerate(REMOTE_SLICES, 1):
                files = make_studies(tmp / f"remote{n}", 1, slices=slices)[0]
                # distinct patients for the search

                uid = None
                for path in files:
                    ds = pydicom.dcmread(path)
                    ds.PatientName, ds.PatientID = f"REMOTE^PATIENT{n}", f"RPID{n}"
                    ds.StudyDescription = f"Remote study {n}"
                    ds.save_as(path)
                    peer.post("/instances", path.read_bytes())
                    uid = str(ds.StudyInstanceUID)
                studies.append(uid)
            ws.register("ORTHANC", "127.0.0.1", peer.dicom_port, "the remote PACS")
            yield {"ws": ws, "orthanc": peer, "studies": studies}


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return response.json()  # type: ignore[no-any-return]


def wait_job(ws: Workstation, job_id: int, states: tuple[str, ...], timeout: float = 60) -> dict[str, Any]:
    """Follow GET /api/jobs/events until job ``job_id`` is in one of ``states`` (its first event is
    the current state, sent on connect)."""
    deadline = time.monotonic() + timeout
    with ws.login("viewer") as client, client.stream("GET", "/api/jobs/events", timeout=30) as stream:
        event = None
        for line in stream.iter_lines():  # a keep-alive comment comes at least every 15 s
            if time.monotonic() > deadline:
                break
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "job":
                job = json.loads(line[6:])
                if job["id"] == job_id and job["state"] in states:
                    return job  # type: ignore[no-any-return]
    raise AssertionError(f"job {job_id} never reached {states}")


@pytest.fixture
def silent_ae(remote: dict[str, Any]) -> Iterator[str]:
    """An AE whose port accepts TCP connections (the kernel's backlog) but never answers: jobs to it
    stay connecting until cancelled."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    remote["ws"].register("SILENT", "127.0.0.1", sock.getsockname()[1])
    try:
        yield "SILENT"
    finally:
        sock.close()


def test_nodes_list_the_registry(remote: dict[str, Any]) -> None:
    with remote["ws"].login("viewer") as client:
        nodes = client.get("/api/nodes").json()
    orthanc_node = next(n for n in nodes if n["title"] == "ORTHANC")
    assert orthanc_node["port"] == remote["orthanc"].dicom_port and orthanc_node["description"] == "the remote PACS"


def test_remote_search_sorts_pages_and_filters(remote: dict[str, Any]) -> None:
    with remote["ws"].login("viewer") as client:
        page = client.get("/api/studies", params={"source": "ORTHANC", "sort": "PatientName", "order": "asc"}).json()
        assert page["source"] == "ORTHANC" and page["total"] == 2
        names = [item["00100010"]["Value"][0]["Alphabetic"] for item in page["items"]]
        assert names == ["REMOTE^PATIENT1", "REMOTE^PATIENT2"]
        for item in page["items"]:
            for tag in ("0020000D", "00100020", "00080050", "00080020", "00081030", "00080061", "00201206", "00201208"):
                assert tag in item
        second = client.get("/api/studies", params={"source": "ORTHANC", "sort": "PatientName", "order": "desc",
                                                    "limit": 1, "offset": 1}).json()
        assert second["total"] == 2 and second["items"][0]["00100010"]["Value"][0]["Alphabetic"] == "REMOTE^PATIENT1"
        one = client.get("/api/studies", params={"source": "ORTHANC", "PatientName": "remote^patient2*"}).json()
        assert one["total"] == 1 and one["items"][0]["0020000D"]["Value"] == [remote["studies"][1]]
        assert one["items"][0]["00201208"]["Value"] == [REMOTE_SLICES[1]]
        series = client.get(f"/api/studies/{remote['studies'][0]}/series", params={"source": "ORTHANC"}).json()
        assert len(series["items"]) == 1 and series["items"][0]["00201209"]["Value"] == [REMOTE_SLICES[0]]


def test_remote_unreachable_is_502_naming_the_ae(remote: dict[str, Any]) -> None:
    ws = remote["ws"]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    ws.register("DOWN", "127.0.0.1", sock.getsockname()[1])
    try:
        with ws.login("viewer") as client:
            body = _problem(client.get("/api/studies", params={"source": "DOWN"}), 502)
            assert "DOWN" in body["detail"] and body["source"] == "DOWN"
            _problem(client.get("/api/studies", params={"source": "NOSUCH"}), 404)
            _problem(client.get("/api/studies", params={"sort": "Nonsense"}), 400)
            _problem(client.get("/api/studies", params={"StudyDate": "2024-bad"}), 400)
            _problem(client.get("/api/studies", params={"Bogus": "1"}), 400)
    finally:
        sock.close()


@pytest.mark.parametrize(("method", "index"), [("move", 0), ("get", 1)])
def test_retrieve_from_orthanc(remote: dict[str, Any], method: str, index: int) -> None:
    ws, study = remote["ws"], remote["studies"][index]
    with ws.login("operator") as client:
        created = client.post("/api/jobs", json={"kind": "retrieve", "source": "ORTHANC", "study_uid": study,
                                                 "method": method})
        assert created.status_code == 201, created.text
        job = created.json()
        assert job["state"] in ("queued", "running") and job["source"] == "ORTHANC" and job["method"] == method
    done = wait_job(ws, job["id"], ("done", "failed", "cancelled"))
    assert done["state"] == "done", done
    # named by the C-FIND the job sends before the retrieve
    assert done["patient_name"] == f"REMOTE^PATIENT{index + 1}" and done["description"] == f"Remote study {index + 1}"
    assert done["completed"] == REMOTE_SLICES[index] == done["total"] and done["failed"] == 0
    assert done["rate"] is None or done["rate"] > 0
    # the study is in the local archive, findable by search and DICOMweb
    with ws.login("viewer") as client:
        page = client.get("/api/studies", params={"PatientName": f"REMOTE^PATIENT{index + 1}"}).json()
        assert page["total"] == 1 and page["items"][0]["00201208"]["Value"] == [REMOTE_SLICES[index]]
        instances = client.get(f"/dicom-web/studies/{study}/instances")
        assert instances.status_code == 200 and len(instances.json()) == REMOTE_SLICES[index]


@pytest.mark.skipif(not have_dcmtk(), reason="DCMTK is not installed")
def test_send_to_storescp(remote: dict[str, Any], tmp_path: Path) -> None:
    ws = remote["ws"]
    with storescp(tmp_path / "received") as scp:
        ws.register("STORESCP", "127.0.0.1", scp.port)
        with ws.login("operator") as client:
            _problem(client.post("/api/jobs", json={"kind": "send", "destination": "STORESCP", "study_uid": "1.2.3.4"}), 404)
            job = client.post("/api/jobs", json={"kind": "send", "destination": "STORESCP",
                                                 "study_uid": ws.study_uids[0]}).json()
            assert job["destination"] == "STORESCP" and job["patient_name"] == "TEST^PATIENT1"
        done = wait_job(ws, job["id"], ("done", "failed", "cancelled"))
    assert done["state"] == "done", done
    assert done["completed"] == done["total"] == 5
    assert len(list((tmp_path / "received").glob("*.dcm"))) == 5


def test_parallel_jobs_cancel_and_retry(remote: dict[str, Any], silent_ae: str) -> None:
    ws = remote["ws"]
    body = {"kind": "retrieve", "source": silent_ae, "study_uid": "1.2.3.4.5"}
    with ws.login("operator") as client:
        first, second, third = (client.post("/api/jobs", json=body).json() for _ in range(3))
        # max_parallel = 2: two run (connecting to the silent AE), the third waits
        wait_job(ws, first["id"], ("running",))
        wait_job(ws, second["id"], ("running",))
        assert client.get(f"/api/jobs/{third['id']}").json()["state"] == "queued"
        cancelled = client.delete(f"/api/jobs/{third['id']}").json()
        assert cancelled["state"] == "cancelled"
        _problem(client.delete(f"/api/jobs/{third['id']}"), 409)
        assert client.delete(f"/api/jobs/{first['id']}").status_code == 200
        assert wait_job(ws, first["id"], ("cancelled", "failed", "done"))["state"] == "cancelled"
        # retry: back in the queue, runs again
        assert client.post(f"/api/jobs/{first['id']}/retry").json()["state"] == "queued"
        wait_job(ws, first["id"], ("running",))
        _problem(client.post(f"/api/jobs/{first['id']}/retry"), 409)
        for job in (first, second):
            client.delete(f"/api/jobs/{job['id']}")
            assert wait_job(ws, job["id"], ("cancelled", "failed", "done"))["state"] == "cancelled"
        listed = [j["id"] for j in client.get("/api/jobs").json()]
        assert listed.index(third["id"]) < listed.index(first["id"])  # newest first
        _problem(client.get("/api/jobs/999999"), 404)


def test_failed_retrieve_says_why(remote: dict[str, Any]) -> None:
    ws = remote["ws"]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    ws.register("REFUSING", "127.0.0.1", sock.getsockname()[1])
    try:
        with ws.login("operator") as client:
            job = client.post("/api/jobs", json={"kind": "retrieve", "source": "REFUSING", "study_uid": "1.2.3"}).json()
        failed = wait_job(ws, job["id"], ("failed", "done", "cancelled"))
    finally:
        sock.close()
    assert failed["state"] == "failed" and failed["error"]


def test_retrieve_survives_a_server_restart(tmp_path: Path) -> None:
    """A job running when the server stops is queued again at the next start and completes."""
    with orthanc(tmp_path / "orthanc") as peer:
        files = make_studies(tmp_path / "remote", 1, slices=3)[0]
        for path in files:
            peer.post("/instances", path.read_bytes())

        study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        try:
            with workstation(tmp_path / "ws", studies=0) as ws:
                ws.register("ORTHANC", "127.0.0.1", silent.getsockname()[1])  # not answering yet
                with ws.login("operator") as client:
                    job = client.post("/api/jobs", json={"kind": "retrieve", "source": "ORTHANC", "study_uid": study,
                                                         "method": "get"}).json()
                wait_job(ws, job["id"], ("running",))
            # the server stopped with the job running; ORTHANC is now the real one
            FileAeRegistry(ws.folder / "ae-titles.toml").add(
                RemoteAE(title="ORTHANC", host="127.0.0.1", port=peer.dicom_port), replace=True)
            with workstation(tmp_path / "ws", studies=0) as ws:
                done = wait_job(ws, job["id"], ("done", "failed", "cancelled"))
        finally:
            silent.close()
    assert done["state"] == "done" and done["completed"] == 3, done


@pytest.mark.skipif(not have_dcmtk(), reason="DCMTK is not installed")
def test_send_from_a_blob_store_without_local_files(tmp_path: Path) -> None:
    """A blob store without file paths (memory here, S3 alike): each instance is sent from a
    temporary copy."""
    with workstation(tmp_path / "ws", studies=1, slices=3, extra_toml='[storage]\nbackend = "memory"\n') as ws, \
            storescp(tmp_path / "received") as scp:
        assert ws.server.store.instance_path(str(pydicom.dcmread(ws.files[0]).SOPInstanceUID)) is None
        ws.register("STORESCP", "127.0.0.1", scp.port)
        with ws.login("operator") as client:
            job = client.post("/api/jobs", json={"kind": "send", "destination": "STORESCP",
                                                 "study_uid": ws.study_uids[0]}).json()
        done = wait_job(ws, job["id"], ("done", "failed", "cancelled"))
        assert done["state"] == "done" and done["completed"] == 3, done
        assert len(list((tmp_path / "received").glob("*.dcm"))) == 3
        assert not list((ws.folder / "data" / "workstation" / "tmp").iterdir())  # the copies are gone


def test_retrieve_one_series(remote: dict[str, Any]) -> None:
    ws, study = remote["ws"], remote["studies"][1]
    with ws.login("operator") as client:
        series = client.get(f"/api/studies/{study}/series", params={"source": "ORTHANC"}).json()["items"]
        uid = series[0]["0020000E"]["Value"][0]
        _problem(client.post("/api/jobs", json={"kind": "retrieve", "source": "ORTHANC", "study_uid": study,
                                                "level": "SERIES"}), 400)
        job = client.post("/api/jobs", json={"kind": "retrieve", "source": "ORTHANC", "study_uid": study,
                                             "series_uids": [uid], "patient_name": "FROM^SEARCH"}).json()
        assert job["level"] == "SERIES" and job["series_uids"] == [uid] and job["patient_name"] == "FROM^SEARCH"
    done = wait_job(ws, job["id"], ("done", "failed", "cancelled"))
    assert done["state"] == "done" and done["completed"] == REMOTE_SLICES[1] and done["failed"] == 0, done


def test_old_finished_jobs_are_forgotten(tmp_path: Path) -> None:
    from pacskit.addins.workstation.jobs import JobStore, NewJob

    store = JobStore(tmp_path / "jobs.db")
    try:
        old, recent, queued = (store.add(NewJob(kind="send", study_uid="1.2.3", destination="X")) for _ in range(3))
        store.transition(old.id, ("queued",), "done")
        store.transition(recent.id, ("queued",), "failed")
        with store._tx() as db:
            db.execute("UPDATE jobs SET updated_at = 0 WHERE id IN (?, ?)", (old.id, queued.id))
        assert store.purge_finished(before=1000.0) == 1  # the old finished one; never a queued job
        assert [j.id for j in store.recent()] == [queued.id, recent.id]
    finally:
        store.close()
