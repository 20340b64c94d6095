"""``pacskit dump | ls | stats`` (issue 15, item 17): dump agrees with DCMTK's dcmdump; ls lists the same
from the data folder and from the server by C-FIND; stats counts what was stored."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
import pytest
from typer.testing import CliRunner

from pacskit.cli import app
from pacskit.testing import make_series
from pacskit.testing.peers import dcmtk_env, dcmtk_tool, have_dcmtk

from .test_first_run import Serving, in_tmp  # noqa: F401  (fixture)

runner = CliRunner()
# (gggg,eeee) VR ... # length, VM Keyword: what both dumps must agree on for every element
_LINE = re.compile(r"^(\s*)\(([0-9a-f]{4},[0-9a-f]{4})\) (\w\w) .*# *(\S+), *(\d+) (.+)$")


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "80"})


def _elements(text: str) -> list[tuple[str, ...]]:
    """(indent, tag, VR, length, VM, keyword) per line; the keyword without RETIRED_ and not for private
    tags: which are retired and which private names are known depends on the dictionary's edition."""
    out = []
    for m in map(_LINE.match, text.splitlines()):
        if m:
            indent, tag, vr, length, vm, keyword = m.groups()
            private = int(tag[:4], 16) % 2 == 1
            out.append((indent, tag, vr, length, vm, "" if private else keyword.removeprefix("RETIRED_")))
    return out


@pytest.fixture
def stored(in_tmp):  # noqa: F811
    """A running default server holding two patients: 3 CT instances and 2 MR instances."""
    server = Serving(in_tmp, "--port", "0")
    port = int(re.search(r":(\d+)", server.first_line.split(" listening on ")[1]).group(1))
    ct = make_series(in_tmp / "ct", 3, rows=8, cols=8, patient_id="P1", patient_name="DOE^JANE")
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    mr = make_series(in_tmp / "mr", 2, rows=8, cols=8, modality="MR", patient_id="P2", patient_name="ROE^RICH",
                     attrs={"ReferencedPerformedProcedureStepSequence": [item]})  # a sequence in the dump
    address = f"PACSKIT@127.0.0.1:{port}"
    try:
        assert invoke("store", "-q", address, in_tmp / "ct", in_tmp / "mr").exit_code == 0
        yield address, ct, mr
    finally:
        server.stop()


@pytest.mark.skipif(not have_dcmtk(), reason="DCMTK's dcmdump is the reference")
def test_dump_a_file_lists_what_dcmdump_lists(stored):
    _, ct, mr = stored
    for path in (ct[0], mr[0]):
        ours = invoke("dump", path)
        assert ours.exit_code == 0, ours.output
        theirs = subprocess.run([dcmtk_tool("dcmdump"), str(path)], capture_output=True, text=True, check=True,
                                env=dcmtk_env())
        assert _elements(ours.output) == _elements(theirs.stdout)
        assert len(_elements(ours.output)) > 40


@pytest.mark.skipif(not have_dcmtk(), reason="DCMTK's dcmdump is the reference")
@pytest.mark.parametrize("name", ["rtplan.dcm", "rtstruct.dcm", "SC_rgb_rle.dcm", "JPEG2000.dcm", "MR_small.dcm",
                                  "waveform_ecg.dcm"])
def test_dump_agrees_with_dcmdump_on_pydicoms_corpus(name):
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)  # bundled with pydicom: nested sequences, encapsulated pixel data, privates
    ours = invoke("dump", path)
    assert ours.exit_code == 0, ours.output
    theirs = subprocess.run([dcmtk_tool("dcmdump"), str(path)], capture_output=True, text=True, check=True,
                            env=dcmtk_env())
    assert _elements(ours.output) == _elements(theirs.stdout)


def test_dump_a_uid_finds_the_stored_instance(stored):
    _, ct, _ = stored
    uid = pydicom.dcmread(ct[1]).SOPInstanceUID
    result = invoke("dump", uid)
    assert result.exit_code == 0, result.output
    assert f"[{uid}]" in result.output and "pacs-data/files/" in result.output.splitlines()[0]
    study = pydicom.dcmread(ct[1]).StudyInstanceUID
    missing = invoke("dump", study)
    assert missing.exit_code == 1 and "is a study" in missing.output
    assert invoke("dump", "no/such/file.dcm").exit_code == 2


def test_ls_lists_the_same_from_the_folder_and_from_the_server(stored):
    address, ct, _ = stored
    local = json.loads(invoke("ls", "--json").output)
    assert [(p["patient_id"], p["patient_name"], p["studies"]) for p in local] == [("P1", "DOE^JANE", 1), ("P2", "ROE^RICH", 1)]
    remote = json.loads(invoke("ls", "--peer", address, "--json").output)
    assert sorted(remote, key=lambda p: p["patient_id"]) == local
    studies = json.loads(invoke("ls", "studies", "--json").output)
    assert [(s["patient_id"], s["modalities"], s["series"], s["instances"]) for s in studies] == [
        ("P1", "CT", 1, 3), ("P2", "MR", 1, 2)]
    peer_studies = json.loads(invoke("ls", "studies", "--peer", address, "--json").output)
    assert sorted(peer_studies, key=lambda s: s["patient_id"]) == studies
    study = pydicom.dcmread(ct[0]).StudyInstanceUID
    series = json.loads(invoke("ls", "series", "--study", study, "--json").output)
    assert [(s["study_instance_uid"], s["modality"], s["instances"]) for s in series] == [(study, "CT", 3)]
    assert json.loads(invoke("ls", "series", "--study", study, "--peer", address, "--json").output) == series
    table = invoke("ls", "studies")
    assert study in table.output  # whole UIDs in a table too
    assert invoke("ls", "--patient", "P2", "--csv").output.splitlines()[1].startswith("P2,ROE^RICH")


def test_stats_counts_and_sizes(stored):
    _, ct, mr = stored
    rows = json.loads(invoke("stats", "--json").output)
    assert [(r["modality"], r["patients"], r["studies"], r["series"], r["instances"]) for r in rows] == [
        ("CT", 1, 1, 1, 3), ("MR", 1, 1, 1, 2)]
    kept = list((Path("pacs-data") / "files").rglob("*.dcm"))
    assert len(kept) == 5
    assert rows[0]["bytes"] + rows[1]["bytes"] == sum(p.stat().st_size for p in kept)  # the files as kept
    assert rows[0]["bytes"] > sum(p.stat().st_size for p in ct) * 0.9 and rows[1]["bytes"] < rows[0]["bytes"]
    per_patient = json.loads(invoke("stats", "--by", "patient", "--json").output)
    assert [(r["patient_id"], r["instances"]) for r in per_patient] == [("P1", 3), ("P2", 2)]
    per_study = invoke("stats", "--by", "study", "--csv").output.splitlines()
    assert per_study[0] == "study_instance_uid,study_date,patient_id,modalities,series,instances,bytes"
    assert len(per_study) == 3
    table = invoke("stats")
    assert "2 patients, 2 studies, 2 series, 5 instances" in table.output


def test_browse_commands_say_when_the_data_folder_does_not_exist(in_tmp):  # noqa: F811
    for args in (["ls"], ["stats"], ["dump", "1.2.3"]):
        result = invoke(*args, "--data-dir", in_tmp / "typo")
        assert result.exit_code == 2 and "does not exist" in result.output, (args, result.output)
        assert not (in_tmp / "typo").exists()
