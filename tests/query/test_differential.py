"""Differential test: the same corpus stored (with DCMTK storescu) into pacskit, into DCMTK's
``dcmqrscp`` and into Orthanc; the same DCMTK ``findscu`` queries at every level must give the same
answers as sets (Orthanc's two bugs excepted, see :func:`test_same_answers_as_orthanc`).

Compared: the set of (unique key, a few returned keys) tuples of the answers. Intentional differences
are tested too, with the answer each side gives (see docs/addins/query.md):

* PN matching: pacskit is case-insensitive, dcmqrscp literal (``doe*``);
* keys of higher levels that are not unique keys: dcmqrscp ignores them (returns every series of the
  study), pacskit matches them.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from pacskit.server.server import Server
from pacskit.testing.peers import (
    count_store_successes,
    dcmtk_env,
    dcmtk_tool,
    free_port,
    have_dcmtk,
    run_storescu,
    wait_for_port,
)
from pacskit.testing.server import running_server

from ._corpus import Corpus, uid
from ._server import AE, findscu, write_settings

pytestmark = pytest.mark.dcmtk

A1 = uid("A1")
QRSCP = "QRSCP"


@contextlib.contextmanager
def dcmqrscp(folder: Path) -> Iterator[int]:
    """DCMTK dcmqrscp with one read-write storage area (any peer may store and query)."""
    db = folder / "db"
    db.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = folder / "dcmqrscp.cfg"
    config.write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
        "HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n"
        f"AETable BEGIN\n{QRSCP} {db} RW (200, 1024mb) ANY\nAETable END\n"
    )
    # (not --single-process: DCMTK 3.6.7 exits after the first association in that mode)
    argv = [dcmtk_tool("dcmqrscp"), "-c", str(config), "--disable-host-lookup", str(port)]
    with open(folder / "dcmqrscp.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=dcmtk_env())
    try:
        wait_for_port("127.0.0.1", port, 20, proc=proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def both(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, int]]:
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")
    folder = tmp_path_factory.mktemp("differential")
    with running_server(write_settings(folder / "pacskit")) as server, dcmqrscp(folder / "dcmqrscp") as qr:
        for port, called in ((server.port, AE), (qr, QRSCP)):
            out = run_storescu("127.0.0.1", port, corpus.files, called=called, calling="MODALITY")
            assert count_store_successes(out) == len(corpus.files), out.stdout[-3000:]
        yield server, qr


def _findscu(port: int, called: str, model: str, keys: list[str], out: Path) -> tuple[set[tuple[str, ...]], str]:
    answers, output = _run(port, called, model, keys, out)
    returned = [k.split("=")[0] for k in keys if k.split("=")[0] != "QueryRetrieveLevel"]
    return {tuple(_text(ds, k) for k in returned) for ds in answers}, output


def _run(port: int, called: str, model: str, keys: list[str], out: Path) -> tuple[list[Dataset], str]:
    return findscu(port, model, keys, out, called=called)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


SAME = [
    ("-S", ["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientID", "StudyDate", "AccessionNumber"]),
    ("-S", ["QueryRetrieveLevel=STUDY", "PatientID=PA", "StudyInstanceUID", "StudyTime"]),
    ("-S", ["QueryRetrieveLevel=STUDY", "PatientName=Doe*", "StudyInstanceUID"]),
    ("-S", ["QueryRetrieveLevel=STUDY", "PatientName=*^J*", "StudyInstanceUID"]),
    ("-S", ["QueryRetrieveLevel=STUDY", "StudyDate=20240105-20240106", "StudyInstanceUID", "StudyDate"]),
    ("-S", ["QueryRetrieveLevel=STUDY", "StudyDate=-20231231", "StudyInstanceUID"]),
    ("-S", ["QueryRetrieveLevel=STUDY", "StudyDate=20240107-", "StudyInstanceUID"]),
    ("-S", ["QueryRetrieveLevel=STUDY", "StudyTime=1000-1200", "StudyInstanceUID", "StudyTime"]),
    ("-S", ["QueryRetrieveLevel=STUDY", "AccessionNumber=ACC?1", "StudyInstanceUID"]),
    ("-S", ["QueryRetrieveLevel=STUDY", "AccessionNumber=ACC_*", "StudyInstanceUID"]),
    ("-S", ["QueryRetrieveLevel=STUDY", "StudyDescription=*100%", "StudyInstanceUID"]),
    ("-S", ["QueryRetrieveLevel=STUDY", "ReferringPhysicianName=Ref^One", "StudyInstanceUID"]),
    ("-S", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={A1}\\{uid('B1')}", "PatientID"]),
    ("-S", ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={A1}", "SeriesInstanceUID", "Modality", "SeriesNumber"]),
    ("-S", ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={A1}", "Modality=CT", "SeriesInstanceUID"]),
    ("-S", ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={A1}", f"SeriesInstanceUID={uid('A1.1')}", "SOPInstanceUID",
            "InstanceNumber"]),
    ("-P", ["QueryRetrieveLevel=PATIENT", "PatientID", "PatientName", "PatientBirthDate", "PatientSex"]),
    ("-P", ["QueryRetrieveLevel=PATIENT", "PatientID=P*", "PatientSex"]),
    ("-P", ["QueryRetrieveLevel=STUDY", "PatientID=PA", "StudyInstanceUID", "StudyDescription"]),
    ("-P", ["QueryRetrieveLevel=SERIES", "PatientID=PA", f"StudyInstanceUID={A1}", "SeriesInstanceUID"]),
    ("-P", ["QueryRetrieveLevel=IMAGE", "PatientID=PA", f"StudyInstanceUID={A1}", f"SeriesInstanceUID={uid('A1.2')}",
            "SOPInstanceUID"]),
]


@pytest.mark.parametrize(("model", "keys"), SAME, ids=[f"{m[1:]}-{'-'.join(k[:2])}" for m, k in SAME])
def test_same_answers_as_dcmqrscp(both: tuple[Server, int], tmp_path: Path, model: str, keys: list[str]) -> None:
    server, qr = both
    ours, out_ours = _findscu(server.port, AE, model, keys, tmp_path / "pacskit")
    theirs, out_theirs = _findscu(qr, QRSCP, model, keys, tmp_path / "dcmqrscp")
    assert "Received Final Find Response (Success)" in out_theirs, out_theirs[-2000:]
    assert ours, out_ours[-2000:]  # every query here has matches
    assert ours == theirs


def _unique(port: int, called: str, keys: list[str], key: str, out: Path) -> tuple[set[str], str]:
    answers, output = _run(port, called, "-S", keys, out)
    return {_text(ds, key) for ds in answers}, output


def test_difference_pn_case(both: tuple[Server, int], tmp_path: Path) -> None:
    server, qr = both
    keys = ["QueryRetrieveLevel=STUDY", "PatientName=doe*", "StudyInstanceUID"]
    ours, _ = _unique(server.port, AE, keys, "StudyInstanceUID", tmp_path / "pacskit")
    theirs, _ = _unique(qr, QRSCP, keys, "StudyInstanceUID", tmp_path / "dcmqrscp")
    assert ours == {A1, uid("A2")} and theirs == set()


def test_date_and_time_each_day_without_negotiation(both: tuple[Server, int], tmp_path: Path) -> None:
    """No combined date-time matching negotiated (findscu never asks): the time range within each day,
    as dcmqrscp (tests/query/test_date_time_and_cancel.py has the negotiated case)."""
    server, qr = both
    keys = ["QueryRetrieveLevel=STUDY", "StudyDate=20240105-20240107", "StudyTime=1000-0930", "StudyInstanceUID"]
    ours, out = _unique(server.port, AE, keys, "StudyInstanceUID", tmp_path / "pacskit")
    theirs, _ = _unique(qr, QRSCP, keys, "StudyInstanceUID", tmp_path / "dcmqrscp")
    assert theirs == set()  # 10:00-09:30 on each day matches nothing
    assert ours == theirs and "Received Final Find Response (Success)" in out


def test_difference_higher_level_keys(both: tuple[Server, int], tmp_path: Path) -> None:
    server, qr = both
    keys = ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={A1}", "StudyDate=20240106", "SeriesInstanceUID"]
    ours, out_ours = _unique(server.port, AE, keys, "SeriesInstanceUID", tmp_path / "pacskit")
    theirs, out_theirs = _unique(qr, QRSCP, keys, "SeriesInstanceUID", tmp_path / "dcmqrscp")
    assert ours == set() and "Received Final Find Response (Success)" in out_ours  # A1 is not from that day
    assert theirs == {uid("A1.1"), uid("A1.2")}, out_theirs[-1500:]  # dcmqrscp ignores the key


# --- Orthanc loaded with the same corpus --------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc_port(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    from pacskit.testing.peers import have_orthanc, orthanc

    if not have_orthanc():
        pytest.skip("Orthanc is not installed")
    # answers in UTF-8 (Orthanc's default, Latin1, cannot carry most of the corpus' names)
    with orthanc(tmp_path_factory.mktemp("orthanc-differential"), startup_timeout=60,
                 extra_config={"DefaultEncoding": "Utf8"}) as peer:
        out = run_storescu("127.0.0.1", peer.dicom_port, corpus.files, called=peer.ae_title, calling="MODALITY")
        assert count_store_successes(out) == len(corpus.files), out.stdout[-3000:]
        yield peer.dicom_port, peer.ae_title


@pytest.mark.parametrize(("model", "keys"), SAME, ids=[f"{m[1:]}-{'-'.join(k[:2])}" for m, k in SAME])
def test_same_answers_as_orthanc(both: tuple[Server, int], orthanc_port: tuple[int, str], tmp_path: Path,
                                 model: str, keys: list[str]) -> None:
    """Orthanc 1.10 gives the same answers, except where it is wrong, each checked precisely:

    * an open date range (``-20231231``) also matches studies *without* a StudyDate in Orthanc;
    * Orthanc mis-decodes ISO 2022 IR 13 + IR 87 names (chrH32.dcm: ``山田`` comes back as ``;3ED``).
    """
    server, _ = both
    port, ae = orthanc_port
    ours, _ = _findscu(server.port, AE, model, keys, tmp_path / "pacskit")
    theirs, out_theirs = _findscu(port, ae, model, keys, tmp_path / "orthanc")
    assert "Received Final Find Response (Success)" in out_theirs, out_theirs[-2000:]
    if "StudyDate=-20231231" in keys:
        assert ours < theirs and all(row[0] == "" for row in theirs - ours)  # empty StudyDate matched
        return
    if keys[:2] == ["QueryRetrieveLevel=PATIENT", "PatientID"]:  # every patient, with their names
        assert {row[0] for row in ours ^ theirs} == {"H32EXAMPLE"}
        assert ("H32EXAMPLE", "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう", "", "") in ours
        return
    assert ours == theirs
