"""The Storage add-in in a running server, fed by DCMTK storescu, on SQLite, PostgreSQL and MariaDB.

Each dataset must be stored byte-identical to what storescu sent (DCMTK sends these files without
re-encoding when proposing their own transfer syntax), indexed with the right attributes, and the
store must check clean. Bad input gets the right status and leaves stored data alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from sqlalchemy.engine import URL, make_url

from pacskit.net import RequestedContext, connect
from pacskit.dicom.part10 import read_part10_header
from pacskit.net.sinks import temp_files
from pacskit.server.server import Server
from pacskit.config.settings import load_settings
from pacskit.testing.peers import dcmtk_env, dcmtk_tool, have_dcmtk
from pacskit.testing.synth import make_instance
from pacskit.testing.synth import dataset_bytes

pytestmark = pytest.mark.dcmtk

# pydicom test files that DCMTK sends unchanged, with the storescu option proposing their syntax, and
# distinct SOP Instance UIDs (many pydicom files share them on purpose). JPEGLSNearLossless_08.dcm has no
# Study/Series UID: it is refused with 0xC000, tested below.
FILES = {
    "SC_rgb_small_odd.dcm": "-xe",
    "test-SR.dcm": "-xe",
    "ExplVR_BigEnd.dcm": "-xb",
    "MR_small_implicit.dcm": "-xi",
    "SC_rgb_jpeg_dcmtk.dcm": "-xy",
    "SC_rgb_jpeg_gdcm.dcm": "-xs",
    "GDCMJ2K_TextGBR.dcm": "-xv",
    "rtplan.dcm": "-xi",
}



def _settings(tmp_path: Path, db_url: URL | str, **storage: object):
    folder = tmp_path / "srv"
    folder.mkdir()
    url = db_url.render_as_string(hide_password=False) if isinstance(db_url, URL) else db_url
    lines = ['ae_title = "STOREPACS"', "port = 0", 'data_dir = "data"', "[database]", f"url = {url!r}", "[addins.storage]"]
    lines += [f"{k} = {v!r}" for k, v in storage.items()]
    (folder / "server.toml").write_text("\n".join(lines) + "\n")
    return load_settings(folder)


async def _storescu(port: int, option: str, *files: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        dcmtk_tool("storescu"), "-v", option, "-aec", "STOREPACS", "-aet", "MODALITY", "127.0.0.1", str(port), *files,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dcmtk_env(),
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return out.decode(errors="replace")


def test_storescu_files_stored_byte_identical_and_indexed(tmp_path: Path, db_url: URL | str) -> None:
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")
    settings = _settings(tmp_path, db_url)
    sources = {name: get_testdata_file(name) for name in FILES}

    async def run() -> dict[str, str]:
        outputs = {}
        async with Server(settings) as server:
            for name, option in FILES.items():
                outputs[name] = await _storescu(server.port, option, sources[name])
            store = server.store
            for name, path in sources.items():
                ds = dcmread(path, stop_before_pixels=True)
                row = store.get_instance(ds.SOPInstanceUID)
                assert row is not None, (name, outputs[name])
                assert row.sop_class_uid == ds.SOPClassUID
                assert row.transfer_syntax_uid == read_part10_header(path).transfer_syntax
                assert row.source_ae == "MODALITY"
                assert row.series.series_instance_uid == ds.SeriesInstanceUID
                assert row.series.study.study_instance_uid == ds.StudyInstanceUID
                stored = store.instance_path(ds.SOPInstanceUID)
                assert dataset_bytes(stored) == dataset_bytes(path), name
                assert row.sha256 == hashlib.sha256(Path(stored).read_bytes()).hexdigest()
            report = store.check()
            assert report.ok, str(report)
            assert store.count("instances") == len(FILES)
        return outputs

    outputs = asyncio.run(run())
    for name, out in outputs.items():
        assert "Received Store Response (Success)" in out, (name, out)


def test_instance_without_study_uid_is_refused_by_storescu_status(tmp_path: Path, db_url: URL | str) -> None:
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")
    settings = _settings(tmp_path, db_url)

    async def run() -> tuple[str, int]:
        async with Server(settings) as server:
            out = await _storescu(server.port, "-xu", get_testdata_file("JPEGLSNearLossless_08.dcm"))
            return out, server.store.count("instances")

    out, count = asyncio.run(run())
    assert "Received Store Response (Error: CannotUnderstand)" in out, out
    assert count == 0


def test_bad_input_gets_the_right_status_and_keeps_stored_data(tmp_path: Path, db_url: URL | str) -> None:
    """Duplicate refused (0x0111) without touching the stored copy; command/dataset UID mismatch 0xA900;
    an invalid UID 0xC000. The server keeps serving throughout."""
    settings = _settings(tmp_path, db_url, duplicate_policy="reject")
    good = make_instance(tmp_path / "good.dcm", patient_id="P1")
    ds = dcmread(good)
    changed = tmp_path / "changed.dcm"
    ds.PatientName = "CHANGED^NAME"
    ds.save_as(changed, enforce_file_format=True)
    bad_uid = tmp_path / "bad_uid.dcm"
    ds2 = dcmread(good)
    ds2.SOPInstanceUID = "1.2.3.4/05"  # a path separator: never a usable UID (a leading zero would do)
    ds2.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4/05"
    ds2.save_as(bad_uid, enforce_file_format=True)
    ct = "1.2.840.10008.5.1.4.1.1.2"

    async def run() -> None:
        async with Server(settings) as server:
            assoc = await connect("127.0.0.1", server.port, called_ae="STOREPACS", calling_ae="MOD",
                                  contexts=[RequestedContext(ct)])
            async with assoc:
                assert (await assoc.store(good)).status == 0x0000
                stored = server.store.instance_path(ds.SOPInstanceUID)
                before = Path(stored).read_bytes()
                assert (await assoc.store(changed)).status == 0x0111
                assert Path(stored).read_bytes() == before
                assert (await assoc.store(bad_uid)).status == 0xC000
                # a C-STORE whose command names another instance than the dataset carries
                mismatch = tmp_path / "mismatch.dcm"
                shutil.copy(good, mismatch)
                raw = bytearray(mismatch.read_bytes())
                uid = ds.SOPInstanceUID.encode()
                meta_end = read_part10_header(mismatch).dataset_offset
                other = (uid[:-1] + (b"7" if uid[-1:] != b"7" else b"8"))
                raw[:meta_end] = raw[:meta_end].replace(uid, other)
                mismatch.write_bytes(bytes(raw))
                rsp = await assoc.store(mismatch)
                assert rsp.status == 0xA900, hex(rsp.status)
                assert "differs" in rsp.get("ErrorComment", "")
            assert server.store.count("instances") == 1
            assert server.store.check().ok
            left = {str(p) for p in Path(server.store.temp_dir).glob("rx-*")}
            assert not left - temp_files(server.store.temp_dir).spare_paths()  # nothing but empty spares

    asyncio.run(run())


async def _two_associations_once_warm(server: Server, sop_class: str) -> tuple[Any, Any]:
    """Two associations to ``server`` (its C-STOREs can then run inline only where ``brief`` says so),
    opened once the index's warm-up at start, which holds the index's write lock for a moment, is
    over (while it holds it, the Storage add-in sends C-STOREs to the pool)."""
    lock = server.store.index._write_lock

    def through_lock() -> None:
        with lock:
            pass

    await asyncio.to_thread(through_lock)
    contexts = [RequestedContext(sop_class)]
    first = await connect("127.0.0.1", server.port, called_ae="STOREPACS", calling_ae="MOD", contexts=contexts)
    second = await connect("127.0.0.1", server.port, called_ae="STOREPACS", calling_ae="MOD", contexts=contexts)
    return first, second


def test_c_store_runs_on_the_event_loop_beside_other_associations_only_where_the_ingest_is_local(
        tmp_path: Path, db_url: URL | str) -> None:
    """With blobs in a folder on a local disk and the index in SQLite or in a database server on this
    machine (the tests' PostgreSQL and MariaDB are on 127.0.0.1) an ingest waits only on this machine,
    so the Storage add-in's C-STORE runs on the event loop's thread although other associations share
    it (here the requestor's end is on the same loop too). While another thread of the server holds
    the index's write lock (SQLite), it runs in the pool, so the loop never waits for it."""
    import threading

    settings = _settings(tmp_path, db_url)
    files = [make_instance(tmp_path / f"i{n}.dcm", patient_id="P1") for n in range(3)]
    ct = "1.2.840.10008.5.1.4.1.1.2"
    threads: list[threading.Thread] = []
    entered = threading.Event()

    async def run() -> None:
        async with Server(settings) as server:
            store = server.store
            ingest = store.start_ingest

            def spy(*args, **kwargs):
                threads.append(threading.current_thread())
                entered.set()
                return ingest(*args, **kwargs)

            store.start_ingest = spy  # type: ignore[method-assign]
            lock = store.index._write_lock
            first, second = await _two_associations_once_warm(server, ct)
            async with first, second:
                assert [r.status for r in await asyncio.gather(first.store(files[0]), second.store(files[1]))] == [0, 0]
                held = threading.Event()
                release = threading.Event()

                def hold() -> None:
                    with lock:
                        held.set()
                        release.wait(30)

                holder = threading.Thread(target=hold)
                holder.start()
                assert held.wait(30)
                entered.clear()
                pending = asyncio.ensure_future(first.store(files[2]))
                assert await asyncio.to_thread(entered.wait, 30)  # the loop is free: the spy ran elsewhere
                release.set()
                assert (await pending).status == 0x0000
                holder.join(30)
            assert store.count("instances") == 3

    loop_thread = threading.current_thread()  # asyncio.run runs the loop on this thread
    asyncio.run(run())
    sqlite = make_url(db_url).get_backend_name() == "sqlite"
    # the write lock is SQLite's: on a database server the third C-STORE runs on the loop too
    assert [t is loop_thread for t in threads] == [True, True, not sqlite]


def test_a_large_instance_is_answered_once_flushed_while_the_loop_serves_the_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A C-STORE larger than an ingest log record, beside another association on SQLite and a local
    disk: it is walked and indexed on the event loop's thread, its blob is flushed on the blob
    store's threads, and its answer waits for that flush (held here) while the loop goes on serving
    the other association, whose C-STORE is answered meanwhile."""
    import threading

    from pacskit.store import blobs as blobs_module
    from pacskit.store.ingestlog import MAX_RECORD

    settings = _settings(tmp_path, f"sqlite:///{tmp_path / 'index.db'}")
    large = make_instance(tmp_path / "large.dcm", rows=256, cols=256, patient_id="P1")
    small = make_instance(tmp_path / "small.dcm", patient_id="P2")
    assert large.stat().st_size > MAX_RECORD
    ct = "1.2.840.10008.5.1.4.1.1.2"
    release, flushing = threading.Event(), threading.Event()
    flushed: list[str] = []
    real_fsync = blobs_module.fsync_path

    def held_fsync(path: str, *, directory: bool = False) -> None:
        if not directory and path.endswith(".dcm") and os.path.getsize(path) > MAX_RECORD:
            flushing.set()
            assert release.wait(30)
            flushed.append(path)
        real_fsync(path, directory=directory)

    monkeypatch.setattr(blobs_module, "fsync_path", held_fsync)
    threads: list[tuple[str, threading.Thread]] = []

    async def run() -> None:
        async with Server(settings) as server:
            store = server.store
            start_ingest = store.start_ingest

            def spy(source, **kwargs):
                threads.append((kwargs["expected_sop_instance_uid"], threading.current_thread()))
                return start_ingest(source, **kwargs)

            store.start_ingest = spy  # type: ignore[method-assign]
            first, second = await _two_associations_once_warm(server, ct)
            async with first, second:
                answer = asyncio.ensure_future(first.store(large))
                assert await asyncio.to_thread(flushing.wait, 30)
                assert (await second.store(small)).status == 0x0000  # the loop serves the other association
                assert not answer.done()  # the large one waits for its flush
                assert store.count("instances") == 1  # and is indexed only once its blob is durable
                release.set()
                assert (await answer).status == 0x0000
            assert len(flushed) == 1

    loop_thread = threading.current_thread()
    try:
        asyncio.run(run())
    finally:
        release.set()
    assert [t is loop_thread for _, t in threads] == [True, True]


@pytest.mark.parametrize("how", ["aborted", "timed-out"])
def test_a_large_instance_left_unanswered_during_its_flush_is_settled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """While the C-STORE of a large instance awaits its flush on the loop, the requestor aborts, or the
    handler's timeout answers a failure: the ingest is still settled once the flush ends (after a
    timeout, by the flusher's thread): its row committed (it was complete and durable, though never
    acknowledged), and nothing left holding the store, so that a reindex can run."""
    import threading

    from pacskit.net.errors import AssociationAborted
    from pacskit.store import blobs as blobs_module
    from pacskit.store import datastore as datastore_module
    from pacskit.store.ingestlog import MAX_RECORD

    settings = _settings(tmp_path, f"sqlite:///{tmp_path / 'index.db'}", **({"timeout": 0.5} if how == "timed-out" else {}))
    large = make_instance(tmp_path / "large.dcm", rows=256, cols=256, patient_id="P1")
    release, flushing = threading.Event(), threading.Event()
    real_fsync = blobs_module.fsync_path

    def held_fsync(path: str, *, directory: bool = False) -> None:
        if not directory and path.endswith(".dcm") and os.path.getsize(path) > MAX_RECORD:
            flushing.set()
            assert release.wait(30)
        real_fsync(path, directory=directory)

    monkeypatch.setattr(blobs_module, "fsync_path", held_fsync)
    settled_on: list[str] = []
    settled = threading.Event()
    result = datastore_module.PendingIngest.result

    def spy(self):
        try:
            return result(self)
        finally:
            settled_on.append(threading.current_thread().name)
            settled.set()

    monkeypatch.setattr(datastore_module.PendingIngest, "result", spy)
    small = make_instance(tmp_path / "small.dcm", patient_id="P2")

    async def run() -> None:
        async with Server(settings) as server:
            store = server.store
            first, second = await _two_associations_once_warm(server, "1.2.840.10008.5.1.4.1.1.2")
            async with second:
                answer = asyncio.ensure_future(first.store(large))
                assert await asyncio.to_thread(flushing.wait, 30)
                if how == "aborted":
                    first.abort()
                    with pytest.raises(AssociationAborted):
                        await answer
                else:
                    assert (await answer).status == 0xC000  # answered by the timeout, the flush still held
                assert not settled.is_set()
                release.set()
                assert await asyncio.to_thread(settled.wait, 30)  # once the flush ends
                if how == "timed-out":  # the awaiting coroutine was cancelled: the flusher settles it
                    assert settled_on[0].startswith("blob-flush")
                    await first.release()
                assert store.count("instances") == 1
                assert store._gate._shared == 0  # nothing holds the store: a reindex could run
                assert store.check().ok
                assert (await second.store(small)).status == 0x0000  # the server goes on

    try:
        asyncio.run(run())
    finally:
        release.set()
