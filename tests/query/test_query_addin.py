"""The Query add-in in a running server: DCMTK findscu at every level and both models, the pacskit
client for statuses, extended negotiation (relational queries), C-CANCEL and the result cap.

The corpus is stored with DCMTK storescu (as a modality would); the large-result tests use a
bulk-loaded index (rows only, pacskit.testing.bulk).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from pacskit.net import RequestedContext, connect
from pacskit.net.dimse import CommandField
from pacskit.server.server import Server
from pacskit.config.settings import load_settings
from pacskit.store import DataStore, FilesystemBlobStore
from pacskit.store.query import STUDY_ROOT_FIND
from pacskit.testing.bulk import BulkShape, bulk_load
from pacskit.testing.peers import count_store_successes, have_dcmtk, run_storescu
from pacskit.testing.server import running_server

from ._corpus import Corpus, uid
from ._helpers import UNIQUE, identifier
from ._server import AE, findscu, write_settings

pytestmark = pytest.mark.dcmtk

A1 = uid("A1")


@pytest.fixture(scope="module")
def server(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")
    folder = write_settings(tmp_path_factory.mktemp("qr-server"), page_size=3)
    with running_server(folder) as srv:
        out = run_storescu("127.0.0.1", srv.port, corpus.files, called=AE, calling="MODALITY")
        assert count_store_successes(out) == len(corpus.files), out.stdout[-3000:]
        yield srv


def _names(corpus: Corpus, level: str, answers: list[Dataset]) -> set[str]:
    return {corpus.name(level, str(ds.get(UNIQUE[level]))) for ds in answers}


LEVEL_QUERIES = [
    ("-S", "STUDY", ["PatientName=doe*", "StudyInstanceUID", "NumberOfStudyRelatedInstances"], {"A1", "A2"}),
    # the time range within each day (combined date-time matching is not negotiated by findscu)
    ("-S", "STUDY", ["StudyDate=20240105-20240107", "StudyTime=0900-1100", "StudyInstanceUID"], {"A1", "B1"}),
    ("-S", "STUDY", ["AccessionNumber=ACC_*", "StudyInstanceUID"], {"A2"}),
    ("-S", "STUDY", ["ModalitiesInStudy=SR", "StudyInstanceUID"], {"A1"}),
    ("-P", "PATIENT", ["PatientID=P*", "PatientName", "NumberOfPatientRelatedStudies"], {"PA", "PB", "PC", "PE"}),
    ("-P", "STUDY", ["PatientID=PA", "StudyInstanceUID"], {"A1", "A2"}),
    ("-S", "SERIES", [f"StudyInstanceUID={A1}", "SeriesInstanceUID", "Modality"], {"A1.1", "A1.2"}),
    ("-P", "SERIES", ["PatientID=PA", f"StudyInstanceUID={A1}", "SeriesInstanceUID", "Modality=CT"], {"A1.1"}),
    ("-S", "IMAGE", [f"StudyInstanceUID={A1}", f"SeriesInstanceUID={uid('A1.1')}", "SOPInstanceUID"],
     {"A1.1.1", "A1.1.2"}),
    ("-P", "IMAGE", ["PatientID=PA", f"StudyInstanceUID={A1}", f"SeriesInstanceUID={uid('A1.1')}", "SOPInstanceUID",
                     "InstanceNumber=2"], {"A1.1.2"}),
]


@pytest.mark.parametrize(("model", "level", "keys", "expected"), LEVEL_QUERIES,
                         ids=[f"{m[1:]}-{lv}-{k[0].split('=')[0]}" for m, lv, k, _ in LEVEL_QUERIES])
def test_findscu_at_every_level(server: Server, corpus: Corpus, tmp_path: Path, model: str, level: str,
                                keys: list[str], expected: set[str]) -> None:
    answers, out = findscu(server.port, model, [f"QueryRetrieveLevel={level}", *keys], tmp_path)
    assert "Received Final Find Response (Success)" in out, out[-3000:]
    assert _names(corpus, level, answers) == expected, out[-3000:]
    for ds in answers:  # every requested key is in every answer
        assert ds.QueryRetrieveLevel == level
        for key in keys:
            assert key.split("=")[0] in ds


def test_findscu_counts_are_returned(server: Server, corpus: Corpus, tmp_path: Path) -> None:
    answers, out = findscu(server.port, "-S", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={A1}",
                                               "NumberOfStudyRelatedInstances", "NumberOfStudyRelatedSeries",
                                               "ModalitiesInStudy", "InstitutionName"], tmp_path)
    (ds,) = answers
    assert (ds.NumberOfStudyRelatedInstances, ds.NumberOfStudyRelatedSeries) == (3, 2)
    assert list(ds.ModalitiesInStudy) == ["CT", "SR"]
    assert ds.InstitutionName == "Synthetic Hospital"  # not indexed: from the stored header


@pytest.mark.parametrize(("charset", "name_key", "expected", "answer_charset"), [
    ("ISO_IR 192", "PatientName=山田^太郎".encode(), {"H31", "H32"}, "ISO_IR 192"),
    ("ISO_IR 100", "PatientName=äneas*".encode("latin-1"), {"GERM"}, "ISO_IR 100"),
    ("ISO_IR 144", "PatientName=Люкceмбypг".encode("iso8859_5"), {"RUSS"}, "ISO_IR 144"),
    ("ISO_IR 100", b"PatientName=*", None, None),
])
def test_findscu_non_ascii_names(server: Server, corpus: Corpus, tmp_path: Path, charset: str, name_key: bytes,
                                 expected: set[str] | None, answer_charset: str | None) -> None:
    answers, out = findscu(server.port, "-S", ["QueryRetrieveLevel=STUDY", f"SpecificCharacterSet={charset}",
                                               name_key, "StudyInstanceUID"], tmp_path)
    assert "Received Final Find Response (Success)" in out, out[-3000:]
    if expected is None:  # every name, each answer in a character set that can represent it
        assert len(answers) == len(corpus.names["STUDY"])
        wanted = {"Yamada^Tarou=山田^太郎=やまだ^たろう", "Διονυσιος", "Müller^Hans", "Wang^XiaoDong=王^小東"}
        assert wanted <= {str(ds.PatientName) for ds in answers}
        for ds in answers:
            if not str(ds.PatientName).isascii():
                assert ds.SpecificCharacterSet in ("ISO_IR 100", "ISO_IR 192")
        return
    assert _names(corpus, "STUDY", answers) == expected
    for ds in answers:
        assert ds.SpecificCharacterSet == answer_charset


def test_pacskit_serve_enables_the_query_addin_by_default(tmp_path: Path) -> None:
    folder = tmp_path / "srv"
    folder.mkdir()
    (folder / "server.toml").write_text('ae_title = "DEFAULTS"\nport = 0\ndata_dir = "data"\n')

    async def run() -> list[str]:
        async with Server(load_settings(folder)) as srv:
            return [a.name for a in srv.addins]

    assert "query" in asyncio.run(run())


# --- the pacskit client: statuses, comments, negotiation -------------------------------------------


async def _find(port: int, sop_class: str, ds: Dataset, *, negotiate: bytes | None = None
                ) -> tuple[list[tuple[int, Dataset | None]], Any, bytes | None]:
    """All responses (status, identifier), the final command set and the negotiated answer."""
    assoc = await connect("127.0.0.1", port, called_ae=AE, calling_ae="PYCLIENT",
                          contexts=[RequestedContext(sop_class)],
                          extended_negotiation={sop_class: negotiate} if negotiate is not None else None)
    async with assoc:
        responses = []
        final = None
        async for command, received in assoc.request(CommandField.C_FIND_RQ, sop_class, ds, Priority=0):
            responses.append((command.status, received.decode() if received is not None else None))
            final = command
        return responses, final, assoc.extended_negotiation_response.get(sop_class)


@pytest.mark.parametrize(("keys", "level", "status", "comment", "offending"), [
    ({"Modality": "CT"}, "SERIES", 0xA900, "StudyInstanceUID", 0x0020000D),
    ({"StudyDate": "2024"}, "STUDY", 0xC000, "StudyDate", 0x00080020),
    ({"StudyInstanceUID": "1.2.*"}, "STUDY", 0xC000, "wildcards", 0x0020000D),
    ({}, "PATIENT", 0xA900, "QueryRetrieveLevel", 0x00080052),  # no PATIENT level in Study Root
])
def test_invalid_identifiers_get_a_status_and_comment(server: Server, keys: dict[str, str], level: str, status: int,
                                                      comment: str, offending: int) -> None:
    async def run() -> tuple[Any, list[Any]]:
        responses, final, _ = await _find(server.port, STUDY_ROOT_FIND, identifier(level, keys))
        # the association and the server go on: a valid query afterwards works
        ok, _, _ = await _find(server.port, STUDY_ROOT_FIND, identifier("STUDY", {"StudyInstanceUID": A1}))
        return final, ok

    with pytest.warns(UserWarning) if any("*" in v or len(v) == 4 for v in keys.values()) else _nothing():
        final, ok = asyncio.run(run())
    assert final.status == status
    assert comment in str(final.get("ErrorComment"))
    assert list(final.get("OffendingElement")) == [offending]
    assert [s for s, _ in ok] == [0xFF00, 0x0000]


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_relational_queries_need_extended_negotiation(server: Server, corpus: Corpus) -> None:
    ds = identifier("SERIES", {"Modality": "CT"})

    async def run() -> tuple[Any, ...]:
        plain = await _find(server.port, STUDY_ROOT_FIND, ds)
        relational = await _find(server.port, STUDY_ROOT_FIND, ds, negotiate=b"\x01\x01")
        return plain, relational

    (plain, plain_final, plain_answer), (rel, rel_final, rel_answer) = asyncio.run(run())
    assert plain_answer is None and plain_final.status == 0xA900
    assert rel_answer == b"\x01\x01"
    assert rel_final.status == 0x0000
    assert _names(corpus, "SERIES", [d for s, d in rel if s == 0xFF00 and d is not None]) == {"A1.1", "C1.1"}


def test_pending_status_and_answered_keys(server: Server) -> None:
    ds = identifier("STUDY", {"StudyInstanceUID": A1, "RetrieveAETitle": "", "InstanceAvailability": ""})
    ds.add_new(0x00110010, "LO", "")  # a private key: not supported -> Pending 0xFF01

    async def run() -> Any:
        plain = await _find(server.port, STUDY_ROOT_FIND, identifier("STUDY", {"StudyInstanceUID": A1,
                                                                                "RetrieveAETitle": ""}))
        with_private = await _find(server.port, STUDY_ROOT_FIND, ds)
        return plain, with_private

    (plain, _, _), (priv, _, _) = asyncio.run(run())
    assert [s for s, _ in plain] == [0xFF00, 0x0000]
    assert [s for s, _ in priv] == [0xFF01, 0x0000]
    answer = priv[0][1]
    assert answer is not None
    assert answer.RetrieveAETitle == AE and answer.InstanceAvailability == "ONLINE"


# --- many matches: the cap and C-CANCEL --------------------------------------------------------------

BULK = BulkShape(patients=3000, studies_per_patient=1, series_per_study=1, instances_per_series=1)
CAP = 2500


@pytest.fixture(scope="module")
def bulk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")
    folder = write_settings(tmp_path_factory.mktemp("qr-bulk"), max_results=CAP, page_size=50)
    settings = load_settings(folder)
    store = DataStore.open(settings.database_url, blobs=FilesystemBlobStore(settings.storage_path))
    try:
        bulk_load(store, BULK)
    finally:
        store.close()
    with running_server(folder) as srv:
        yield srv


def test_result_cap_refuses_with_out_of_resources(bulk_server: Server, tmp_path: Path) -> None:
    answers, out = findscu(bulk_server.port, "-S", ["QueryRetrieveLevel=STUDY", "StudyInstanceUID"], tmp_path)
    assert answers == []
    assert "Out of Resources" in out or "OutOfResources" in out, out[-2000:]

    async def run() -> Any:
        return await _find(bulk_server.port, STUDY_ROOT_FIND, identifier("STUDY", {}))

    responses, final, _ = asyncio.run(run())
    assert [s for s, _ in responses] == [0xA700]
    assert f"more than {CAP} matches" in str(final.get("ErrorComment"))


def test_findscu_cancel_stops_the_answers(bulk_server: Server, tmp_path: Path) -> None:
    # BP0001* matches patients 1000-1999: 1,000 studies, under the cap
    keys = ["QueryRetrieveLevel=STUDY", "PatientID=BP0001*", "StudyInstanceUID"]
    answers, out = findscu(bulk_server.port, "-S", keys, tmp_path / "all")
    assert len(answers) == 1000, out[-2000:]
    # findscu sends its C-CANCEL once the first answer is in; when it arrives is up to the machine. Most
    # of the time answers remain and the final status is Cancel (0xFE00); on a loaded machine the server
    # may have sent all 1,000 before the cancel is read, and then Success is the right final status
    # (PS3.7 C.4.1.2.3: a cancel after the last answer changes nothing). The deterministic case, a
    # C-CANCEL right behind its C-FIND, is tests/query/test_date_time_and_cancel.py.
    answers, out = findscu(bulk_server.port, "-S", keys, tmp_path / "cancel", "--cancel", "1")
    final = out.splitlines()[-2]
    if "Cancel" in final or "Matching terminated due to Cancel" in out:
        assert 1 <= len(answers) < 1000, len(answers)
    else:
        assert "Final Find Response (Success)" in final and len(answers) == 1000, out[-2000:]
    assert "Releasing Association" in out  # an orderly end either way
    answers, out = findscu(bulk_server.port, "-S", keys, tmp_path / "again")
    assert len(answers) == 1000, out[-2000:]  # and the server goes on answering


# --- Orthanc as the query client (REST /modalities/{id}/query) --------------------------------------


@pytest.fixture(scope="module")
def orthanc_client(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from pacskit.testing.peers import have_orthanc, orthanc

    if not have_orthanc():
        pytest.skip("Orthanc is not installed")
    with orthanc(tmp_path_factory.mktemp("orthanc-scu"), modalities={"pacs": [AE, "127.0.0.1", server.port]},
                 startup_timeout=60) as peer:
        yield peer


@pytest.mark.parametrize(("level", "query", "key", "expected"), [
    ("Patient", {"PatientID": "P*"}, "PatientID", {"PA", "PB", "PC", "PE"}),
    ("Study", {"PatientName": "doe*"}, "StudyInstanceUID", {A1, uid("A2")}),
    ("Study", {"StudyDate": "20240105-20240106", "AccessionNumber": ""}, "StudyInstanceUID", {A1, uid("A2"), uid("E1")}),
    ("Study", {"PatientName": "Müller*"}, "StudyInstanceUID", {uid("C1")}),
    ("Series", {"StudyInstanceUID": A1, "Modality": ""}, "SeriesInstanceUID", {uid("A1.1"), uid("A1.2")}),
    ("Instance", {"StudyInstanceUID": A1, "SeriesInstanceUID": uid("A1.1")}, "SOPInstanceUID",
     {uid("A1.1.1"), uid("A1.1.2")}),
])
def test_orthanc_queries_pacskit(orthanc_client: Any, level: str, query: dict[str, str], key: str,
                                 expected: set[str]) -> None:
    created = orthanc_client.post("/modalities/pacs/query", {"Level": level, "Query": query})
    answers = orthanc_client.get(f"{created['Path']}/answers?expand&simplify")
    assert {a.get(key) for a in answers} == expected, answers


def test_relational_off_is_answered_zero_and_refused(tmp_path: Path) -> None:
    folder = write_settings(tmp_path / "srv", relational=False)

    async def run() -> Any:
        async with Server(load_settings(folder)) as srv:
            return await _find(srv.port, STUDY_ROOT_FIND, identifier("SERIES", {"Modality": "CT"}), negotiate=b"\x01")

    _, final, answer = asyncio.run(run())
    assert answer == b"\x00"
    assert final.status == 0xA900


def test_pynetdicom_relational_query(server: Server, corpus: Corpus) -> None:
    """A third-party SCU (pynetdicom) negotiating relational queries gets relational answers."""
    from pynetdicom import AE as PyAE
    from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation

    ae = PyAE(ae_title="PYNETDICOM")
    ae.add_requested_context(STUDY_ROOT_FIND)
    ext = SOPClassExtendedNegotiation()
    ext.sop_class_uid = STUDY_ROOT_FIND
    ext.service_class_application_information = b"\x01"
    assoc = ae.associate("127.0.0.1", server.port, ae_title=AE, ext_neg=[ext])
    assert assoc.is_established
    try:
        answers = [ds for status, ds in assoc.send_c_find(identifier("IMAGE", {"InstanceNumber": "2"}), STUDY_ROOT_FIND)
                   if status is not None and status.Status in (0xFF00, 0xFF01)]
        final = [status.Status for status, _ in assoc.send_c_find(identifier("IMAGE", {"InstanceNumber": "2"}),
                                                                  STUDY_ROOT_FIND)][-1]
    finally:
        assoc.release()
    assert _names(corpus, "IMAGE", answers) == {"A1.1.2"}
    assert final == 0x0000


def test_read_headers_off_returns_non_indexed_keys_empty(tmp_path: Path, corpus: Corpus) -> None:
    folder = write_settings(tmp_path / "srv", read_headers=False)
    settings = load_settings(folder)
    store = DataStore.open(settings.database_url, blobs=FilesystemBlobStore(settings.storage_path))
    try:
        corpus.load(store)
    finally:
        store.close()

    async def run() -> Any:
        async with Server(settings) as srv:
            return await _find(srv.port, STUDY_ROOT_FIND,
                               identifier("STUDY", {"StudyInstanceUID": A1, "InstitutionName": "", "PatientID": ""}))

    responses, final, _ = asyncio.run(run())
    assert final.status == 0x0000
    (answer,) = [ds for status, ds in responses if status == 0xFF01]  # a requested key not supported
    assert answer.PatientID == "PA" and answer.InstitutionName in (None, "")


def test_findscu_implicit_vr_little_endian(server: Server, corpus: Corpus, tmp_path: Path) -> None:
    """Identifier and answers in Implicit VR Little Endian (VRs from the dictionary)."""
    answers, out = findscu(server.port, "-S", ["QueryRetrieveLevel=STUDY", "SpecificCharacterSet=ISO_IR 192",
                                               "PatientName=MÜLL*".encode(), "ModalitiesInStudy=C*",
                                               "StudyInstanceUID", "NumberOfStudyRelatedInstances"],
                           tmp_path, "--propose-implicit", "-d")
    assert 'DcmDataset::read() TransferSyntax="Little Endian Implicit"' in out, out[-3000:]
    assert "DIMSE Status                  : 0x0000: Success" in out, out[-2000:]
    assert _names(corpus, "STUDY", answers) == {"C1"}
    assert answers[0].NumberOfStudyRelatedInstances == 1 and str(answers[0].PatientName) == "Müller^Hans"
