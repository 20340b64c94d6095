"""The prefetch add-in with Orthanc as the remote PACS holding the priors.

Each trigger (a worklist step, an MPPS N-CREATE, an HL7 ADT^A04, a study arriving from DCMTK storescu)
brings the patient's prior studies that the rules pick (the newest two CTs of the last ten years)
into the archive, and nothing else; with the remote down, the job waits in the durable queue through a
kill -9 of the server and is done once the remote is up.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from sqlalchemy import select

from pacskit.addins.hl7 import Hl7AddIn
from pacskit.addins.mpps import MppsAddIn
from pacskit.addins.prefetch import PrefetchAddIn
from pacskit.addins.storage import StorageAddIn
from pacskit.addins.verification import VerificationAddIn
from pacskit.addins.worklist import WorklistAddIn
from pacskit.client import MppsScu, in_progress_attributes
from pacskit.config.aetitles import FileAeRegistry, RemoteAE
from pacskit.store import Patient, Study
from pacskit.store.workflow.worklist import WorklistStore
from pacskit.testing.peers import (
    OrthancPeer,
    count_store_successes,
    free_port,
    have_dcmtk,
    have_orthanc,
    orthanc,
    run_storescu,
    wait_for_port,
)
from pacskit.testing.server import running_server
from pacskit.testing.synth import make_series

pytestmark = [pytest.mark.dcmtk, pytest.mark.slow]

AE = "PREFETCH"
ADDINS = [VerificationAddIn, StorageAddIn, WorklistAddIn, MppsAddIn, Hl7AddIn, PrefetchAddIn]


@pytest.fixture(autouse=True)
def _peers_needed() -> None:
    if not have_dcmtk() or not have_orthanc():
        pytest.skip("DCMTK and Orthanc are needed")


def _wait(condition, what: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _years_ago(years: float) -> str:
    return (dt.date.today() - dt.timedelta(days=int(365.25 * years))).strftime("%Y%m%d")


def _priors(tmp: Path, patient_id: str) -> dict[str, list[Path]]:
    """A CT last year, a CT six years ago, an MR two years ago, a CT twelve years ago."""
    return {
        name: make_series(tmp / patient_id / name, count, 16, 16, patient_id=patient_id, modality=modality,
                          attrs={"StudyDate": _years_ago(years), "StudyDescription": name})
        for name, count, modality, years in (("ct-1y", 3, "CT", 1), ("ct-6y", 2, "CT", 6),
                                             ("mr-2y", 2, "MR", 2), ("ct-12y", 2, "CT", 12))
    }


def _study_uid(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def _studies_of(store, patient_id: str) -> set[str]:  # type: ignore[no-untyped-def]
    with store.index.reading() as s:
        return set(s.scalars(select(Study.study_instance_uid).join(Patient, Study.patient_fk == Patient.pk)
                             .where(Patient.patient_id == patient_id)))


def _settings(folder: Path, port: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "server.toml").write_text(
        f'ae_title = "{AE}"\nport = {port}\nopen_mode = true\n'
        "[addins.hl7]\nenabled = true\nport = 0\n"
        "[addins.prefetch]\nenabled = true\nremote = \"ORTHANC\"\nmax_studies = 2\nmodalities = [\"CT\"]\n"
        "max_age_days = 3650\nscan_interval = 0.2\nretry_initial = 0.2\nretry_max = 0.5\n")


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OrthancPeer, dict[str, dict[str, list[Path]]]]]:
    tmp = tmp_path_factory.mktemp("prefetch-remote")
    patients = {pid: _priors(tmp, pid) for pid in ("PF-WL", "PF-MPPS", "PF-HL7", "PF-STUDY", "PF-ORM")}
    with orthanc(tmp / "orthanc") as orth:
        for studies in patients.values():
            for files in studies.values():
                for path in files:
                    orth.post("/instances", path.read_bytes())
        yield orth, patients


def _expected(studies: dict[str, list[Path]]) -> set[str]:
    return {_study_uid(studies["ct-1y"]), _study_uid(studies["ct-6y"])}  # the MR and the 12-year-old CT: no


async def _hl7(port: int, text: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x0b" + text.encode() + b"\x1c\x0d")
    await writer.drain()
    await reader.readuntil(b"\x0b")
    answer = (await reader.readuntil(b"\x1c\x0d"))[:-2].decode()
    writer.close()
    return answer


def _a04(patient_id: str) -> str:
    # shaped as HL7 v2.5 chapter 3's ADT^A04 (register a patient) example
    return ("MSH|^~\\&|REGADT|MCM|IFENG||199901061000||ADT^A04^ADT_A01|000017|P|2.5\r"
            "EVN|A04|199901061000\r"
            f"PID|1||{patient_id}^^^MCM||EVERYWOMAN^EVE^E||19620320|F\r"
            "PV1|1|O\r")


def test_each_trigger_prefetches_the_priors_the_rules_pick(remote, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    orth, patients = remote
    folder = tmp_path / "pacs"
    _settings(folder)
    FileAeRegistry(folder / "ae-titles.toml").add(RemoteAE(title="ORTHANC", host="127.0.0.1", port=orth.port))
    with running_server(folder, addin_classes=ADDINS) as server:
        store = server.store
        assert store is not None
        # a scheduled worklist step
        step = pydicom.Dataset()
        step.PatientID = "PF-WL"
        step.PatientName = "WORK^LIST"
        sps = pydicom.Dataset()
        sps.Modality = "CT"
        sps.ScheduledStationAETitle = "CT1"
        sps.ScheduledProcedureStepStartDate = dt.date.today().strftime("%Y%m%d")
        sps.ScheduledProcedureStepID = "SPS-PF"
        step.ScheduledProcedureStepSequence = pydicom.Sequence([sps])
        WorklistStore(store.index).add(step)
        _wait(lambda: _studies_of(store, "PF-WL") == _expected(patients["PF-WL"]), "the worklist's priors")

        # an MPPS N-CREATE (unscheduled)
        async def mpps() -> int:
            async with MppsScu(f"{AE}@127.0.0.1:{server.port}", calling_ae="CT1") as scu:
                attrs = in_progress_attributes(None, station_ae="CT1", modality="CT")
                attrs.PatientID = "PF-MPPS"
                attrs.PatientName = "PERFORMED^STEP"
                return (await scu.start(attrs)).status

        assert asyncio.run(mpps()) == 0
        _wait(lambda: _studies_of(store, "PF-MPPS") == _expected(patients["PF-MPPS"]), "the MPPS's priors")

        # an HL7 ADT^A04 (registration)
        hl7 = next(a for a in server.addins if a.name == "hl7")
        assert "MSA|AA|000017" in asyncio.run(_hl7(hl7.port, _a04("PF-HL7")))
        _wait(lambda: _studies_of(store, "PF-HL7") == _expected(patients["PF-HL7"]), "the ADT's priors")

        # a new study arriving
        today = make_series(tmp_path / "today", 2, 16, 16, patient_id="PF-STUDY", modality="CT")
        assert count_store_successes(run_storescu("127.0.0.1", server.port, today, called=AE)) == 2
        expected = _expected(patients["PF-STUDY"]) | {_study_uid(today)}
        _wait(lambda: _studies_of(store, "PF-STUDY") == expected, "the new study's priors")

        prefetch = next(a for a in server.addins if a.name == "prefetch")
        # the studies are in before their job is marked done
        _wait(lambda: all(j.state == "done" for j in prefetch.queue.jobs()), "every job done")
        jobs = prefetch.queue.jobs()
        assert sorted((j.patient_id, j.trigger, j.state, j.studies_fetched) for j in jobs) == [
            ("PF-HL7", "hl7", "done", 2), ("PF-MPPS", "mpps", "done", 2), ("PF-STUDY", "study", "done", 2),
            ("PF-WL", "worklist", "done", 2)]
        # the same trigger again: the priors are held whole, nothing is fetched twice
        assert prefetch.request("PF-WL")
        _wait(lambda: [j.state for j in prefetch.queue.jobs() if j.patient_id == "PF-WL"] == ["done", "done"], "job")
        assert [j.studies_fetched for j in prefetch.queue.jobs() if j.patient_id == "PF-WL"] == [2, 0]


def test_an_hl7_order_prefetches_priors_of_its_modality(remote, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """ORM^O01 with OBR-24 = MR and same_modality: only the MR prior comes, whatever its age."""
    orth, patients = remote
    folder = tmp_path / "pacs"
    folder.mkdir()
    (folder / "server.toml").write_text(
        f'ae_title = "{AE}"\nport = 0\nopen_mode = true\n[admin]\nenabled = false\n'
        "[addins.hl7]\nenabled = true\nport = 0\n"
        '[addins.prefetch]\nenabled = true\nremote = "ORTHANC"\ntriggers = ["hl7"]\nsame_modality = true\n'
        "max_studies = 5\nscan_interval = 0.2\n")
    FileAeRegistry(folder / "ae-titles.toml").add(RemoteAE(title="ORTHANC", host="127.0.0.1", port=orth.port))
    # shaped as HL7 v2.5 chapter 4's ORM^O01 (general order) example
    orm = ("MSH|^~\\&|CPOE|HOSP|RIS|HOSP|200601011200||ORM^O01|MSG00042|P|2.5\r"
           "PID|1||PF-ORM^^^HOSP||ORDER^OLIVER||19700101|M\r"
           "ORC|NW|ORD448811||||||||||1234^REFERRER^RUTH\r"
           "OBR|1|ORD448811||MRBRAIN^MR BRAIN^L" + "|" * 20 + "MR\r")  # OBR-24: diagnostic service section
    with running_server(folder, addin_classes=[VerificationAddIn, StorageAddIn, Hl7AddIn, PrefetchAddIn]) as server:
        hl7 = next(a for a in server.addins if a.name == "hl7")
        assert "MSA|AA|MSG00042" in asyncio.run(_hl7(hl7.port, orm))
        prefetch = next(a for a in server.addins if a.name == "prefetch")
        _wait(lambda: [j.state for j in prefetch.queue.jobs()] == ["done"], "the order's job")
        (job,) = prefetch.queue.jobs()
        assert (job.trigger, job.modality, job.studies_fetched) == ("hl7", "MR", 1)
        assert server.store is not None
        assert _studies_of(server.store, "PF-ORM") == {_study_uid(patients["PF-ORM"]["mr-2y"])}


_SERVER = textwrap.dedent("""
    import asyncio, sys
    from pacskit.config.settings import load_settings
    from pacskit.server.server import Server
    from pacskit.addins.hl7 import Hl7AddIn
    from pacskit.addins.prefetch import PrefetchAddIn
    from pacskit.addins.storage import StorageAddIn
    from pacskit.addins.verification import VerificationAddIn

    async def main():
        server = Server(load_settings(sys.argv[1]),
                        addin_classes=[VerificationAddIn, StorageAddIn, Hl7AddIn, PrefetchAddIn])
        await server.start()
        hl7 = next(a for a in server.addins if a.name == "hl7")
        (server.settings.folder / "hl7.port").write_text(str(hl7.port))
        await asyncio.Event().wait()

    asyncio.run(main())
""")


def test_a_job_waits_for_a_remote_that_is_down_through_a_kill_9(tmp_path: Path) -> None:
    priors = _priors(tmp_path / "src", "PF-DOWN")
    port, orthanc_port = free_port(), free_port()
    folder = tmp_path / "pacs"
    _settings(folder, port)
    FileAeRegistry(folder / "ae-titles.toml").add(RemoteAE(title="ORTHANC", host="127.0.0.1", port=orthanc_port))

    def start() -> subprocess.Popen[bytes]:
        (folder / "hl7.port").unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(folder)], stdout=subprocess.DEVNULL,
                                stderr=open(folder / "server.log", "ab"))  # noqa: SIM115
        wait_for_port("127.0.0.1", port, timeout=30, proc=proc)
        _wait(lambda: (folder / "hl7.port").exists(), "the MLLP port")
        return proc

    def jobs(api: httpx.Client) -> list[dict]:  # type: ignore[type-arg]
        return api.get("/addins/prefetch/jobs").json()

    server = start()
    try:
        ack = asyncio.run(_hl7(int((folder / "hl7.port").read_text()), _a04("PF-DOWN")))
        assert "MSA|AA|000017" in ack  # acknowledged once the job is in the queue
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(folder / f"{AE}.sock")), base_url="http://x") as api:
            _wait(lambda: jobs(api) and jobs(api)[0]["attempts"] >= 2, "retries while the remote is down")
            job = jobs(api)[0]
            assert job["state"] == "queued" and "unreachable" in job["last_error"], job
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait(30)
    listed = subprocess.run([sys.executable, "-m", "pacskit", "prefetch", "list", "--json", "--data-dir", str(folder)],
                            capture_output=True, text=True, timeout=60)  # the server is down: the queue file
    assert listed.returncode == 0, listed.stderr
    (waiting,) = json.loads(listed.stdout)
    assert (waiting["patient_id"], waiting["state"]) == ("PF-DOWN", "queued") and waiting["attempts"] >= 2
    with orthanc(tmp_path / "orthanc", dicom_port=orthanc_port) as orth:
        for files in priors.values():
            for path in files:
                orth.post("/instances", path.read_bytes())
        server = start()
        try:
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(folder / f"{AE}.sock")),
                              base_url="http://x") as api:
                _wait(lambda: jobs(api)[0]["state"] == "done", "the job after the restart")
                assert jobs(api)[0]["studies_fetched"] == 2 and len(jobs(api)) == 1
            listed = subprocess.run([sys.executable, "-m", "pacskit", "prefetch", "list", "--state", "done",
                                     "--data-dir", str(folder)], capture_output=True, text=True, timeout=60)
            assert "PF-DOWN" in listed.stdout and "2 studies" in listed.stdout, listed.stdout + listed.stderr
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
    check = subprocess.run([sys.executable, "-m", "pacskit", "check", "-q", "--data-dir", str(folder)],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
