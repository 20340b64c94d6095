"""The Media Creation Management SCP add-in (PS3.4 Annex S) driven by pynetdicom as the SCU: create,
initiate, N-GET until DONE and the ISO is there and right; cancel; invalid requests answered with the
Annex S statuses; a ``kill -9`` while a request is being written, then a restart that finishes it."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacskit.testing import make_series
from pacskit.testing.peers import dcmtk_env

from ._archive import image_records, label_text, need, read_barcodes, run
from ._server import AE, ingest, running_server, start_process, write_settings

pytestmark = pytest.mark.pynetdicom

MCM = "1.2.840.10008.5.1.1.33"
CT = "1.2.840.10008.5.1.4.1.1.2"
TESTS = Path(__file__).resolve().parents[1]


def series(tmp: Path, count: int = 4, rows: int = 64) -> list[tuple[str, str, Path]]:
    paths = make_series(tmp / "in", count, rows, rows, patient_id="MCM1")
    out = []
    for p in paths:
        ds = dcmread(p, stop_before_pixels=True)
        out.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID), p))
    return out


def request(refs: list[tuple[str, str]], profile: str = "STD-GEN-CD", **attrs: Any) -> Dataset:
    ds = Dataset()
    items = []
    for cls, inst in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = cls
        item.ReferencedSOPInstanceUID = inst
        item.RequestedMediaApplicationProfile = profile
        items.append(item)
    ds.ReferencedSOPSequence = items
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


class Scu:
    """pynetdicom as the Media Creation Management SCU."""

    def __init__(self, port: int) -> None:
        from pynetdicom import AE as PynetdicomAE

        ae = PynetdicomAE(ae_title="MCMSCU")
        ae.add_requested_context(MCM)
        self.assoc = ae.associate("127.0.0.1", port, ae_title=AE)
        assert self.assoc.is_established

    def create(self, ds: Dataset | None, uid: str | None = None) -> tuple[int, Any]:
        status, attrs = self.assoc.send_n_create(ds, MCM, uid or generate_uid())
        return int(status.Status), status

    def action(self, uid: str, action: int, ds: Dataset | None = None) -> int:
        status, _ = self.assoc.send_n_action(ds, action, MCM, uid)
        return int(status.Status)

    def get(self, uid: str) -> tuple[int, Dataset | None]:
        status, ds = self.assoc.send_n_get([0x21000020, 0x21000030, 0x2200000B, 0x00081198, 0x2200000D, 0x20000010,
                                            0x22000020], MCM, uid)
        return int(status.Status), ds

    def wait_for(self, uid: str, states: tuple[str, ...], timeout: float = 120) -> Dataset:
        """N-GET until the Execution Status is one of ``states`` (a condition, polled)."""
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while True:
            status, ds = self.get(uid)
            assert status == 0, hex(status)
            if ds.ExecutionStatus in states:
                return ds
            assert time.monotonic() < deadline, f"still {ds.ExecutionStatus}"
            pause.wait(0.05)

    def release(self) -> None:
        self.assoc.release()


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[tuple[Any, list[tuple[str, str, Path]], Path]]:
    folder = write_settings(tmp_path / "pacs")
    instances = series(tmp_path)
    ingest(folder, [p for _c, _i, p in instances])
    with running_server(folder) as server:
        yield server, instances, folder


def test_create_initiate_get_until_done(scp: Any, tmp_path: Path) -> None:
    need("xorriso")
    server, instances, folder = scp
    archive = {inst: (tmp_path / "copy" / inst) for _c, inst, _p in instances}
    scu = Scu(server.port)
    uid = generate_uid()
    try:
        status, _ = scu.create(request([(c, i) for c, i, _ in instances], LabelText="MR knee",
                                       StorageMediaFileSetID="KNEE", IncludeDisplayApplication="YES",
                                       LabelUsingInformationExtractedFromInstances="YES", BarcodeValue="KNEE-42",
                                       BarcodeSymbology="CODE128"), uid)
        assert status == 0
        assert scu.get(uid)[1].ExecutionStatus == "IDLE"
        init = Dataset()
        init.NumberOfCopies = 1
        init.RequestPriority = "HIGH"
        assert scu.action(uid, 1, init) == 0
        done = scu.wait_for(uid, ("DONE", "FAILURE"))
    finally:
        scu.release()
    assert done.ExecutionStatus == "DONE", done
    assert done.ExecutionStatusInfo == "NORMAL"
    assert done.TotalNumberOfPiecesOfMediaCreated == 1
    assert len(done.FailedSOPSequence) == 0
    assert done.ReferencedStorageMediaSequence[0].StorageMediaFileSetID == "KNEE"
    iso = folder / "data" / "media" / "out" / f"{uid}.iso"
    assert iso.is_file()
    out = tmp_path / "x"
    run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(out)])
    records = image_records(out / "DICOMDIR")
    assert {r[3] for r in records} == set(archive)
    assert (out / "index.html").is_file() and (out / "VIEWER" / "DATA.JS").is_file()  # Include Display Application
    label = iso.with_name(f"{uid}_label.pdf")  # the folder burner keeps the label beside the image
    text = label_text(label)
    assert "MR knee" in text and f"ID {next(iter(records))[0]}" in text  # from the instances
    assert read_barcodes(label) == ["CODE-128:KNEE-42"]
    server_store = server.addins  # the archive's bytes: the files we ingested were moved in
    assert server_store
    from pacskit.config.settings import load_settings
    from pacskit.server.server import open_store

    store = open_store(load_settings(folder), recover=False)
    try:
        for r in records:
            assert (out / r[4]).read_bytes() == Path(store.instance_path(r[3])).read_bytes()
    finally:
        store.close()


def test_invalid_requests_get_annex_s_statuses(scp: Any) -> None:
    server, instances, _folder = scp
    refs = [(c, i) for c, i, _ in instances]
    scu = Scu(server.port)
    try:
        no_refs = Dataset()
        no_refs.LabelText = "nothing"
        assert scu.create(no_refs)[0] == 0x0120  # no Referenced SOP Sequence
        empty = Dataset()
        empty.ReferencedSOPSequence = []
        assert scu.create(empty)[0] == 0x0121
        assert scu.create(request(refs, profile="STD-XABC-CD"))[0] == 0x0106  # bad profile
        assert scu.create(request([("1.2.3", "not a uid")]))[0] == 0x0106
        assert scu.create(request(refs, AllowMediaSplitting="MAYBE"))[0] == 0x0106
        assert scu.create(request(refs, BarcodeValue="X1", BarcodeSymbology="MAXICODE"))[0] == 0x0106
        assert scu.create(request(refs, BarcodeValue="X1", BarcodeSymbology="EAN13"))[0] == 0x0106  # digits only
        warn, _ = scu.create(request(refs, IncludeNonDICOMObjects="FOR_RESEARCH"))
        assert warn == 0x0001  # only the viewer can be put on the media: a warning, the request exists
        uid = generate_uid()
        assert scu.create(request(refs), uid)[0] == 0
        assert scu.create(request(refs), uid)[0] == 0x0111  # duplicate
        assert scu.action(generate_uid(), 1) == 0x0112
        assert scu.get(generate_uid())[0] == 0x0112
        assert scu.action(uid, 7) == 0x0123
        bad = Dataset()
        bad.NumberOfCopies = 0
        assert scu.action(uid, 1, bad) == 0x0115
        bad = Dataset()
        bad.RequestPriority = "URGENT"
        assert scu.action(uid, 1, bad) == 0x0115
        assert scu.action(uid, 1) == 0
        assert scu.action(uid, 1) == 0xA510  # initiated twice
        assert scu.wait_for(uid, ("DONE", "FAILURE")).ExecutionStatus == "DONE"
        assert scu.action(uid, 2) == 0xC201  # cancel after completion

        # an instance the archive does not have: accepted, then FAILURE with the Failed SOP Sequence
        unknown = generate_uid()
        missing = generate_uid()
        assert scu.create(request(refs[:1] + [(CT, missing)]), unknown)[0] == 0
        assert scu.action(unknown, 1) == 0
        failed = scu.wait_for(unknown, ("DONE", "FAILURE"))
        assert failed.ExecutionStatus == "FAILURE" and failed.ExecutionStatusInfo == "NO_SUCH_INSTANCE"
        assert [(f.ReferencedSOPInstanceUID, f.FailureReason) for f in failed.FailedSOPSequence] == [(missing, 0x0112)]
        assert failed.TotalNumberOfPiecesOfMediaCreated == 0
        # the association still works
        assert scu.get(uid)[0] == 0
    finally:
        scu.release()


def test_cancel_idle_and_while_creating(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    out = tmp_path / "out"
    folder = write_settings(tmp_path / "pacs", burner="media._burners:GatedBurner",
                            burner_options={"path": str(out), "gate": str(gate)})
    instances = series(tmp_path)
    ingest(folder, [p for _c, _i, p in instances])
    refs = [(c, i) for c, i, _ in instances]
    with running_server(folder) as server:
        scu = Scu(server.port)
        try:
            idle = generate_uid()
            assert scu.create(request(refs), idle)[0] == 0
            assert scu.action(idle, 2) == 0
            assert scu.get(idle)[0] == 0x0112  # a cancelled request is deleted (S.3.2.3.2)
            busy = generate_uid()
            assert scu.create(request(refs), busy)[0] == 0
            assert scu.action(busy, 1) == 0
            started = Path(f"{gate}.started")
            scu.wait_for(busy, ("CREATING",))
            deadline = time.monotonic() + 60
            while not started.exists():  # the burner has the finished image
                assert time.monotonic() < deadline
                threading.Event().wait(0.02)
            assert scu.action(busy, 2) == 0
            assert scu.get(busy)[0] == 0x0112
        finally:
            scu.release()
    assert not out.exists() or list(out.iterdir()) == []
    assert list((folder / "data" / "media" / "queue" / "work").iterdir()) == []


def test_kill_9_while_writing_then_restart_finishes(tmp_path: Path) -> None:
    need("xorriso")
    gate = tmp_path / "gate"
    out = tmp_path / "out"
    folder = write_settings(tmp_path / "pacs", burner="media._burners:GatedBurner",
                            burner_options={"path": str(out), "gate": str(gate)})
    instances = series(tmp_path, count=20, rows=256)
    ingest(folder, [p for _c, _i, p in instances])
    refs = [(c, i) for c, i, _ in instances]
    env = dcmtk_env(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent / "src"), str(TESTS)])
    proc, port = start_process(folder, env)
    uid = generate_uid()
    try:
        scu = Scu(port)
        assert scu.create(request(refs, LabelText="kill test"), uid)[0] == 0
        assert scu.action(uid, 1) == 0
        scu.wait_for(uid, ("CREATING",))
        started = Path(f"{gate}.started")
        deadline = time.monotonic() + 60
        while not started.exists():
            assert time.monotonic() < deadline
            threading.Event().wait(0.02)
        scu.assoc.abort()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    import json

    state = json.loads((folder / "data" / "media" / "queue" / f"{uid}.json").read_text())
    assert state["state"] == "CREATING"  # not DONE: the disc was not finished
    assert not out.exists() or list(out.iterdir()) == []

    gate.write_text("go")
    proc, port = start_process(folder, env)
    try:
        scu = Scu(port)
        done = scu.wait_for(uid, ("DONE", "FAILURE"))
        scu.release()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert done.ExecutionStatus == "DONE"
    iso = out / f"{uid}.iso"
    x = tmp_path / "x"
    run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(x)])
    assert {r[3] for r in image_records(x / "DICOMDIR")} == {i for _c, i in refs}
    assert list((folder / "data" / "media" / "queue" / "work").iterdir()) == []
