"""The worklist add-in in a running server: pacskit's own worklist SCU (QueryRetrieveScu), failure
statuses with their error comments, C-CANCEL, the Specific Character Set of answers, and the management
endpoints (admin_router, mounted in a FastAPI app of the test's own) and CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom import dcmread
from typer.testing import CliRunner

from pacskit.cli import app as cli
from pacskit.client import QueryRetrieveScu
from pacskit.server.server import Server

from ._util import AE, write_settings

SPS = "ScheduledProcedureStepSequence"
runner = CliRunner()


def steps(n: int) -> list[dict[str, Any]]:
    return [{"PatientName": f"Patient^{i:03d}", "PatientID": f"P{i:03d}", "AccessionNumber": f"A{i:03d}",
             SPS: [{"Modality": "CT" if i % 2 else "MR", "ScheduledStationAETitle": "CT1",
                    "ScheduledProcedureStepID": f"S{i:03d}", "ScheduledProcedureStepStartDate": "20261201"}]}
            for i in range(n)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    from pacskit.testing.server import running_server

    folder = write_settings(tmp_path_factory.mktemp("wl-addin") / "pacs", worklist={"max_results": 500})
    source = folder / "entries.json"
    source.write_text(json.dumps(steps(40) + [{"PatientName": "Müller^Jürgen", "PatientID": "PM",
                                                SPS: [{"Modality": "US", "ScheduledProcedureStepID": "SM"}]}]))
    result = runner.invoke(cli, ["worklist", "import", str(source), "--data-dir", str(folder)])
    assert result.exit_code == 0 and "41 scheduled steps" in result.output, result.output
    with running_server(folder) as srv:
        yield srv, folder


def scu(server: Server, **kwargs: Any) -> QueryRetrieveScu:
    return QueryRetrieveScu(f"{AE}@127.0.0.1:{server.port}", model="worklist", **kwargs)


def test_client_worklist_queries(server: tuple[Server, Path]) -> None:
    srv, _ = server
    result = scu(srv).find_sync({f"{SPS}[0].Modality": "CT"})
    assert result.status == 0x0000 and len(result.records) == 20
    record = min(result.records, key=lambda r: r.step_id)
    assert (record.patient_id, record.modality, record.station_ae_title, record.step_id) == ("P001", "CT", "CT1", "S001")
    one = scu(srv).find_sync({"PatientID": "P007"})
    assert [r.accession_number for r in one.records] == ["A007"]


def test_cancel_stops_the_stream(tmp_path: Path) -> None:
    """C-CANCEL after 3 matches of 2,000: the server stops and answers Cancel. (With a few dozen
    matches the server may have sent its final Success before the C-CANCEL arrives, which PS3.4
    allows: 2,000 take it longer to stream than the C-CANCEL takes to arrive.)"""
    from pacskit.testing.server import running_server

    folder = write_settings(tmp_path / "pacs", worklist={"max_results": 5000})
    source = folder / "entries.json"
    source.write_text(json.dumps(steps(2000)))
    assert runner.invoke(cli, ["worklist", "import", str(source), "--data-dir", str(folder)]).exit_code == 0
    with running_server(folder) as srv:
        result = scu(srv).find_sync({}, limit=3)
        assert len(result.records) == 3 and result.cancelled and result.status == 0xFE00
        assert len(scu(srv).find_sync({}).records) == 2000  # the server goes on


def test_too_many_matches(tmp_path: Path) -> None:
    from pacskit.testing.server import running_server

    folder = write_settings(tmp_path / "pacs", worklist={"max_results": 5})
    source = tmp_path / "e.json"
    source.write_text(json.dumps(steps(6)))
    assert runner.invoke(cli, ["worklist", "import", str(source), "--data-dir", str(folder)]).exit_code == 0
    with running_server(folder) as srv:
        result = scu(srv).find_sync({})
    assert result.status == 0xA700 and not result.records and "narrow" in result.error_comment


@pytest.mark.parametrize(("keys", "status", "comment"), [
    ({f"{SPS}[0].ScheduledProcedureStepStartDate": "20261301"}, 0xC000, "ScheduledProcedureStepStartDate"),
    ({"StudyInstanceUID": "1.2.*"}, 0xC000, "wildcards"),
    ({f"{SPS}[1].Modality": "CT"}, 0xA900, "one item"),
])
def test_invalid_identifiers_are_answered(server: tuple[Server, Path], keys: dict[str, str], status: int,
                                          comment: str) -> None:
    srv, _ = server
    result = scu(srv).find_sync(keys)
    assert result.status == status and comment in result.error_comment and not result.records
    assert scu(srv).find_sync({"PatientID": "P001"}).records  # and the server goes on


def test_answer_character_set(server: tuple[Server, Path], tmp_path: Path) -> None:
    from ._util import findscu_worklist

    srv, _ = server
    answers, out, _ = findscu_worklist(srv.port, AE, None, tmp_path / "a", ("PatientID=PM", "PatientName"))
    assert len(answers) == 1, out
    assert answers[0].SpecificCharacterSet == "ISO_IR 192" and answers[0].PatientName == "Müller^Jürgen"
    answers, out, _ = findscu_worklist(srv.port, AE, None, tmp_path / "b",
                                       ("SpecificCharacterSet=ISO_IR 100", "PatientID=PM", "PatientName"))
    assert answers[0].SpecificCharacterSet == "ISO_IR 100" and answers[0].PatientName == "Müller^Jürgen"


def test_admin_router(server: tuple[Server, Path], worklist_examples: Path) -> None:
    srv, _ = server
    addin = next(a for a in srv.addins if a.name == "worklist")
    api = FastAPI()
    api.include_router(addin.admin_router(), prefix="/addins/worklist")
    http = TestClient(api)
    listed = http.get("/addins/worklist/entries", params={"limit": 5}).json()
    assert [e["step_id"] for e in listed] == ["S000", "S001", "S002", "S003", "S004"]
    new = http.post("/addins/worklist/entries", json={"PatientID": "R1", "PatientName": "Rest^Api",
                                                      SPS: [{"Modality": "DX", "ScheduledStationAETitle": "DX1",
                                                             "ScheduledProcedureStepID": "R1S"}]})
    assert new.status_code == 201
    (entry_id,) = new.json()["ids"]
    got = http.get(f"/addins/worklist/entries/{entry_id}").json()
    assert got["modality"] == "DX" and got["dataset"]["00100010"]["Value"][0]["Alphabetic"] == "Rest^Api"
    assert [r.patient_id for r in scu(srv).find_sync({f"{SPS}[0].ScheduledStationAETitle": "DX1"}).records] == ["R1"]
    patched = http.patch(f"/addins/worklist/entries/{entry_id}", json={SPS: [{"ScheduledStationAETitle": "DX2"}]})
    assert patched.status_code == 200 and patched.json()["station_ae_title"] == "DX2"
    assert patched.json()["modality"] == "DX"
    assert not scu(srv).find_sync({f"{SPS}[0].ScheduledStationAETitle": "DX1"}).records
    # DICOM JSON, and bad input
    dicom_json = {"00100020": {"vr": "LO", "Value": ["R2"]},
                  "00400100": {"vr": "SQ", "Value": [{"00400009": {"vr": "SH", "Value": ["R2S"]}}]}}
    assert http.post("/addins/worklist/entries", json=dicom_json).status_code == 201
    assert http.post("/addins/worklist/entries", json={"NoSuchKeyword": "x"}).status_code == 422
    assert http.get("/addins/worklist/entries/999999").status_code == 404
    assert http.patch("/addins/worklist/entries/999999", json={"PatientID": "X"}).status_code == 404
    # import: a DICOM worklist file, then a JSON list
    wl = sorted((worklist_examples / "WLM").glob("*.wl"))[0]
    imported = http.post("/addins/worklist/import", content=wl.read_bytes(),
                         headers={"content-type": "application/dicom"})
    assert imported.status_code == 201 and len(imported.json()["ids"]) == 1
    again = http.post("/addins/worklist/import", content=wl.read_bytes(), headers={"content-type": "application/dicom"})
    assert again.json()["ids"] == imported.json()["ids"]  # same step: replaced, not duplicated
    assert str(dcmread(wl).PatientID) in {e["patient_id"] for e in http.get("/addins/worklist/entries",
                                                                             params={"limit": 1000}).json()}
    assert http.post("/addins/worklist/import", content=b"not json",
                     headers={"content-type": "application/json"}).status_code == 422
    assert http.post("/addins/worklist/import", content=b"\x00" * 10,
                     headers={"content-type": "application/dicom"}).status_code == 422
    assert http.delete(f"/addins/worklist/entries/{entry_id}").status_code == 204
    assert http.delete(f"/addins/worklist/entries/{entry_id}").status_code == 404


def test_cli(tmp_path: Path, worklist_examples: Path) -> None:
    data = ["--data-dir", str(tmp_path / "pacs")]
    added = runner.invoke(cli, ["worklist", "add", "-k", "PatientID=C1", "-k", "PatientName=Cli^Test",
                                "-k", f"{SPS}[0].Modality=CT", "-k", f"{SPS}[0].ScheduledProcedureStepID=C1S", *data])
    assert added.exit_code == 0 and added.output.strip() == "added 1"
    entry = tmp_path / "e.json"
    entry.write_text(json.dumps({"PatientID": "C2", SPS: [{"Modality": "MR"}]}))
    assert runner.invoke(cli, ["worklist", "add", "--json", str(entry), *data]).output.strip() == "added 2"
    assert runner.invoke(cli, ["worklist", "update", "1", "-k", f"{SPS}[0].ScheduledStationAETitle=CT9", *data]).exit_code == 0
    result = runner.invoke(cli, ["worklist", "list", "--json", *data])
    assert result.exit_code == 0, (result.output, result.exception)
    listed = json.loads(result.stdout)
    assert [(e["patient_id"], e["station_ae_title"], e["modality"]) for e in listed] == [("C1", "CT9", "CT"), ("C2", "", "MR")]
    table = runner.invoke(cli, ["worklist", "list", *data], env={"COLUMNS": "300"})
    assert "Cli^Test" in table.output and "C1S" in table.output
    imported = runner.invoke(cli, ["worklist", "import", str(worklist_examples / "WLM"), *data])
    assert imported.exit_code == 0 and "10 entries" in imported.output
    assert runner.invoke(cli, ["worklist", "remove", "2", *data]).exit_code == 0
    missing = runner.invoke(cli, ["worklist", "remove", "2", *data])
    assert missing.exit_code == 1 and "no worklist entry 2" in missing.output
    assert runner.invoke(cli, ["worklist", "update", "99", "-k", "PatientID=X", *data]).exit_code == 1
    assert runner.invoke(cli, ["worklist", "add", *data]).exit_code == 2
    assert runner.invoke(cli, ["worklist", "add", "-k", "Nope=1", *data]).exit_code == 2
    bad = tmp_path / "bad.wl"
    bad.write_bytes(b"garbage")
    result = runner.invoke(cli, ["worklist", "import", str(bad), *data])
    assert result.exit_code == 2, result.output
    assert len(json.loads(runner.invoke(cli, ["worklist", "list", "--json", *data]).stdout)) == 11
