"""HL7 v2 ADT over MLLP (the hl7 add-in): A08 updates a patient, A40 merges two, as the archive's
corrections (files rewritten, index moved); messages shaped like the HL7 v2 standard's examples."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pydicom

from pacskit.addins.audit import AuditAddIn
from pacskit.addins.hl7 import Hl7AddIn, Message, pn_from_xpn
from pacskit.addins.storage import StorageAddIn
from pacskit.config.settings import load_settings
from pacskit.server.server import Server
from pacskit.testing.synth import make_series

# Shaped as HL7 v2.5 chapter 3's examples (ADT^A08 "update patient information", ADT^A40 "merge patient")
A08 = ("MSH|^~\\&|REGADT|MCM|IFENG||199901061000||ADT^A08|000001|P|2.5\r"
       "EVN|A08|199901061000\r"
       "PID|1||PATID1234^^^MCM||JONES^WILLIAM^A^III||19610615|M\r")
A40 = ("MSH|^~\\&|REGADT|MCM|RSP1P8|MCM|199601051530|SEC|ADT^A40^ADT_A39|00000003|P|2.5\r"
       "EVN|A40|199601051530\r"
       "PID|||PATID1234^^^XYZ||JONES^WILLIAM^A^III\r"
       "MRG|MR2^^^XYZ\r")


def test_message_parsing() -> None:
    m = Message(A40)
    assert m.event == "A40" and m.components("MRG", 1)[0] == "MR2" and m.value("MSH", 10) == "00000003"
    assert pn_from_xpn(Message(A08).components("PID", 5)) == "JONES^WILLIAM^A^^III"
    ack = Message(A08).ack("AA", "done").decode()
    assert ack.startswith("MSH|^~\\&|IFENG||REGADT|MCM|") and "\rMSA|AA|000001|done\r" in ack


# HL7 v2.5 section 2.7.4 escape sequences in a name (O^BRIEN|JR&CO~X\\Y: every separator escaped),
# repeated identifiers (PID-3 ~) and a component with sub-components (XAD street address &)
A08_ESCAPED = ("MSH|^~\\&|REGADT|MCM|IFENG||200701061000||ADT^A08^ADT_A01|MSG00042|P|2.5\r"
               "EVN|A08|200701061000\r"
               "PID|1||PID\\T\\77^^^MCM^MR~9999^^^SSA^SS||O\\S\\BRIEN\\F\\JR\\T\\CO\\R\\X\\E\\Y^MARY^^^DR"
               "||19700102|F|||12 MAIN ST&MAIN ST&12^^ANN ARBOR^MI^48103\r"
               "PV1|1|O\r")


def test_parsed_values_are_unescaped_and_repetitions_split() -> None:
    m = Message(A08_ESCAPED)
    assert m.event == "A08" and m.value("MSH", 10) == "MSG00042" and m.value("MSH", 2) == "^~\\&"
    assert m.repetitions("PID", 3) == [["PID&77", "", "", "MCM", "MR"], ["9999", "", "", "SSA", "SS"]]
    assert m.value("PID", 3) == "PID&77"
    assert m.components("PID", 5) == ["O^BRIEN|JR&CO~X\\Y", "MARY", "", "", "DR"]
    assert pn_from_xpn(m.components("PID", 5)) == "O BRIEN|JR&CO~X Y^MARY^^DR"  # no PN delimiter inside
    assert m.value("PID", 11) == "12 MAIN ST" and m.value("PID", 11, 3) == "ANN ARBOR"
    assert m.value("PID", 7) == "19700102" and m.value("PID", 30) == "" and m.value("ZZZ", 1) == ""
    assert m.has("PV1") and not m.has("MRG") and m.raw("PID", 5).startswith("O\\S\\BRIEN")
    ack = m.ack("AE", "bad | name ^ here").decode()  # the text is escaped back in the ACK
    assert "\rMSA|AE|MSG00042|bad \\F\\ name \\S\\ here\r" in ack and "\rERR|" in ack
    for junk in ("", "PID|1", "MSH"):
        try:
            Message(junk)
        except ValueError:
            continue
        raise AssertionError(f"{junk!r} parsed")


def test_a08_and_a40_over_mllp(tmp_path: Path) -> None:
    folder = tmp_path / "srv"
    folder.mkdir()
    (folder / "server.toml").write_text('ae_title = "HL7PACS"\nport = 0\ndata_dir = "data"\n'
                                        '[admin]\nenabled = false\n[addins.hl7]\nenabled = true\nport = 0\n')

    async def send(port: int, text: str) -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x0b" + text.encode() + b"\x1c\x0d")
        await writer.drain()
        await reader.readuntil(b"\x0b")
        answer = (await reader.readuntil(b"\x1c\x0d"))[:-2].decode()
        writer.close()
        return answer

    async def run() -> None:
        server = Server(load_settings(folder), addin_classes=[StorageAddIn, AuditAddIn, Hl7AddIn])
        await server.start()
        try:
            store = server.store
            for name, pid, count in (("a", "PATID1234", 2), ("b", "MR2", 3)):
                for path in make_series(tmp_path / name, count, 16, 16, patient_id=pid, patient_name="OLD^NAME"):
                    store.ingest(path, source_ae="MOD")
            hl7 = next(a for a in server.addins if a.name == "hl7")
            ack = await send(hl7.port, A08)
            assert "MSA|AA|000001|updated 1 studies" in ack, ack
            ack = await send(hl7.port, A40)
            assert "MSA|AA|00000003|merged 1 studies" in ack, ack
            ack = await send(hl7.port, A40)  # again: the prior patient is gone
            assert "MSA|AA|00000003|prior patient not in the archive" in ack
            bad = await send(hl7.port, A08.replace("PID|1||PATID1234^^^MCM", "PID|1||"))
            assert "MSA|AE|" in bad and "ERR|" in bad
            assert store.counts().patients == 1 and store.counts().studies == 2
            files = [pydicom.dcmread(store.blobs.path(k), stop_before_pixels=True) for k in store.blobs.iter_keys()]
            assert {str(d.PatientID) for d in files} == {"PATID1234"}
            assert {str(d.PatientName) for d in files} == {"JONES^WILLIAM^A^^III"}  # the merge wrote B's name
            assert {str(d.PatientBirthDate) for d in files} == {"19610615"} and {d.PatientSex for d in files} == {"M"}
            assert store.check().ok
            escaped = A08.replace("JONES^WILLIAM^A^III", "SMITH\\T\\JONES^ANN").replace("|M\r", "|F\r")
            ack = await send(hl7.port, escaped)
            assert "MSA|AA|000001|updated 2 studies" in ack, ack
            # one connection: a stray line before the <VT> and a block without one are skipped, the
            # messages around them answered in order
            reader, writer = await asyncio.open_connection("127.0.0.1", hl7.port)
            writer.write(b"\x0b" + A40.encode() + b"\x1c\x0d\n" + b"junk\x1c\x0d" + b"\x0b" + escaped.encode()
                         + b"\x1c\x0d")
            await writer.drain()
            answers = []
            for _ in range(2):
                await reader.readuntil(b"\x0b")
                answers.append((await reader.readuntil(b"\x1c\x0d"))[:-2].decode())
            writer.close()
            assert "MSA|AA|00000003|prior patient not in the archive" in answers[0], answers
            assert "MSA|AA|000001|updated 2 studies" in answers[1], answers
            files = [pydicom.dcmread(store.blobs.path(k), stop_before_pixels=True) for k in store.blobs.iter_keys()]
            assert {str(d.PatientName) for d in files} == {"SMITH&JONES^ANN"}  # unescaped \T\ in the files
            assert store.check().ok
        finally:
            await server.stop()

    asyncio.run(run())


def _step(patient_id: str, sps_id: str, status: str) -> pydicom.Dataset:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    entry = Dataset()
    entry.PatientID = patient_id
    entry.PatientName = "OLD^NAME"
    entry.PatientBirthDate = "19000101"
    entry.PatientSex = "O"
    entry.AccessionNumber = f"ACC{sps_id}"
    step = Dataset()
    step.ScheduledStationAETitle = "CT1"
    step.ScheduledProcedureStepStartDate = "20260101"
    step.Modality = "CT"
    step.ScheduledProcedureStepID = sps_id
    step.ScheduledProcedureStepStatus = status
    entry.ScheduledProcedureStepSequence = Sequence([step])
    return entry


def test_a08_updates_the_scheduled_worklist_seen_by_findscu(tmp_path: Path) -> None:
    """ADT^A08 rewrites the demographics of the patient's steps not yet started (a patient the
    archive holds no study of, as at registration); DCMTK findscu -W reads the new name; a completed
    step keeps what was performed."""
    import subprocess

    import pytest

    from pacskit.addins.worklist import WorklistAddIn
    from pacskit.store.workflow.worklist import WorklistStore
    from pacskit.testing.peers import dcmtk_env, dcmtk_tool, have_dcmtk

    if not have_dcmtk():
        pytest.skip("DCMTK is needed")
    folder = tmp_path / "srv"
    folder.mkdir()
    (folder / "server.toml").write_text('ae_title = "HL7PACS"\nport = 0\nopen_mode = true\ndata_dir = "data"\n'
                                        '[admin]\nenabled = false\n[addins.hl7]\nenabled = true\nport = 0\n')

    async def send(port: int, text: str) -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x0b" + text.encode() + b"\x1c\x0d")
        await writer.drain()
        await reader.readuntil(b"\x0b")
        answer = (await reader.readuntil(b"\x1c\x0d"))[:-2].decode()
        writer.close()
        return answer

    async def run() -> None:
        server = Server(load_settings(folder), addin_classes=[StorageAddIn, WorklistAddIn, Hl7AddIn])
        await server.start()
        try:
            worklist = WorklistStore(server.store.index)
            scheduled, completed = (worklist.add(_step("PATID1234", "S1", "SCHEDULED"))[0],
                                    worklist.add(_step("PATID1234", "S2", "COMPLETED"))[0])
            other = worklist.add(_step("SOMEONE", "S3", "SCHEDULED"))[0]
            hl7 = next(a for a in server.addins if a.name == "hl7")
            ack = await send(hl7.port, A08)
            assert "MSA|AA|000001|patient not in the archive; 1 worklist steps updated" in ack, ack
            step = worklist.get(scheduled).dataset  # type: ignore[union-attr]
            assert (str(step.PatientName), step.PatientBirthDate, step.PatientSex) == ("JONES^WILLIAM^A^^III", "19610615", "M")
            assert str(worklist.get(completed).dataset.PatientName) == "OLD^NAME"  # type: ignore[union-attr]
            assert str(worklist.get(other).dataset.PatientName) == "OLD^NAME"  # type: ignore[union-attr]
            out = tmp_path / "wl"
            out.mkdir()
            proc = await asyncio.to_thread(
                subprocess.run, [dcmtk_tool("findscu"), "-v", "-W", "-aec", "HL7PACS", "-X", "-od", str(out),
                                 "-k", "PatientID=PATID1234", "-k", "PatientName", "-k", "PatientBirthDate",
                                 "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
                                 "127.0.0.1", str(server.port)],
                capture_output=True, text=True, env=dcmtk_env(), timeout=60)
            answers = {str(d.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID): d
                       for d in (pydicom.dcmread(p) for p in out.glob("rsp*.dcm"))}
            assert set(answers) == {"S1", "S2"}, proc.stdout + proc.stderr
            assert str(answers["S1"].PatientName) == "JONES^WILLIAM^A^^III"
            assert answers["S1"].PatientBirthDate == "19610615"
            assert str(answers["S2"].PatientName) == "OLD^NAME"
        finally:
            await server.stop()

    asyncio.run(run())
