"""The Q/R gateway add-in with Orthanc as the remote PACS behind it.

DCMTK findscu / movescu / getscu talk to pacskit only; Orthanc holds the studies. C-FIND answers are
relayed (merged with pacskit's own, one per study), a remote's failure is relayed with its status,
a C-CANCEL reaches Orthanc; C-MOVE is fetched through pacskit (C-GET or C-MOVE to pacskit) into its
store and sent to DCMTK storescp, or Orthanc is told to move directly; a kill -9 in the middle of a
gateway move leaves a store that ``pacskit check`` finds clean and the repeated move delivers all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from pacskit.addins.gateway import GatewayAddIn
from pacskit.addins.storage import StorageAddIn
from pacskit.addins.verification import VerificationAddIn
from pacskit.config.aetitles import FileAeRegistry, RemoteAE
from pacskit.net import CommandField, RequestedContext, connect
from pacskit.testing.peers import (
    OrthancPeer,
    dcmtk_env,
    dcmtk_tool,
    free_port,
    have_dcmtk,
    have_orthanc,
    orthanc,
    storescp,
    wait_for_port,
)
from pacskit.store import Instance, Series, Study
from pacskit.testing.server import running_server
from pacskit.testing.synth import make_series

pytestmark = [pytest.mark.dcmtk, pytest.mark.slow]

AE = "GATEWAY"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


@pytest.fixture(autouse=True)
def _peers_needed() -> None:
    if not have_dcmtk() or not have_orthanc():
        pytest.skip("DCMTK and Orthanc are needed")


def _wait(condition, what: str, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _upload(orth: OrthancPeer, files: list[Path]) -> None:
    for path in files:
        orth.post("/instances", path.read_bytes())


def _settings(folder: Path, port: int = 0, **gateway: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f'ae_title = "{AE}"', f"port = {port}", "[admin]", "enabled = false",
             "[addins.query]", "enabled = false", "[addins.retrieve]", "enabled = false",
             "[addins.gateway]", "enabled = true"]
    gateway.setdefault("remotes", '["ORTHANC"]')
    lines += [f"{key} = {value}" for key, value in gateway.items()]
    (folder / "server.toml").write_text("\n".join(lines) + "\n")


def _register(folder: Path, **aes: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    registry = FileAeRegistry(folder / "ae-titles.toml")
    for title, port in aes.items():
        registry.add(RemoteAE(title=title, host="127.0.0.1", port=port))


def _dcmtk(tool: str, port: int, keys: list[str], out: Path, *extra: str, timeout: float = 180) -> str:
    out.mkdir(parents=True, exist_ok=True)
    argv = [dcmtk_tool(tool), "-v", "-S", "-aec", AE, "-aet", "DCMTKSCU", *extra]
    for key in keys:
        argv += ["-k", key]
    argv += ["127.0.0.1", str(port)]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                          env=dcmtk_env(), timeout=timeout, check=False, cwd=out)
    return proc.stdout.decode("utf-8", errors="replace")


def _findscu(port: int, keys: list[str], out: Path, *extra: str) -> tuple[list[Dataset], str]:
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    output = _dcmtk("findscu", port, keys, out, "-X", "-od", str(out), *extra)
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))], output


def _uids(folder: Path) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in folder.rglob("*.dcm")}


def _file_uids(files: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OrthancPeer, dict[str, list[Path]]]]:
    """Orthanc with two studies of patient GW1 and one of GW2; it knows DEST (storescp) and GATEWAY."""
    tmp = tmp_path_factory.mktemp("gateway-remote")
    files = {
        "a": make_series(tmp / "a", 12, 32, 32, patient_id="GW1", patient_name="GATE^ONE",
                         attrs={"StudyDescription": "REMOTE A", "StudyDate": "20240101"}),
        "b": make_series(tmp / "b", 5, 32, 32, patient_id="GW1", patient_name="GATE^ONE", modality="MR",
                         attrs={"StudyDescription": "REMOTE B", "StudyDate": "20230101"}),
        "c": make_series(tmp / "c", 3, 16, 16, patient_id="GW2", patient_name="GATE^TWO",
                         attrs={"StudyDescription": "REMOTE C"}),
    }
    dest_port, gateway_port = free_port(), free_port()
    with orthanc(tmp / "orthanc", modalities={"dest": ["DEST", "127.0.0.1", dest_port],
                                              "gateway": [AE, "127.0.0.1", gateway_port]}) as orth:
        for group in files.values():
            _upload(orth, group)
        orth.dest_port = dest_port  # type: ignore[attr-defined]
        orth.gateway_port = gateway_port  # type: ignore[attr-defined]
        yield orth, files


def _study_uid(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def test_findscu_through_the_gateway_gets_orthancs_studies_merged_with_local_ones(remote, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    orth, files = remote
    folder = tmp_path / "pacs"
    _settings(folder)
    _register(folder, ORTHANC=orth.port)
    local = make_series(tmp_path / "local", 2, 16, 16, patient_id="GW1", patient_name="GATE^ONE",
                        attrs={"StudyDescription": "LOCAL ONLY"})
    with running_server(folder, addin_classes=[VerificationAddIn, StorageAddIn, GatewayAddIn]) as server:
        assert server.store is not None
        for path in (*local, files["a"][0]):  # study A is both here and on Orthanc
            copy = tmp_path / "copy.dcm"
            shutil.copyfile(path, copy)
            server.store.ingest(copy, source_ae="MOD")  # takes the file over
        keys = ["QueryRetrieveLevel=STUDY", "PatientID=GW1", "StudyInstanceUID", "StudyDescription",
                "RetrieveAETitle", "ModalitiesInStudy"]
        answers, output = _findscu(server.port, keys, tmp_path / "find")
        assert "Received Final Find Response (Success)" in output, output
        by_study = {str(a.StudyInstanceUID): a for a in answers}
        assert len(answers) == len(by_study) == 3  # A once (local first), B from Orthanc, the local one
        assert {str(a.StudyDescription) for a in answers} == {"REMOTE A", "REMOTE B", "LOCAL ONLY"}
        assert {str(a.RetrieveAETitle) for a in answers} == {AE}  # retrieve through the gateway
        assert by_study[_study_uid(files["b"])].ModalitiesInStudy == "MR"

        # with local = false, only Orthanc's answers
        _settings(folder, local="false")
    with running_server(folder, addin_classes=[VerificationAddIn, StorageAddIn, GatewayAddIn]) as server:
        answers, output = _findscu(server.port, ["QueryRetrieveLevel=STUDY", "PatientID=GW*",
                                                 "StudyInstanceUID"], tmp_path / "find2")
        assert "Received Final Find Response (Success)" in output, output
        assert {str(a.StudyInstanceUID) for a in answers} == {_study_uid(f) for f in files.values()}


def test_a_remote_failure_is_relayed_with_its_status(remote, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    orth, _files = remote
    folder = tmp_path / "pacs"
    _settings(folder, remotes='["ORTHANC", "DOWN"]')
    _register(folder, ORTHANC=orth.port, DOWN=free_port())  # nothing listens there
    with running_server(folder, addin_classes=[VerificationAddIn, StorageAddIn, GatewayAddIn]) as server:
        answers, output = _findscu(server.port, ["QueryRetrieveLevel=STUDY", "PatientID=GW2",
                                                 "StudyInstanceUID"], tmp_path / "find")
        assert len(answers) == 1  # Orthanc's answer arrived
        assert "Received Final Find Response (Failed: UnableToProcess)" in output, output
        assert any("DOWN" in r.getMessage() and "unreachable" in r.getMessage() for r in caplog.records)
        # the remote's own refusal: Orthanc answers a C-FIND without a level with a failure status
        answers, output = _findscu(server.port, ["PatientID=GW2"], tmp_path / "find2")
        assert answers == []
        assert "Final Find Response (Success)" not in output, output
    _settings(folder, remotes='["ORTHANC", "DOWN"]', remote_failure='"ignore"')
    with running_server(folder, addin_classes=[VerificationAddIn, StorageAddIn, GatewayAddIn]) as server:
        answers, output = _findscu(server.port, ["QueryRetrieveLevel=STUDY", "PatientID=GW2",
                                                 "StudyInstanceUID"], tmp_path / "find3")
        assert len(answers) == 1 and "Received Final Find Response (Success)" in output, output


async def _find_then_cancel(port: int) -> list[int]:
    """C-FIND every instance (Orthanc's 20) at IMAGE level, C-CANCEL after the first answer."""
    assoc = await connect("127.0.0.1", port, called_ae=AE, calling_ae="CANCELER",
                          contexts=[RequestedContext(STUDY_ROOT_FIND)])
    statuses: list[int] = []
    async with assoc:
        ctx = assoc.find_context(STUDY_ROOT_FIND)
        ds = Dataset()
        ds.QueryRetrieveLevel = "IMAGE"
        ds.PatientID = "GW1"
        ds.SOPInstanceUID = ""
        ds.StudyInstanceUID = ""
        ds.SeriesInstanceUID = ""
        async for rsp, received in assoc.request(CommandField.C_FIND_RQ, STUDY_ROOT_FIND, ds, context=ctx):
            statuses.append(rsp.status)
            if received is not None:
                received.discard()
            if len(statuses) == 1:
                await assoc.cancel(assoc.last_message_id, ctx)
    return statuses


def test_a_c_cancel_is_forwarded_and_answered_cancel(tmp_path: Path) -> None:
    """The remote is a pynetdicom Q/R SCP that answers once and then waits for a C-CANCEL: the one
    the requestor sends to pacskit must reach it, and the requestor gets Cancel (0xFE00)."""
    import threading

    from pynetdicom import AE as PyndAE, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

    saw_cancel = threading.Event()

    def on_find(event):  # type: ignore[no-untyped-def]
        answer = Dataset()
        answer.QueryRetrieveLevel = "IMAGE"
        answer.SOPInstanceUID = "1.2.3.4.1"
        yield 0xFF00, answer
        deadline = time.monotonic() + 60
        cancelled = False
        while not cancelled and time.monotonic() < deadline:
            cancelled = event.is_cancelled  # true once: pynetdicom consumes the C-CANCEL when it says so
            time.sleep(0.01)  # pynetdicom offers no event to wait on; the deadline bounds it
        if cancelled:
            saw_cancel.set()
            yield 0xFE00, None
            return
        yield 0x0000, None

    remote = PyndAE(ae_title="SLOWQR")
    remote.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    scp = remote.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)])
    try:
        folder = tmp_path / "pacs"
        _settings(folder, local="false", remotes='["SLOWQR"]')
        _register(folder, SLOWQR=scp.server_address[1])
        with running_server(folder, addin_classes=[VerificationAddIn, StorageAddIn, GatewayAddIn]) as server:
            statuses = asyncio.run(_find_then_cancel(server.port))
    finally:
        scp.shutdown()
    assert statuses == [0xFF00, 0xFE00], statuses
    assert saw_cancel.is_set()


def test_movescu_fetches_through_pacskit_and_caches(remote, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    orth, files = remote
    study = _study_uid(files["a"])
    caplog.set_level(logging.INFO)
    for fetch_with in ("C-GET", "C-MOVE"):
        folder = tmp_path / fetch_with / "pacs"
        with storescp(tmp_path / fetch_with / "dest") as scp:
            _settings(folder, port=orth.gateway_port, fetch_with=f'"{fetch_with}"')
            _register(folder, ORTHANC=orth.port, DEST=scp.port)
            with running_server(folder, addin_classes=[VerificationAddIn, StorageAddIn, GatewayAddIn]) as server:
                output = _dcmtk("movescu", server.port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"],
                                tmp_path / fetch_with / "move", "-aem", "DEST")
                assert "Received Final Move Response (Success)" in output, output
                dest = tmp_path / fetch_with / "dest"
                _wait(lambda dest=dest: _uids(dest) == _file_uids(files["a"]), "storescp")
                assert server.store is not None
                cached = _held(server.store, study)
                assert cached == _file_uids(files["a"])  # kept: the next retrieve is served from here
                caplog.clear()
                output = _dcmtk("movescu", server.port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"],
                                tmp_path / fetch_with / "move", "-aem", "DEST")
                assert "Received Final Move Response (Success)" in output, output
                assert any("here already; not fetched" in r.getMessage() for r in caplog.records)


def _final_move_status(output: str) -> str:
    return next(line for line in output.splitlines() if "Final Move Response" in line).split("Final Move Response")[1]


def test_direct_move_and_auto(remote, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    orth, files = remote
    study = _study_uid(files["b"])
    keys = ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"]
    with storescp(tmp_path / "dest", port=orth.dest_port) as scp:
        folder = tmp_path / "pacs"
        _settings(folder, move_mode='"direct"', local="false")
        _register(folder, ORTHANC=orth.port, DEST=scp.port, OTHER=scp.port)
        with running_server(folder, addin_classes=[VerificationAddIn, StorageAddIn, GatewayAddIn]) as server:
            output = _dcmtk("movescu", server.port, keys, tmp_path / "move", "-aem", "DEST")
            assert "Received Final Move Response (Success)" in output, output
            _wait(lambda: _uids(tmp_path / "dest") == _file_uids(files["b"]), "storescp")
            assert server.store is not None
            assert _held(server.store, study) == set()  # nothing went through pacskit
            # Orthanc does not know OTHER: its refusal is relayed as it answers it itself
            ours = _dcmtk("movescu", server.port, keys, tmp_path / "move", "-aem", "OTHER")
            theirs = _dcmtk("movescu", orth.port, keys, tmp_path / "move", "-aem", "OTHER", "-aec", "ORTHANC")
            assert "Success" not in _final_move_status(ours)
            assert _final_move_status(ours) == _final_move_status(theirs), (ours, theirs)
        # auto: direct where Orthanc knows the destination, fetched through pacskit for the others
        _settings(folder, move_mode='"auto"', direct_destinations='{ORTHANC = ["DEST"]}')
        with running_server(folder, addin_classes=[VerificationAddIn, StorageAddIn, GatewayAddIn]) as server:
            assert server.store is not None
            output = _dcmtk("movescu", server.port, keys, tmp_path / "move", "-aem", "DEST")
            assert "Received Final Move Response (Success)" in output, output
            assert _held(server.store, study) == set()
            output = _dcmtk("movescu", server.port, keys, tmp_path / "move", "-aem", "OTHER")
            assert "Received Final Move Response (Success)" in output, output
            assert _held(server.store, study) == _file_uids(files["b"])


def test_getscu_through_the_gateway(remote, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    orth, files = remote
    study = _study_uid(files["c"])
    folder = tmp_path / "pacs"
    _settings(folder)
    _register(folder, ORTHANC=orth.port)
    with running_server(folder, addin_classes=[VerificationAddIn, StorageAddIn, GatewayAddIn]) as server:
        output = _dcmtk("getscu", server.port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"],
                        tmp_path / "get", "-od", str(tmp_path / "get"))
    assert "Received C-GET Response (Success)" in output, output
    assert "Number of Completed Suboperations : 3" in output, output
    assert {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in (tmp_path / "get").iterdir() if p.is_file()} == _file_uids(files["c"])


def test_statuses_of_a_move_of_an_unknown_study_and_a_bad_identifier_are_orthancs(remote, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Nothing held here: the final status is the remote's own (Orthanc refuses an unknown study with
    0xC000); a malformed identifier is refused by pacskit's retrieve (0xA900) before anything moves."""
    orth, _files = remote
    folder = tmp_path / "pacs"
    with storescp(tmp_path / "dest", port=orth.dest_port) as scp:
        _settings(folder)
        _register(folder, ORTHANC=orth.port, DEST=scp.port)
        with running_server(folder, addin_classes=[VerificationAddIn, StorageAddIn, GatewayAddIn]) as server:
            keys = ["QueryRetrieveLevel=STUDY", "StudyInstanceUID=1.2.3.999"]
            ours = _dcmtk("movescu", server.port, keys, tmp_path / "move", "-aem", "DEST")
            theirs = _dcmtk("movescu", orth.port, keys, tmp_path / "move", "-aem", "DEST", "-aec", "ORTHANC")
            assert _final_move_status(ours) == _final_move_status(theirs), (ours, theirs)
            output = _dcmtk("movescu", server.port, ["QueryRetrieveLevel=SERIES", "StudyInstanceUID=1.2.3.999"],
                            tmp_path / "move", "-aem", "DEST")
            assert "Final Move Response (Success)" not in output, output  # no series UID: refused


_SERVER = textwrap.dedent("""
    import asyncio, sys
    from pacskit.config.settings import load_settings
    from pacskit.server.server import Server
    from pacskit.addins.storage import StorageAddIn
    from pacskit.addins.verification import VerificationAddIn
    from pacskit.addins.gateway import GatewayAddIn

    async def main():
        server = Server(load_settings(sys.argv[1]), addin_classes=[VerificationAddIn, StorageAddIn, GatewayAddIn])
        await server.start()
        await asyncio.Event().wait()

    asyncio.run(main())
""")


def test_kill_9_during_a_gateway_move_leaves_nothing_partial(tmp_path: Path) -> None:
    big = make_series(tmp_path / "big", 150, 256, 256, patient_id="GWKILL")
    study = _study_uid(big)
    port = free_port()
    folder = tmp_path / "pacs"
    with orthanc(tmp_path / "orthanc") as orth, storescp(tmp_path / "dest") as scp:
        _upload(orth, big)
        _settings(folder, port=port)
        _register(folder, ORTHANC=orth.port, DEST=scp.port)
        (folder / "server.toml").write_text((folder / "server.toml").read_text().replace("[admin]\nenabled = false\n", ""))

        def start() -> subprocess.Popen[bytes]:
            proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(folder)], stdout=subprocess.DEVNULL,
                                    stderr=open(folder / "server.log", "ab"))  # noqa: SIM115
            wait_for_port("127.0.0.1", port, timeout=30, proc=proc)
            return proc

        server = start()
        move = subprocess.Popen([dcmtk_tool("movescu"), "-v", "-S", "-aec", AE, "-aet", "DCMTKSCU", "-aem", "DEST",
                                 "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                                 "127.0.0.1", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=dcmtk_env(), cwd=tmp_path)
        try:
            _wait(lambda: _count_instances(folder) >= 10, "the fetch to be under way")
        finally:
            server.send_signal(signal.SIGKILL)
            server.wait(30)
        move.wait(60)
        held = _count_instances(folder)
        assert 0 < held < 150, held  # killed in the middle
        check = subprocess.run([sys.executable, "-m", "pacskit", "check", "-q", "--data-dir", str(folder)],
                               capture_output=True, text=True, timeout=120)
        assert check.returncode == 0, check.stdout + check.stderr  # no orphan file, no row without its file
        server = start()
        try:
            output = _dcmtk("movescu", port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"],
                            tmp_path / "move2", "-aem", "DEST")
            assert "Received Final Move Response (Success)" in output, output
            _wait(lambda: _file_uids(big) <= _uids(tmp_path / "dest"), "storescp to have the whole study")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)


def _count_instances(folder: Path) -> int:
    """Instances committed to the server's SQLite index (read-only, while it runs in another process)."""
    import sqlite3

    if not (folder / "index.db").exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{folder / 'index.db'}?mode=ro", uri=True, timeout=5)) as db:
        try:
            return int(db.execute("SELECT count(*) FROM instances").fetchone()[0])
        except sqlite3.OperationalError:  # the schema is not there yet
            return 0


def _held(store, study: str) -> set[str]:  # type: ignore[no-untyped-def]
    with store.index.reading() as s:
        return set(s.scalars(select(Instance.sop_instance_uid).join(Series, Instance.series_fk == Series.pk)
                             .join(Study, Series.study_fk == Study.pk).where(Study.study_instance_uid == study)))


def test_pending_counts_are_relayed(remote, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """pacskit's own SCU through the gateway: every Pending response's counts add up to the study's 12
    instances; while fetching nothing is completed yet; direct mode relays Orthanc's own counts."""
    from pacskit.client import QueryRetrieveScu

    orth, files = remote
    study = _study_uid(files["a"])
    for mode in ("fetch", "direct"):
        folder = tmp_path / mode / "pacs"
        with storescp(tmp_path / mode / "dest", port=orth.dest_port) as scp:
            _settings(folder, move_mode=f'"{mode}"', local="false" if mode == "direct" else "true")
            (folder / "server.toml").write_text((folder / "server.toml").read_text()
                                                + "[addins.gateway.retrieve]\npending_interval = 0\n")
            _register(folder, ORTHANC=orth.port, DEST=scp.port)
            with running_server(folder, addin_classes=[VerificationAddIn, StorageAddIn, GatewayAddIn]) as server:
                scu = QueryRetrieveScu(f"{AE}@127.0.0.1:{server.port}")
                progress: list = []  # type: ignore[type-arg]
                scu.on("progress", progress.append)
                result = scu.move_sync({"StudyInstanceUID": study}, level="STUDY", destination="DEST")
        assert result.ok and (result.completed, result.failed) == (12, 0), (mode, result)
        pending = [p for p in progress if p.status == 0xFF00]
        assert pending, (mode, progress)
        for p in pending:
            assert p.remaining is not None and p.remaining + p.completed + p.failed + p.warning == 12, (mode, p)
        assert [p.completed for p in pending] == sorted(p.completed for p in pending)
        if mode == "fetch":
            assert pending[0].completed == 0 and pending[0].remaining == 12
            assert max(p.completed for p in pending) > 0  # the local send's own progress follows


def test_a_query_pacskit_refuses_itself_is_still_answered_by_the_remote(remote, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """IMAGE level without the Study and Series UIDs: pacskit's own (hierarchical) query refuses it with
    0xA900, Orthanc answers it: its answers and Success are relayed."""
    orth, files = remote
    folder = tmp_path / "pacs"
    _settings(folder)
    _register(folder, ORTHANC=orth.port)
    with running_server(folder, addin_classes=[VerificationAddIn, StorageAddIn, GatewayAddIn]) as server:
        answers, output = _findscu(server.port, ["QueryRetrieveLevel=IMAGE", "PatientID=GW2", "SOPInstanceUID"],
                                   tmp_path / "find")
    assert "Received Final Find Response (Success)" in output, output
    assert {str(a.SOPInstanceUID) for a in answers} == _file_uids(files["c"])


def test_a_c_cancel_of_a_direct_move_is_forwarded(tmp_path: Path) -> None:
    """move_mode direct: the remote (pynetdicom) announces 3 sub-operations, then waits for a C-CANCEL;
    the requestor's C-CANCEL to pacskit reaches it and the requestor gets Cancel (0xFE00)."""
    import threading

    from pynetdicom import AE as PyndAE, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove  # type: ignore[attr-defined]

    started, saw_cancel = threading.Event(), threading.Event()
    with storescp(tmp_path / "dest") as scp:
        def on_move(event):  # type: ignore[no-untyped-def]
            yield "127.0.0.1", scp.port
            yield 3
            started.set()
            deadline = time.monotonic() + 60
            cancelled = False
            while not cancelled and time.monotonic() < deadline:
                cancelled = event.is_cancelled  # true once: pynetdicom consumes the C-CANCEL
                time.sleep(0.01)  # pynetdicom offers no event to wait on; the deadline bounds it
            if cancelled:
                saw_cancel.set()
            yield 0xFE00, None

        remote = PyndAE(ae_title="SLOWQR")
        remote.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
        remote.add_requested_context("1.2.840.10008.5.1.4.1.1.2")  # CT Image Storage, for the sub-operations
        remote_scp = remote.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_MOVE, on_move)])
        try:
            folder = tmp_path / "pacs"
            _settings(folder, local="false", remotes='["SLOWQR"]', move_mode='"direct"')
            _register(folder, SLOWQR=remote_scp.server_address[1], DEST=scp.port)
            with running_server(folder, addin_classes=[VerificationAddIn, StorageAddIn, GatewayAddIn]) as server:
                statuses = asyncio.run(_move_then_cancel(server.port, started))
        finally:
            remote_scp.shutdown()
    assert statuses[-1] == 0xFE00, statuses
    assert saw_cancel.is_set()


async def _move_then_cancel(port: int, started) -> list[int]:  # type: ignore[no-untyped-def]
    move_class = "1.2.840.10008.5.1.4.1.2.2.2"
    assoc = await connect("127.0.0.1", port, called_ae=AE, calling_ae="CANCELER",
                          contexts=[RequestedContext(move_class)])
    statuses: list[int] = []
    async with assoc:
        ctx = assoc.find_context(move_class)
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = "1.2.3.4"

        async def cancel_once_started() -> None:
            await asyncio.to_thread(started.wait, 60)
            if not statuses:  # still waiting for the answer
                await assoc.cancel(assoc.last_message_id, ctx)

        canceller = asyncio.create_task(cancel_once_started())
        try:
            async for rsp, received in assoc.request(CommandField.C_MOVE_RQ, move_class, ds, context=ctx,
                                                     MoveDestination="DEST"):
                statuses.append(rsp.status)
                if received is not None:
                    received.discard()
        finally:
            started.set()  # releases the waiting thread whatever happened
            await canceller
    return statuses
