"""Path traversal and SQL metacharacters in every value that reaches the store (issue 6).

Instances carrying ``../``, absolute paths, backslashes, NUL bytes, quotes, ``%``, ``_``, ``;`` and SQL
comments in PatientID, PatientName, AccessionNumber and descriptions are stored safely (the values
are data: indexed as sent, never part of a path or of SQL text); the same characters, or an over-long
value, in any UID field are refused with 0xC000. Afterwards nothing exists outside the store's folder,
the index holds exactly the accepted instances, ``check()`` is clean and the server still answers.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid

from pacskit.dicom.uids import VERIFICATION_SOP_CLASS
from pacskit.net import RequestedContext, connect
from pacskit.server.server import Server
from pacskit.config.settings import load_settings
from pacskit.testing.synth import make_instance

CT = "1.2.840.10008.5.1.4.1.1.2"
HOSTILE_TEXT = [
    "../../../../etc/passwd", "/etc/shadow", "..\\\\..\\\\windows", "a'; DROP TABLE instances; --",
    "100%_done", "x\" OR \"1\"=\"1", "/* c */ 1", "PID;DELETE FROM patients",
]
HOSTILE_UIDS = [
    "1.2.3/../../x", "../../1.2.3", "/1.2.3", "1.2.3\\\\4", "1.2.3'; --", "1.2.3%", "1.2.3_4",
    "1." + "2" * 130, "1.2.\x00.3",  # (a letter, a leading zero, 65-128 characters are accepted: issue 15)
]
UID_FIELDS = ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]


def _variant(base: Path, out: Path, **values: str) -> Path:
    ds = dcmread(base)
    ds.SOPInstanceUID = generate_uid()
    for key, value in values.items():
        setattr(ds, key, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(out, enforce_file_format=True)
    return out


def test_hostile_values_stored_safely_hostile_uids_refused(tmp_path: Path) -> None:
    base = make_instance(tmp_path / "base.dcm")
    folder = tmp_path / "srv"
    folder.mkdir()
    (folder / "server.toml").write_text('ae_title = "SAFEPACS"\nport = 0\ndata_dir = "data"\n')
    safe = []
    for i, text in enumerate(HOSTILE_TEXT):
        values = {"PatientID": text[:64], "AccessionNumber": text[:16], "StudyDescription": text,
                  "PatientName": text.replace("\\\\", "/")}
        safe.append((_variant(base, tmp_path / f"safe{i}.dcm", StudyInstanceUID=generate_uid(),
                             SeriesInstanceUID=generate_uid(), **values), text))
    refused = []
    for i, uid in enumerate(HOSTILE_UIDS):
        for field in UID_FIELDS:
            path = _variant(base, tmp_path / f"bad{i}-{field}.dcm")
            raw = bytearray(path.read_bytes())
            ds = dcmread(path)
            good = str(getattr(ds, field)).encode()
            meta_end = raw.index(b"DICM") + 4
            # replace the value inside the dataset only (the File Meta keeps a valid UID), padding kept even
            value = uid.encode()
            value += b"\x00" * (len(value) & 1)
            pos = raw.index(good, meta_end + 200) if field == "SOPInstanceUID" else raw.index(good, meta_end)
            old_len_pos = pos - 2
            raw[old_len_pos:pos + len(good) + (len(good) & 1)] = len(value).to_bytes(2, "little") + value
            path.write_bytes(bytes(raw))
            refused.append(path)

    async def run() -> tuple[list[int], list[tuple[int, str]], int, object]:
        async with Server(load_settings(folder)) as server:
            contexts = [RequestedContext(CT), RequestedContext(VERIFICATION_SOP_CLASS)]
            async with await connect("127.0.0.1", server.port, called_ae="SAFEPACS", contexts=contexts) as assoc:
                ok = [(await assoc.store(p)).status for p, _ in safe]
                bad = []
                for p in refused:
                    rsp = await assoc.store(p)
                    bad.append((rsp.status, f"{p.name}: {rsp.get('ErrorComment', '')}"))
                echo = await assoc.echo()
            store = server.store
            assert ok == [0x0000] * len(safe), [hex(x) for x in ok]
            for path, text in safe:
                row = store.get_instance(dcmread(path).SOPInstanceUID)
                assert row is not None
                assert row.series.study.patient.patient_id == text[:64]
                assert row.series.study.study_description == text
            return ok, bad, echo, store.check()

    ok, bad, echo, report = asyncio.run(run())
    assert ok == [0x0000] * len(safe)
    assert [s for s, _ in bad] == [0xC000] * len(refused), bad
    assert all("UID" in comment for _, comment in bad), bad  # refused for the UID, not as unreadable
    assert echo == 0x0000
    assert report.ok, str(report)  # type: ignore[attr-defined]
    data = folder / "data"
    for root, _dirs, files in os.walk(tmp_path):
        for name in files:
            path = Path(root) / name
            if data in path.parents:
                continue
            assert path.parent in (tmp_path, folder), f"written outside the store: {path}"
