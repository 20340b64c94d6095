"""De-identification (pacskit.dicom.anonymize) checked attribute by attribute against PS3.15 Table
E.1-1, on a multi-modality sample of pydicom's test files (CT with private tags, MR, US multi-frame
JPEG, Comprehensive SR, RT Structure Set), and by dciodvfy (dicom3tools): no error the original did
not have. Then the options, the deterministic UID mapping, and burned-in annotation."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from pacskit.dicom.anonymize import Anonymizer, BurnedInAnnotation, Options
from pacskit.dicom.deid_raw import NotHandled
from pacskit.dicom.deid_table import E1_1

SAMPLE = ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "examples_ybr_color.dcm", "test-SR.dcm",
          "rtstruct.dcm"]
BASIC = {int(tag, 16): action for tag, action, _opts, _name in E1_1 if re.fullmatch(r"[0-9A-F]{8}", tag)}
#: what the standard allows for each Basic Profile action (E.3: Z may be a dummy value too; the
#: compound actions depend on the attribute's type in the IOD)
ALLOWED = {"X": {"X"}, "Z": {"Z", "D"}, "D": {"D"}, "U": {"U"}, "X/Z": {"X", "Z", "D"}, "X/D": {"X", "D"},
           "Z/D": {"Z", "D"}, "X/Z/D": {"X", "Z", "D"}, "X/Z/U*": {"X", "Z", "U"}}


def _observed(orig: Any, new: Any, anonymizer: Anonymizer) -> set[str]:
    """Which actions the output element is consistent with (given the original)."""
    if new is None:
        return {"X"}
    if orig.VR == "SQ":
        return {"Z"} if len(new.value) == 0 else {"D", "U"}  # items kept: their content is checked in turn
    if new.is_empty:
        return {"Z"}
    if orig.VR == "UI":
        values = orig.value if orig.VM > 1 else [orig.value]
        mapped = [anonymizer.uid(str(v)) for v in values]
        return {"U"} if list(new.value if new.VM > 1 else [new.value]) == mapped else set()
    return {"D"} if new.value != orig.value or new.value in ("ANONYMIZED", "0", 0) else set()


def _check(orig: Dataset, new: Dataset, anonymizer: Anonymizer, path: str, problems: list[str],
           top: bool = False) -> None:
    for elem in orig:
        tag = int(elem.tag)
        where = f"{path}/{elem.keyword or elem.tag}"
        out = new.get(elem.tag)
        if elem.tag.is_private or elem.tag.group & 0xFF00 in (0x5000, 0x6000):
            if out is not None:
                problems.append(f"{where}: private / curve / overlay attribute kept")
            continue
        if top and tag in (0x00100010, 0x00100020):  # pseudonyms (a dummy value: D, allowed for Z)
            if out is None or str(out.value) != anonymizer.pseudonym(str(orig.get("PatientID", ""))):
                problems.append(f"{where}: not the pseudonym")
            continue
        action = BASIC.get(tag)
        if action is None or action == "K":
            if out is None:
                problems.append(f"{where}: not in E.1-1 but removed")
            elif elem.VR == "SQ":
                if len(out.value) != len(elem.value):
                    problems.append(f"{where}: items lost")
                for n, (a, b) in enumerate(zip(elem.value, out.value, strict=False)):
                    _check(a, b, anonymizer, f"{where}[{n}]", problems)
            elif out.value != elem.value and tag != 0x00080018:
                problems.append(f"{where}: not in E.1-1 but changed")
            continue
        observed = _observed(elem, out, anonymizer)
        if not observed & ALLOWED[action]:
            problems.append(f"{where}: E.1-1 says {action}, output is {observed or 'unchanged'}")
        if out is not None and elem.VR == "SQ" and len(out.value):
            for n, (a, b) in enumerate(zip(elem.value, out.value, strict=False)):
                _check(a, b, anonymizer, f"{where}[{n}]", problems)


def _dciodvfy_errors(path: Path | str) -> set[str]:
    out = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=120)
    return {re.sub(r"<[0-9.]+>", "<uid>", line) for line in (out.stdout + out.stderr).splitlines()
            if line.startswith("Error")}


@pytest.mark.parametrize("path", ["bytes", "dataset"])
@pytest.mark.parametrize("name", SAMPLE)
def test_basic_profile_attribute_by_attribute_and_dciodvfy(tmp_path: Path, name: str, path: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Both paths of anonymize_file: the byte-level rewrite (every Part 10 little-endian file here;
    rtstruct.dcm has no file meta and always takes the other) and the pydicom dataset path."""
    src = get_testdata_file(name)
    anonymizer = Anonymizer("project secret")
    if path == "dataset":
        def not_handled(self: Anonymizer, src: Any) -> Any:
            raise NotHandled("test: the dataset path")

        monkeypatch.setattr(Anonymizer, "_rewrite_file", not_handled)
    elif name != "rtstruct.dcm":
        anonymizer._rewrite_file(src)  # raises NotHandled if the byte path would not take it
    dst = tmp_path / name
    result = anonymizer.anonymize_file(src, dst)
    orig = pydicom.dcmread(src, force=True)
    new = pydicom.dcmread(dst)
    problems: list[str] = []
    _check(orig, new, anonymizer, "", problems, top=True)
    assert not problems, "\n".join(problems)
    assert new.SOPInstanceUID == anonymizer.uid(orig.SOPInstanceUID) == result.sop_instance_uid
    assert new.file_meta.MediaStorageSOPInstanceUID == new.SOPInstanceUID
    assert new.PatientIdentityRemoved == "YES" and new.LongitudinalTemporalInformationModified == "REMOVED"
    assert new.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    if "PixelData" in orig:
        assert new.PixelData == orig.PixelData  # untouched, whatever the transfer syntax
    if shutil.which("dciodvfy"):
        added = _dciodvfy_errors(dst) - _dciodvfy_errors(src)
        assert not added, "\n".join(sorted(added))


def test_private_tags_of_the_ct_are_gone_at_every_level(tmp_path: Path) -> None:
    src = get_testdata_file("CT_small.dcm")
    assert any(e.tag.is_private for e in pydicom.dcmread(src).iterall())
    Anonymizer("k").anonymize_file(src, tmp_path / "ct.dcm")
    assert not any(e.tag.is_private for e in pydicom.dcmread(tmp_path / "ct.dcm").iterall())


def test_uids_are_deterministic_per_key_and_references_stay_consistent(tmp_path: Path) -> None:
    src = get_testdata_file("test-SR.dcm")
    one, two, other = Anonymizer("k1"), Anonymizer("k1"), Anonymizer("k2")
    one.anonymize_file(src, tmp_path / "a.dcm")
    two.anonymize_file(src, tmp_path / "b.dcm")
    other.anonymize_file(src, tmp_path / "c.dcm")
    a, b, c = (pydicom.dcmread(tmp_path / f) for f in ("a.dcm", "b.dcm", "c.dcm"))
    assert (a.StudyInstanceUID, a.SeriesInstanceUID, a.SOPInstanceUID) == \
           (b.StudyInstanceUID, b.SeriesInstanceUID, b.SOPInstanceUID)
    assert a.StudyInstanceUID != c.StudyInstanceUID
    replaced = {e.value for e in pydicom.dcmread(src).iterall() if BASIC.get(int(e.tag)) == "U"}
    assert len(replaced) >= 5 and not replaced & {e.value for e in a.iterall() if e.VR == "UI"}
    assert re.fullmatch(r"2\.25\.\d{1,39}", a.SOPInstanceUID) and len(a.SOPInstanceUID) <= 64
    assert a.PatientID == b.PatientID != c.PatientID


def test_options_keep_what_they_say(tmp_path: Path) -> None:
    src = get_testdata_file("CT_small.dcm")
    orig = pydicom.dcmread(src)
    modified = Anonymizer("k", Options(retain_modified_dates=True, retain_uids=True,
                                       retain_device_identity=True, retain_patient_characteristics=True))
    modified.anonymize_file(src, tmp_path / "m.dcm")
    m = pydicom.dcmread(tmp_path / "m.dcm")
    assert m.SOPInstanceUID == orig.SOPInstanceUID and m.StudyInstanceUID == orig.StudyInstanceUID
    assert m.PatientSex == orig.PatientSex and m.PatientAge == orig.PatientAge
    assert m.StationName == orig.StationName  # device identity kept
    assert m.InstitutionName != orig.InstitutionName  # institution identity not asked for
    shift = modified.date_offset(str(orig.PatientID)).days
    import datetime as dt

    def day(v: str) -> dt.date:
        return dt.datetime.strptime(v, "%Y%m%d").date()

    assert (day(orig.AcquisitionDate) - day(m.AcquisitionDate)).days == shift
    assert (day(orig.ContentDate) - day(m.ContentDate)).days == shift  # the same offset: intervals kept
    assert m.LongitudinalTemporalInformationModified == "MODIFIED"
    assert {i.CodeValue for i in m.DeidentificationMethodCodeSequence} == {"113100", "113110", "113109",
                                                                          "113108", "113107"}
    full = Anonymizer("k", Options(retain_full_dates=True))
    full.anonymize_file(src, tmp_path / "f.dcm")
    f = pydicom.dcmread(tmp_path / "f.dcm")
    assert f.AcquisitionDate == orig.AcquisitionDate and f.LongitudinalTemporalInformationModified == "UNMODIFIED"


def test_burned_in_annotation_is_refused_unless_allowed(tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm"))
    ds.BurnedInAnnotation = "YES"
    ds.save_as(tmp_path / "burned.dcm")
    with pytest.raises(BurnedInAnnotation, match="burned-in"):
        Anonymizer("k").anonymize_file(tmp_path / "burned.dcm", tmp_path / "out.dcm")
    assert not (tmp_path / "out.dcm").exists()
    result = Anonymizer("k", Options(allow_burned_in=True)).anonymize_file(tmp_path / "burned.dcm", tmp_path / "out.dcm")
    assert result.burned_in == "YES"


def test_cli_exports_a_study_from_the_archive_with_the_project_key(tmp_path: Path) -> None:
    import sys

    from pacskit.config.settings import load_settings
    from pacskit.server.server import open_store

    folder = tmp_path / "pacs"
    folder.mkdir()
    store = open_store(load_settings(folder))
    uids = []
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(get_testdata_file(name), tmp_path / name)
        uids.append(store.ingest(tmp_path / name, source_ae="MOD").sop_instance_uid)
    study = store.get_instance(uids[0]).series.study.study_instance_uid
    store.close()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pacskit", "anonymize", *args, "--data-dir", str(folder)],
                              capture_output=True, text=True, timeout=120)

    first = run("study", study, "--out", str(tmp_path / "one"), "--project", "trial-7")
    assert first.returncode == 0, first.stderr
    assert "wrote 1 de-identified instances" in first.stdout
    key = (folder / "anonymize" / "trial-7.key")
    assert key.stat().st_mode & 0o777 == 0o600
    [out] = list((tmp_path / "one").iterdir())
    ds = pydicom.dcmread(out)
    assert ds.SOPInstanceUID == Anonymizer(key.read_bytes().strip()).uid(uids[0]) and out.name == f"{ds.SOPInstanceUID}.dcm"
    assert run("study", study, "--out", str(tmp_path / "two"), "--project", "trial-7").returncode == 0
    assert [p.name for p in (tmp_path / "two").iterdir()] == [out.name]  # same project: same UIDs
    assert run("study", study, "--out", str(tmp_path / "three"), "--project", "trial-8").returncode == 0
    assert [p.name for p in (tmp_path / "three").iterdir()] != [out.name]
    missing = run("study", "9.9.9", "--out", str(tmp_path / "four"))
    assert missing.returncode == 1 and "not found: 9.9.9" in missing.stderr
    files = run("files", str(tmp_path / "one"), "--out", str(tmp_path / "five"), "--retain-uids")
    assert files.returncode == 0 and (tmp_path / "five" / out.name).exists()
