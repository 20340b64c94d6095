"""The routing add-in's "apply a correction" action with a real modality (DCMTK storescu) and real
readers (DCMTK findscu, DCMTK storescp as a forward destination): what one modality sends gets its
wrong InstitutionName and StudyDescription corrected in the files and the index, UIDs kept; a
forward of the same instances waits for the correction; another modality's instances are untouched."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from pacskit.addins.audit import AuditAddIn
from pacskit.addins.query import QueryAddIn
from pacskit.addins.routing import Rule, RoutingAddIn
from pacskit.addins.storage import StorageAddIn
from pacskit.config.aetitles import FileAeRegistry, RemoteAE
from pacskit.config.settings import load_settings
from pacskit.server.server import Server
from pacskit.testing.peers import (
    count_store_successes,
    dcmtk_env,
    dcmtk_tool,
    have_dcmtk,
    run_storescu,
    storescp,
)
from pacskit.testing.synth import make_series

pytestmark = [pytest.mark.dcmtk]


def test_a_correction_rule_is_validated() -> None:
    Rule(name="ok", correct={"InstitutionName": "RIGHT"})
    for bad in ({"PatientID": "X"}, {"NotAKeyword": "X"}, {"SOPInstanceUID": "1.2"}):
        with pytest.raises(ValueError, match="correct"):
            Rule(name="bad", correct=bad)
    with pytest.raises(ValueError, match="one action"):
        Rule(name="two", correct={"InstitutionName": "X"}, destinations=["AE"])
    with pytest.raises(ValueError, match="give destinations"):
        Rule(name="none")


def test_storescu_instances_corrected_by_rule_forwarded_corrected(tmp_path: Path) -> None:
    if not have_dcmtk():
        pytest.skip("DCMTK is needed")
    wrong = make_series(tmp_path / "ct1", 6, 16, 16, patient_id="FIX1",
                        attrs={"InstitutionName": "WRONG HOSPITAL", "StudyDescription": "CT ROUTINE"})
    other = make_series(tmp_path / "mr9", 3, 16, 16, patient_id="KEEP1", modality="MR",
                        attrs={"InstitutionName": "OTHER HOSPITAL", "StudyDescription": "MR ROUTINE"})
    sent_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in wrong}
    folder = tmp_path / "srv"
    folder.mkdir()
    with storescp(tmp_path / "scp") as scp:
        FileAeRegistry(folder / "ae-titles.toml").add(RemoteAE(title="STORESCP", host="127.0.0.1", port=scp.port))
        (folder / "server.toml").write_text(
            'ae_title = "FIXPACS"\nport = 0\ndata_dir = "data"\n[admin]\nenabled = false\n'
            '[addins.routing]\nenabled = true\nscan_interval = 0.2\nretry_initial = 0.2\n'
            'rules = [{name = "fix-ct1", calling_aes = ["CT1"], '
            'correct = {InstitutionName = "RIGHT HOSPITAL", StudyDescription = "CT HEAD"}},\n'
            '  {name = "to-reading", calling_aes = ["CT1"], destinations = ["STORESCP"]}]\n')

        async def run() -> None:
            server = Server(load_settings(folder),
                            addin_classes=[StorageAddIn, QueryAddIn, AuditAddIn, RoutingAddIn])
            await server.start()
            try:
                routing = next(a for a in server.addins if a.name == "routing")
                for files, calling in ((wrong, "CT1"), (other, "MR9")):
                    sent = await asyncio.to_thread(run_storescu, "127.0.0.1", server.port, files,
                                                   called="FIXPACS", calling=calling)
                    assert count_store_successes(sent) == len(files), sent.stdout + sent.stderr
                deadline = time.monotonic() + 60
                # storescp writes a file before its C-STORE-RSP reaches the router, which only then
                # takes the job off its queue: wait for the queue to drain too
                while (routing.corrected < 6 or len(list((tmp_path / "scp").rglob("*.dcm"))) < 6
                       or routing.queue.counts()):
                    assert time.monotonic() < deadline, (routing.corrected, routing.queue.list())
                    await asyncio.sleep(0.1)
                store = server.store
                assert store.check().ok
                files = [pydicom.dcmread(store.blobs.path(k), stop_before_pixels=True) for k in store.blobs.iter_keys()]
                fixed = [d for d in files if d.PatientID == "FIX1"]
                assert {str(d.SOPInstanceUID) for d in fixed} == sent_uids  # UIDs kept
                assert {(d.InstitutionName, d.StudyDescription) for d in fixed} == {("RIGHT HOSPITAL", "CT HEAD")}
                old = fixed[0].OriginalAttributesSequence[-1]
                assert old.ModifiedAttributesSequence[0].InstitutionName == "WRONG HOSPITAL"
                assert {(d.InstitutionName, d.StudyDescription) for d in files if d.PatientID == "KEEP1"} == \
                    {("OTHER HOSPITAL", "MR ROUTINE")}
                # the forward waited for the correction: the reading station got corrected files
                forwarded = [pydicom.dcmread(p, stop_before_pixels=True) for p in (tmp_path / "scp").rglob("*.dcm")]
                assert {(d.InstitutionName, str(d.SOPInstanceUID) in sent_uids) for d in forwarded} == \
                    {("RIGHT HOSPITAL", True)}
                out = tmp_path / "find"
                out.mkdir()
                proc = await asyncio.to_thread(
                    subprocess.run, [dcmtk_tool("findscu"), "-S", "-aec", "FIXPACS", "-X", "-od", str(out),
                                     "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID", "-k", "StudyDescription",
                                     "-k", "StudyInstanceUID", "127.0.0.1", str(server.port)],
                    capture_output=True, text=True, env=dcmtk_env(), timeout=60)
                answers = {str(d.PatientID): str(d.StudyDescription)
                           for d in (pydicom.dcmread(p) for p in out.glob("rsp*.dcm"))}
                assert answers == {"FIX1": "CT HEAD", "KEEP1": "MR ROUTINE"}, proc.stdout + proc.stderr
                assert routing.queue.counts() == {}
                # audited: DICOM Instances Accessed (110103), action U, by the rule, for the corrected study
                from sqlalchemy import select

                from pacskit.store.records import AuditRecord

                def audited() -> list[str]:
                    with store.index.engine.connect() as conn:
                        return list(conn.execute(select(AuditRecord.xml)
                                                 .where(AuditRecord.event_id == "110103")).scalars())
                while not audited():
                    assert time.monotonic() < deadline, "no Instances Accessed audit message"
                    await asyncio.sleep(0.1)
                for xml in audited():  # one per study per batch of jobs applied together
                    assert "routing:fix-ct1" in xml and str(fixed[0].StudyInstanceUID) in xml and "FIX1" in xml
                    assert 'EventActionCode="U"' in xml, xml
            finally:
                await server.stop()

        asyncio.run(run())


def test_corrections_survive_a_kill_9(tmp_path: Path) -> None:
    """The server is killed (SIGKILL) right after the modality got its answers, corrections pending or
    under way; after the restart every instance is corrected once the queue is empty, the index and the
    files agree (``check`` clean), nothing is lost."""
    import signal
    import sys

    import httpx

    from pacskit.server.server import open_store
    from pacskit.testing.peers import free_port, wait_for_port

    if not have_dcmtk():
        pytest.skip("DCMTK is needed")
    files = make_series(tmp_path / "ct1", 30, 32, 32, patient_id="FIX2",
                        attrs={"InstitutionName": "WRONG HOSPITAL"})
    folder = tmp_path / "srv"
    folder.mkdir()
    port = free_port()
    (folder / "server.toml").write_text(
        f'ae_title = "FIXPACS"\nport = {port}\n[addins.routing]\nenabled = true\nscan_interval = 0.2\nbatch = 4\n'
        'rules = [{name = "fix-ct1", calling_aes = ["CT1"], correct = {InstitutionName = "RIGHT HOSPITAL"}}]\n')
    script = ("import asyncio, sys\n"
              "from pacskit.config.settings import load_settings\n"
              "from pacskit.server.server import Server\n"
              "from pacskit.addins.storage import StorageAddIn\n"
              "from pacskit.addins.routing import RoutingAddIn\n"
              "async def main():\n"
              "    server = Server(load_settings(sys.argv[1]), addin_classes=[StorageAddIn, RoutingAddIn])\n"
              "    await server.start()\n"
              "    await asyncio.Event().wait()\n"
              "asyncio.run(main())\n")

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", script, str(folder)], stdout=subprocess.DEVNULL,
                                stderr=open(folder / "server.log", "ab"))  # noqa: SIM115
        wait_for_port("127.0.0.1", port, timeout=30, proc=proc)
        return proc

    server = start()
    try:
        sent = run_storescu("127.0.0.1", port, files, called="FIXPACS", calling="CT1")
        assert count_store_successes(sent) == 30, sent.stdout
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait(30)
    store = open_store(load_settings(folder))  # what the kill left (recovery of interrupted rewrites runs here)
    try:
        assert store.counts().instances == 30 and store.check().ok
        left = sum(pydicom.dcmread(store.blobs.path(k), stop_before_pixels=True).InstitutionName == "WRONG HOSPITAL"
                   for k in store.blobs.iter_keys())
    finally:
        store.close()
    print(f"{left} of 30 instances not corrected yet when killed")
    server = start()
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(folder / "FIXPACS.sock")), base_url="http://x") as api:
            deadline = time.monotonic() + 120
            while True:
                status = api.get("/addins/routing/status").json()
                if status["queue"] == {} and (status["watermark"] or 0) >= 30:
                    break
                assert time.monotonic() < deadline, status
                time.sleep(0.1)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    store = open_store(load_settings(folder))
    try:
        assert store.counts().instances == 30
        stored = [pydicom.dcmread(store.blobs.path(k), stop_before_pixels=True) for k in store.blobs.iter_keys()]
        assert len(stored) == 30 and {d.InstitutionName for d in stored} == {"RIGHT HOSPITAL"}
        assert store.check().ok
    finally:
        store.close()
